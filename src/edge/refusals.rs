//! What actix answers by itself, before any of the app sees a request: `400` for a request
//! line or header that is not HTTP/1.1 (an HTTP/1.1 request without `Host` among them),
//! `431` for a head over its limits, `408` for a head that did not come in time. actix
//! writes these with an empty body and none of the security headers, and offers no hook to
//! change them; so every connection is written through a [`Connection`], which recognises
//! such an answer as actix hands it to the socket and writes the JSON error body with the
//! security headers in its place. Each is counted with the requests, as route `unmatched`
//! and method `other` (no request was read).
//!
//! An answer of the app's never matches: every one carries the security headers
//! ([`super::finish`]), and each of its errors a body. One that follows the end of an
//! earlier answer in the same write (a client that pipelines a malformed request after a
//! good one) is left as actix wrote it.

use super::SECURITY_HEADERS;
use crate::error::{ApiError, RequestError};
use actix_web::http::StatusCode;
use bytes::{Buf, Bytes};
use prometheus::IntCounterVec;
use serde_json::json;
use socket2::SockRef;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The three answers, made once: all but each one's status line and `Date`.
pub struct Refusals {
    malformed: Bytes,
    too_large: Bytes,
    late: Bytes,
    /// The requests' count (see [`super::requests`]).
    requests: IntCounterVec,
}

impl Refusals {
    /// `request_timeout` is how long a head may take (actix's `client_request_timeout`).
    pub fn new(request_timeout: Duration, requests: IntCounterVec) -> Self {
        let refused = |status, message: &str| {
            rest(ApiError::Http {
                status,
                message: message.to_owned(),
            })
        };
        Self {
            malformed: refused(
                StatusCode::BAD_REQUEST,
                "the request is not valid HTTP/1.1: its request line or a header is malformed, \
                 or it has no Host header",
            ),
            too_large: refused(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "the request's head is too large: at most 128 KiB and 96 header fields",
            ),
            // The same error as a body that comes too late (`routes::conv`).
            late: rest(RequestError::Timeout(request_timeout).into()),
            requests,
        }
    }

    /// What to write instead of `written`, if it is one of actix's own answers.
    fn in_place_of(&self, written: &[u8]) -> Option<Bytes> {
        // Most writes are an answer's body (a chunk's size comes first) or an answer's head
        // with another status: two comparisons tell them apart.
        let (status, rest) = match written.strip_prefix(b"HTTP/1.")?.get(2..5)? {
            b"400" => ("400", &self.malformed),
            b"408" => ("408", &self.late),
            b"431" => ("431", &self.too_large),
            _ => return None,
        };
        self.replacing(written, status, rest)
    }

    #[cold]
    fn replacing(&self, written: &[u8], status: &str, rest: &[u8]) -> Option<Bytes> {
        // A whole head with nothing after it: these answers have no body.
        let end = memchr::memmem::find(written, b"\r\n\r\n")? + 4;
        if end != written.len() {
            return None;
        }
        let head = std::str::from_utf8(&written[..end]).ok()?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next()?;
        let mut date = None;
        for line in lines {
            let name = line.split_once(':').map_or(line, |(name, _)| name).trim();
            if name.eq_ignore_ascii_case("x-content-type-options") {
                // One of the app's answers.
                return None;
            }
            if name.eq_ignore_ascii_case("date") {
                date = Some(line);
            }
        }
        self.requests.with_label_values(&["unmatched", "other", status]).inc();
        let mut answer = Vec::with_capacity(status_line.len() + 40 + rest.len());
        answer.extend_from_slice(status_line.as_bytes());
        answer.extend_from_slice(b"\r\n");
        if let Some(date) = date {
            answer.extend_from_slice(date.as_bytes());
            answer.extend_from_slice(b"\r\n");
        }
        answer.extend_from_slice(rest);
        Some(answer.into())
    }
}

/// `error`'s answer: its headers after its status line and date, the blank line and its
/// body.
fn rest(error: ApiError) -> Bytes {
    let body = error.openai_body().body_with(json!({})).to_string();
    let mut rest = format!(
        "content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for (name, value) in SECURITY_HEADERS {
        rest.push_str(&format!("{name}: {value}\r\n"));
    }
    rest.push_str("\r\n");
    rest.push_str(&body);
    rest.into()
}

/// A client's connection as actix reads and writes it: reads pass straight through;
/// writes too, but for actix's own answers (see the module).
pub struct Connection {
    socket: TcpStream,
    refusals: Arc<Refusals>,
    /// What is left to write of an answer written in place of actix's: it goes before
    /// anything else.
    left: Bytes,
    /// Whether actix refused the request: it then drops the connection, often with part
    /// of the request unread (see the `Drop`).
    refused: bool,
}

impl Connection {
    pub fn new(socket: TcpStream, refusals: Arc<Refusals>) -> Self {
        Self {
            socket,
            refusals,
            left: Bytes::new(),
            refused: false,
        }
    }

    /// Writes what is left of the answer in actix's place; ready once all of it is written.
    fn poll_left(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.left.is_empty() {
            let n = ready!(Pin::new(&mut self.socket).poll_write(cx, &self.left))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.left.advance(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Connection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.left.is_empty() {
            if let Some(answer) = this.refusals.in_place_of(buf) {
                // actix's answer is taken whole, as if written; this one goes out as the
                // socket takes it, here and on the flush and shutdown that follow.
                this.left = answer;
                this.refused = true;
                if let Poll::Ready(Err(error)) = this.poll_left(cx) {
                    return Poll::Ready(Err(error));
                }
                return Poll::Ready(Ok(buf.len()));
            }
        } else {
            ready!(this.poll_left(cx))?;
        }
        Pin::new(&mut this.socket).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_left(cx))?;
        Pin::new(&mut this.socket).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_left(cx))?;
        Pin::new(&mut this.socket).poll_shutdown(cx)
    }
}

/// Most of a refused request read away before its connection closes.
const UNREAD_LIMIT: usize = 1 << 20;

impl Drop for Connection {
    /// actix drops a connection it refused a request on as soon as its answer is handed
    /// over, with the rest of the request (a head over the limit, a body) unread. Closing a
    /// socket with unread bytes resets the connection, and a reset can overtake the answer
    /// on its way: the client would see "connection reset" instead of the error. So what
    /// has arrived is read away first (up to [`UNREAD_LIMIT`]), and what is left of the
    /// answer written if the socket takes it now; neither waits.
    fn drop(&mut self) {
        if !self.refused {
            return;
        }
        // Straight to the socket (non-blocking, as tokio set it), not through tokio's
        // readiness, which may not have seen the last bytes arrive.
        let socket = SockRef::from(&self.socket);
        while !self.left.is_empty() {
            match (&*socket).write(&self.left) {
                Ok(n @ 1..) => self.left.advance(n),
                _ => break,
            }
        }
        let mut sink = [0; 16 * 1024];
        let mut unread = UNREAD_LIMIT;
        while unread > 0 {
            match (&*socket).read(&mut sink) {
                Ok(n @ 1..) => unread = unread.saturating_sub(n),
                _ => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusals() -> Refusals {
        let requests = IntCounterVec::new(prometheus::Opts::new("r", "r"), &["route", "method", "status"]).unwrap();
        Refusals::new(Duration::from_secs(10), requests)
    }

    #[test]
    fn actix_own_answers_become_json_with_the_security_headers() {
        let refusals = refusals();
        let actix = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\ndate: Fri, 04 Dec 2026 23:00:00 GMT\r\n\r\n";
        let answer = refusals.in_place_of(actix).expect("replaced");
        let answer = std::str::from_utf8(&answer).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\ndate: Fri, 04 Dec 2026 23:00:00 GMT\r\n"), "{head}");
        assert!(head.lines().any(|l| l == "x-content-type-options: nosniff"), "{head}");
        assert!(
            head.contains(&format!("\r\ncontent-length: {}\r\n", body.len())),
            "{head}"
        );
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"]["code"], "headers_too_large");
        let late = refusals
            .in_place_of(b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n\r\n")
            .expect("replaced");
        assert!(std::str::from_utf8(&late).unwrap().contains("within 10 s"));
    }

    #[test]
    fn the_apps_answers_and_bodies_pass_unchanged() {
        let refusals = refusals();
        let app = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nx-content-type-options: nosniff\r\n\r\n";
        assert!(refusals.in_place_of(app).is_none());
        let with_body = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n{}";
        assert!(refusals.in_place_of(with_body).is_none());
        assert!(
            refusals
                .in_place_of(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .is_none()
        );
        assert!(refusals.in_place_of(b"1a\r\ndata: HTTP/1.1 400 \r\n\r\n").is_none());
        assert!(refusals.in_place_of(b"HTTP/1.").is_none());
    }
}
