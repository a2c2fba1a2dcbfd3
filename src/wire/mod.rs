//! What goes out on the wire: Server-Sent Events framing (`sse`) and the ChatGPT-shaped
//! message, as a live frame and as a stored message (`chatgpt`), and OpenAI's Chat
//! Completions objects for `/v1` (`openai`). Each shape is written here and nowhere else.

pub mod chatgpt;
pub mod openai;
pub mod sse;
