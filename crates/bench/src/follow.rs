//! A second client for the scenarios that follow a generation rather than ask for one:
//! one request on a fresh connection (`POST /conv` with `"background": true`, `GET
//! /conv/{id}/stream`), read event by event, each event with its `id:` and its arrival.
//! The connection closes when the [`Response`] is dropped: that is how a reader leaves.

use crate::clock;
use crate::mock::find;
use std::io;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One server-sent event with data (`retry:`-only events and comments are skipped).
#[derive(Debug, Clone)]
pub struct Event {
    pub id: Option<u64>,
    pub data: String,
    /// When the HTTP chunk that completed it had arrived.
    pub arrived_ns: u64,
}

pub struct Response {
    pub status: u16,
    socket: TcpStream,
    buf: Vec<u8>,
    chunked: bool,
    /// Bytes of the body decoded from HTTP chunks, not yet split into lines.
    body: Vec<u8>,
    /// The event being assembled: (id, data, has data).
    id: Option<u64>,
    data: String,
    has_data: bool,
    ended: bool,
    /// When the last HTTP chunk was complete.
    read_ns: u64,
}

/// Connects, sends one request and reads the response head. `headers` are extra lines,
/// each `name: value`.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[String],
    body: &str,
) -> io::Result<Response> {
    let mut socket = TcpStream::connect(addr).await?;
    socket.set_nodelay(true)?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\naccept: text/event-stream\r\n{}\r\n",
        crate::client::AUTHORIZATION
    );
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    if !body.is_empty() {
        head.push_str(&format!(
            "content-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    head.push_str(body);
    socket.write_all(head.as_bytes()).await?;
    let mut response = Response {
        status: 0,
        socket,
        buf: Vec::with_capacity(8192),
        chunked: false,
        body: Vec::new(),
        id: None,
        data: String::new(),
        has_data: false,
        ended: false,
        read_ns: 0,
    };
    let head_end = loop {
        if let Some(i) = find(&response.buf, b"\r\n\r\n") {
            break i + 4;
        }
        response.read().await?;
    };
    let head = String::from_utf8_lossy(&response.buf[..head_end]).to_ascii_lowercase();
    response.status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    response.chunked = head.contains("transfer-encoding: chunked");
    response.buf.drain(..head_end);
    if !response.chunked {
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while response.buf.len() < length {
            response.read().await?;
        }
        response.body = response.buf.drain(..length).collect();
        response.ended = true;
    }
    Ok(response)
}

impl Response {
    /// A whole, non-streamed body (a JSON answer).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The next event with data; `None` at the end of the body.
    pub async fn next(&mut self) -> io::Result<Option<Event>> {
        loop {
            if let Some(event) = self.take_event() {
                return Ok(Some(event));
            }
            if self.ended {
                return Ok(None);
            }
            self.next_chunk().await?;
        }
    }

    /// Splits complete lines off the decoded body; returns an event once one is complete.
    fn take_event(&mut self) -> Option<Event> {
        while let Some(end) = self.body.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.body.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line[..end]);
            if line.is_empty() {
                if self.has_data {
                    self.has_data = false;
                    return Some(Event {
                        id: self.id.take(),
                        data: std::mem::take(&mut self.data),
                        arrived_ns: self.read_ns,
                    });
                }
                self.id = None;
                continue;
            }
            if let Some(v) = line.strip_prefix("id: ") {
                self.id = v.trim().parse().ok();
            } else if let Some(v) = line.strip_prefix("data: ") {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(v);
                self.has_data = true;
            }
            // `retry:`, `event:` and comments: nothing a measurement needs
        }
        None
    }

    /// Reads one HTTP chunk into `body`.
    async fn next_chunk(&mut self) -> io::Result<()> {
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
        self.read_ns = clock::now_ns();
        if size == 0 {
            self.ended = true;
        }
        self.body
            .extend_from_slice(&self.buf[line_end + 2..line_end + 2 + size]);
        self.buf.drain(..line_end + 2 + size + 2);
        Ok(())
    }

    async fn read(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.socket.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// A string field of a JSON object.
pub fn json_field(json: &str, name: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(json).ok()?;
    value.get(name)?.as_str().map(str::to_owned)
}
