//! What goes out on the wire: Server-Sent Events framing (`sse`) and the ChatGPT-shaped
//! message, as a live frame and as a stored message (`chatgpt`). Each shape is written here
//! and nowhere else.

pub mod chatgpt;
pub mod sse;
