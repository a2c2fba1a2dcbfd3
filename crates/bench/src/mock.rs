//! The benchmark's own upstream: a minimal HTTP/1.1 server on raw sockets that answers any
//! POST with OpenAI's streaming format as fast as the loopback allows. Each content chunk
//! carries its sequence number and the moment it was written (`[seq:nanos]`, padded to the
//! chunk size), so a client can measure every chunk's latency, direct or through a gateway.

use crate::clock;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What every answer looks like; a scenario sets it before it starts.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub chunks: usize,
    /// Bytes of content per chunk (at least the marker's length).
    pub chunk_size: usize,
    pub delay: Duration,
    pub first_delay: Duration,
    /// Send this many chunks, then hold the stream open until [`Mock::release`]; answers
    /// that start after it do not hold.
    pub hold_after: Option<usize>,
}

impl Default for Shape {
    fn default() -> Self {
        Self {
            chunks: 8,
            chunk_size: 24,
            delay: Duration::ZERO,
            first_delay: Duration::ZERO,
            hold_after: None,
        }
    }
}

pub struct Mock {
    pub port: u16,
    shape: Arc<Mutex<Shape>>,
    /// Counts the releases: an answer holds until it changes.
    release: Arc<watch::Sender<u64>>,
    /// Content chunks written so far, over all answers.
    written: Arc<AtomicUsize>,
    /// Counts the calls of [`Mock::close_idle`].
    close: Arc<watch::Sender<u64>>,
}

impl Mock {
    pub async fn start(port: u16) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let port = listener.local_addr()?.port();
        let shape = Arc::new(Mutex::new(Shape::default()));
        let release = Arc::new(watch::Sender::new(0));
        let written = Arc::new(AtomicUsize::new(0));
        let close = Arc::new(watch::Sender::new(0));
        let (s, r, w, c) = (
            Arc::clone(&shape),
            Arc::clone(&release),
            Arc::clone(&written),
            Arc::clone(&close),
        );
        tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    // out of file descriptors, say: try again soon rather than spin
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    continue;
                };
                let _ = socket.set_nodelay(true);
                let connection = Connection {
                    shape: Arc::clone(&s),
                    release: Arc::clone(&r),
                    written: Arc::clone(&w),
                    close: Arc::clone(&c),
                };
                tokio::spawn(serve(socket, connection));
            }
        });
        Ok(Self {
            port,
            shape,
            release,
            written,
            close,
        })
    }

    /// Closes every connection that waits for its next request now. A gateway keeps its
    /// upstream connections open for reuse; after thousands of streams through one gateway
    /// they would hold as many sockets of this process while the next gateway is measured.
    pub fn close_idle(&self) {
        self.close.send_modify(|n| *n += 1);
    }

    /// Content chunks written so far, over all answers.
    pub fn written(&self) -> usize {
        self.written.load(Ordering::Relaxed)
    }

    pub fn set(&self, shape: Shape) {
        *self.shape.lock().unwrap_or_else(|p| p.into_inner()) = shape;
    }

    /// Lets every held stream finish.
    pub fn release(&self) {
        // Unset first: an answer reads the count before the shape, so it either holds
        // and sees the count change, or does not hold at all.
        self.shape.lock().unwrap_or_else(|p| p.into_inner()).hold_after = None;
        self.release.send_modify(|n| *n += 1);
    }
}

/// What every connection shares with the mock.
struct Connection {
    shape: Arc<Mutex<Shape>>,
    release: Arc<watch::Sender<u64>>,
    written: Arc<AtomicUsize>,
    close: Arc<watch::Sender<u64>>,
}

async fn serve(mut socket: TcpStream, connection: Connection) {
    let Connection {
        shape,
        release,
        written,
        close,
    } = connection;
    let mut buf = Vec::with_capacity(4096);
    loop {
        // between requests: a call of `close_idle` from now on closes the connection
        let mut closing = close.subscribe();
        // one request: the head, then Content-Length bytes of body
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            let read = if buf.is_empty() {
                tokio::select! {
                    n = read_more(&mut socket, &mut buf) => n,
                    _ = closing.changed() => 0,
                }
            } else {
                read_more(&mut socket, &mut buf).await
            };
            if read == 0 {
                return;
            }
        };
        let length = content_length(&buf[..head_end]);
        while buf.len() < head_end + length {
            if read_more(&mut socket, &mut buf).await == 0 {
                return;
            }
        }
        buf.drain(..head_end + length);
        let released = release.subscribe();
        let shape = *shape.lock().unwrap_or_else(|p| p.into_inner());
        if answer(&mut socket, shape, released, &written).await.is_err() {
            return;
        }
    }
}

async fn read_more(socket: &mut TcpStream, buf: &mut Vec<u8>) -> usize {
    let mut chunk = [0u8; 8192];
    match socket.read(&mut chunk).await {
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            n
        }
        Err(_) => 0,
    }
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn content_length(head: &[u8]) -> usize {
    let head = String::from_utf8_lossy(head).to_ascii_lowercase();
    head.lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
const ROLE: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":0,"model":"bench","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#;
const FINISH: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":0,"model":"bench","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#;

async fn answer(
    socket: &mut TcpStream,
    shape: Shape,
    mut released: watch::Receiver<u64>,
    written: &AtomicUsize,
) -> std::io::Result<()> {
    socket.write_all(HEAD).await?;
    send_event(socket, ROLE).await?;
    if !shape.first_delay.is_zero() {
        tokio::time::sleep(shape.first_delay).await;
    }
    for seq in 0..shape.chunks {
        if seq > 0 && !shape.delay.is_zero() {
            tokio::time::sleep(shape.delay).await;
        }
        if shape.hold_after == Some(seq) {
            // resolves at once if a release came after this answer read its shape
            let _ = released.changed().await;
        }
        let content = marker(seq, clock::now_ns(), shape.chunk_size);
        let event = format!(
            r#"{{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":0,"model":"bench","choices":[{{"index":0,"delta":{{"content":"{content}"}},"finish_reason":null}}]}}"#
        );
        send_event(socket, &event).await?;
        written.fetch_add(1, Ordering::Relaxed);
    }
    send_event(socket, FINISH).await?;
    send_event(socket, "[DONE]").await?;
    socket.write_all(b"0\r\n\r\n").await
}

async fn send_event(socket: &mut TcpStream, data: &str) -> std::io::Result<()> {
    let event_len = data.len() + 8; // "data: " + "\n\n"
    let frame = format!("{event_len:x}\r\ndata: {data}\n\n\r\n");
    socket.write_all(frame.as_bytes()).await
}

/// `[seq:nanos]` padded with dots to `size` bytes.
pub fn marker(seq: usize, ns: u64, size: usize) -> String {
    let mut text = format!("[{seq}:{ns}]");
    while text.len() < size {
        text.push('.');
    }
    text
}

/// The last marker in `text`: (seq, nanos).
pub fn last_marker(text: &[u8]) -> Option<(usize, u64)> {
    let open = text.iter().rposition(|&b| b == b'[')?;
    let rest = &text[open + 1..];
    let close = rest.iter().position(|&b| b == b']')?;
    let inner = std::str::from_utf8(&rest[..close]).ok()?;
    let (seq, ns) = inner.split_once(':')?;
    Some((seq.parse().ok()?, ns.parse().ok()?))
}
