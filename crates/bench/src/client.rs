//! The load client: HTTP/1.1 over raw sockets with keep-alive, reading a streamed answer
//! chunk by chunk and stamping each chunk's arrival.

use crate::clock;
use crate::mock::{find, last_marker};
use chatgate::upstream::sse_decode::{SseDecoder, SseEvent};
use std::io;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sent with every request: the client key of a chatgate started with `keys` (see
/// `gateway`); a gateway without keys, the mock and the pump ignore it.
pub const AUTHORIZATION: &str = "authorization: Bearer bench-client-key";

/// How the target speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// chatgate's `POST /conv` with ChatGPT-shaped frames (whole text, or deltas).
    Conv { delta: bool },
    /// An OpenAI-compatible `POST …/chat/completions` (the mock itself, or a peer gateway).
    OpenAi,
}

#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub addr: SocketAddr,
    pub path: String,
    pub protocol: Protocol,
    pub model: String,
    /// Where readers follow and resume its answers (`GET /conv/{id}/stream`), when not at
    /// `addr`: another replica on the same bus.
    pub follow_at: Option<SocketAddr>,
}

/// What one streamed answer looked like from the client.
#[derive(Debug, Default, Clone)]
pub struct Answer {
    pub status: u16,
    pub start_ns: u64,
    /// (sequence number, written by the mock at, arrived at) for each new chunk.
    pub chunks: Vec<(usize, u64, u64)>,
    /// Data frames received (without `[DONE]` and `close`).
    pub frames: usize,
    /// Response body bytes.
    pub bytes: usize,
    /// Every chunk came as its own frame, in order, none twice.
    pub faithful: bool,
    /// Some frames carried several new chunks (the gateway coalesced them for a client
    /// that fell behind): text arrived in order, with no chunk of its own for some.
    pub coalesced: bool,
}

impl Answer {
    pub fn ttft_ns(&self) -> Option<u64> {
        self.chunks.first().map(|c| c.2 - self.start_ns)
    }
}

/// A keep-alive connection to one target.
pub struct Conn {
    target: Target,
    socket: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Conn {
    pub fn new(target: &Target) -> Self {
        Self {
            target: target.clone(),
            socket: None,
            buf: Vec::with_capacity(16 * 1024),
        }
    }

    async fn socket(&mut self) -> io::Result<&mut TcpStream> {
        if self.socket.is_none() {
            let socket = TcpStream::connect(self.target.addr).await?;
            socket.set_nodelay(true)?;
            self.socket = Some(socket);
            self.buf.clear();
        }
        Ok(self.socket.as_mut().expect("just connected"))
    }

    /// Sends one turn and reads its whole streamed answer.
    pub async fn ask(&mut self) -> io::Result<Answer> {
        let reused = self.socket.is_some();
        let mut result = self.exchange().await;
        // A kept-alive connection the server has closed meanwhile: reconnect once.
        if reused && matches!(&result, Err(e) if is_closed(e)) {
            self.socket = None;
            result = self.exchange().await;
        }
        if result.is_err() {
            self.socket = None;
        }
        result
    }

    async fn exchange(&mut self) -> io::Result<Answer> {
        let body = match self.target.protocol {
            Protocol::Conv { delta } => format!(
                r#"{{"content":"bench","model":"{}","delta":{delta}}}"#,
                self.target.model
            ),
            Protocol::OpenAi => format!(
                r#"{{"model":"{}","messages":[{{"role":"user","content":"bench"}}],"stream":true}}"#,
                self.target.model
            ),
        };
        let request = format!(
            "POST {} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\naccept: text/event-stream\r\n{AUTHORIZATION}\r\ncontent-length: {}\r\n\r\n{body}",
            self.target.path,
            body.len()
        );
        let mut answer = Answer {
            start_ns: clock::now_ns(),
            faithful: true,
            ..Answer::default()
        };
        self.socket().await?.write_all(request.as_bytes()).await?;

        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            self.read().await?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_ascii_lowercase();
        answer.status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        let chunked = head.contains("transfer-encoding: chunked");
        let keep_alive = !head.contains("connection: close");
        self.buf.drain(..head_end);
        if !chunked {
            // an error body: read what is there and drop the connection
            self.socket = None;
            return Ok(answer);
        }

        let mut decoder = SseDecoder::new();
        let mut events = Vec::new();
        let mut last_seq = None;
        loop {
            // one HTTP chunk: "<hex size>\r\n<bytes>\r\n"
            let line_end = loop {
                if let Some(i) = find(&self.buf, b"\r\n") {
                    break i;
                }
                self.read().await?;
            };
            let size = usize::from_str_radix(std::str::from_utf8(&self.buf[..line_end]).unwrap_or("0").trim(), 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            while self.buf.len() < line_end + 2 + size + 2 {
                self.read().await?;
            }
            let arrived = clock::now_ns();
            if size == 0 {
                self.buf.drain(..line_end + 4);
                break;
            }
            answer.bytes += size;
            decoder.feed(&self.buf[line_end + 2..line_end + 2 + size], &mut events);
            self.buf.drain(..line_end + 2 + size + 2);
            for event in events.drain(..) {
                self.take(&event, arrived, &mut answer, &mut last_seq);
            }
        }
        if !keep_alive {
            self.socket = None;
        }
        Ok(answer)
    }

    fn take(&self, event: &SseEvent, arrived: u64, answer: &mut Answer, last_seq: &mut Option<usize>) {
        if event.data == "[DONE]" || event.event.as_deref() == Some("close") {
            return;
        }
        let data = event.data.as_bytes();
        let content = match self.target.protocol {
            Protocol::OpenAi => data,
            // the text ends where the frame's status begins
            Protocol::Conv { .. } => match find(data, br#""]},"status":""#) {
                Some(end) => &data[..end],
                None => return,
            },
        };
        let Some((seq, sent)) = last_marker(content) else {
            return;
        };
        answer.frames += 1;
        let last = find(data, br#""status":"in_progress""#).is_none() && self.target.protocol != Protocol::OpenAi;
        if Some(seq) == *last_seq {
            // the last frame repeats the whole answer; anything else repeating is a fault
            if !last {
                answer.faithful = false;
            }
            return;
        }
        match *last_seq {
            Some(prev) if seq > prev + 1 => answer.coalesced = true,
            None if seq > 0 => answer.coalesced = true,
            Some(prev) if seq <= prev => answer.faithful = false,
            _ => {}
        }
        *last_seq = Some(seq);
        answer.chunks.push((seq, sent, arrived));
    }

    async fn read(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        let socket = self.socket.as_mut().ok_or_else(|| io::Error::other("not connected"))?;
        let n = socket.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

fn is_closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
    )
}
