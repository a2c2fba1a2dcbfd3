//! Plain-HTTP upstreams (a model served on the same host or network: vLLM, llama.cpp,
//! Ollama) reached without reqwest's connection task: the answer's own task drives its
//! HTTP/1.1 connection (hyper's `client::conn`), so a chunk goes from the socket to the
//! task that reads the answer with no task in between. At 1,000 streams that one task
//! less a chunk halves the chunks' latency (BENCHMARKS.md).
//!
//! Connections are kept alive between answers in a pool per thread: actix runs one
//! single-threaded runtime per worker, and a socket belongs to the runtime that opened it.
//! A connection is kept only when its answer was read to the end of its body; one found
//! closed when taken from the pool is dropped, and one idle for [`IDLE_TIMEOUT`] too.
//! HTTPS upstreams, and any upstream when a proxy is set in the environment, go through
//! reqwest as before (see `http::send`).

use bytes::Bytes;
use futures::Stream;
use http_body_util::Full;
use hyper::body::{Body, Incoming};
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper::header::{HOST, HeaderMap, HeaderValue};
use hyper_util::rt::TokioIo;
use reqwest::Url;
use std::cell::RefCell;
use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How long a kept-alive connection may wait in the pool for its next answer.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The most connections a thread keeps idle, to all upstreams together.
const MAX_IDLE: usize = 1024;

thread_local! {
    /// This thread's idle connections, by the upstream's `host:port`.
    static IDLE: RefCell<HashMap<String, Vec<Idle>>> = RefCell::default();
}

/// One HTTP/1.1 connection: the handle requests are sent on, and the connection itself,
/// which whoever waits for its answer polls.
struct Conn {
    sender: SendRequest<Full<Bytes>>,
    connection: Pin<Box<Connection<TokioIo<TcpStream>, Full<Bytes>>>>,
    /// The connection's future has completed (closed, or failed): it is not polled again.
    done: bool,
}

impl Conn {
    /// Lets the connection read and write what it can; true while it is open.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.done && self.connection.as_mut().poll(cx).is_ready() {
            self.done = true;
        }
        !self.done
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// The answer's head, and its body as it arrives.
pub struct Response {
    pub status: reqwest::StatusCode,
    pub headers: HeaderMap,
    pub body: DirectBody,
}

/// Why a request could not be sent, or its answer not begun.
pub type Failed = Box<dyn std::error::Error + Send + Sync>;

/// Sends a POST of `body` with `headers` to `url` (an `http://` URL) on a kept-alive
/// connection to its host, or a new one.
pub async fn post(url: &Url, headers: &HeaderMap, body: Bytes, connect_timeout: Duration) -> Result<Response, Failed> {
    let key = authority(url)?;
    let mut conn = match take_idle(&key) {
        Some(conn) => conn,
        None => connect(url, connect_timeout).await?,
    };
    let target = match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_owned(),
    };
    let mut request = hyper::Request::post(target).body(Full::new(body))?;
    *request.headers_mut() = headers.clone();
    let host = HeaderValue::from_str(&key)?;
    request.headers_mut().insert(HOST, host);
    let mut sent = std::pin::pin!(conn.sender.send_request(request));
    let response = poll_fn(|cx| {
        conn.drive(cx);
        sent.as_mut().poll(cx)
    })
    .await?;
    let (head, body) = response.into_parts();
    Ok(Response {
        status: head.status,
        headers: head.headers,
        body: DirectBody {
            body,
            conn: Some(conn),
            key,
            ended: false,
        },
    })
}

/// `host:port` as the URL gives them: the pool's key and the `Host` header.
fn authority(url: &Url) -> Result<String, Failed> {
    match url.host_str() {
        Some(host) => Ok(match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        }),
        None => Err("the upstream URL names no host".into()),
    }
}

async fn connect(url: &Url, timeout: Duration) -> Result<Conn, Failed> {
    let port = url.port_or_known_default().unwrap_or(80);
    // An IPv6 address is written in brackets in a URL, and parsed without them here.
    let host = url
        .host_str()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let connecting = TcpStream::connect((host, port));
    let tcp = match tokio::time::timeout(timeout, connecting).await {
        Ok(tcp) => tcp?,
        Err(_) => return Err(format!("connecting took more than {} s", timeout.as_secs()).into()),
    };
    // Nagle's algorithm would hold the request's last segment for the ACK of the previous
    // one, adding ~40 ms to every turn.
    tcp.set_nodelay(true)?;
    let (sender, connection) = http1::handshake(TokioIo::new(tcp)).await?;
    Ok(Conn {
        sender,
        connection: Box::pin(connection),
        done: false,
    })
}

/// A kept-alive connection to `key` that is still open, if the pool has one.
fn take_idle(key: &str) -> Option<Conn> {
    let mut cx = Context::from_waker(Waker::noop());
    IDLE.with_borrow_mut(|idle| {
        let list = idle.get_mut(key)?;
        while let Some(Idle { mut conn, since }) = list.pop() {
            // Polled once: a connection the upstream closed while it waited completes now.
            if since.elapsed() < IDLE_TIMEOUT && conn.drive(&mut cx) && conn.sender.is_ready() {
                return Some(conn);
            }
        }
        None
    })
}

fn put_idle(key: String, conn: Conn) {
    IDLE.with_borrow_mut(|idle| {
        let now = Instant::now();
        idle.retain(|_, list| {
            list.retain(|c| now.duration_since(c.since) < IDLE_TIMEOUT);
            !list.is_empty()
        });
        if idle.values().map(Vec::len).sum::<usize>() < MAX_IDLE {
            idle.entry(key).or_default().push(Idle { conn, since: now });
        }
    });
}

/// The body of an answer; polling it drives its connection. Dropped after its end, it puts
/// the connection back in the pool; dropped before, it closes it (which cancels the
/// upstream's request).
pub struct DirectBody {
    body: Incoming,
    conn: Option<Conn>,
    key: String,
    ended: bool,
}

impl Stream for DirectBody {
    type Item = Result<Bytes, hyper::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        // A body frame counts against the task's budget, as a message from a channel
        // would: an upstream that sent a long answer at once does not keep the worker's
        // other tasks waiting while the answer's task reads it all.
        let budget = ready!(tokio::task::coop::poll_proceed(cx));
        loop {
            if let Some(conn) = &mut this.conn {
                conn.drive(cx);
            }
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        budget.made_progress();
                        return Poll::Ready(Some(Ok(data)));
                    }
                    // Trailers: nothing of the answer.
                    Err(_) => continue,
                },
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => {
                    this.ended = true;
                    return Poll::Ready(None);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Drop for DirectBody {
    fn drop(&mut self) {
        if !self.ended {
            // A decoder stops reading at the answer's last event (`[DONE]`): the body's end
            // usually came with it, and then the connection can be kept.
            let mut cx = Context::from_waker(Waker::noop());
            if let Some(conn) = &mut self.conn {
                conn.drive(&mut cx);
            }
            self.ended = matches!(Pin::new(&mut self.body).poll_frame(&mut cx), Poll::Ready(None));
        }
        if let Some(conn) = self.conn.take().filter(|c| self.ended && !c.done) {
            put_idle(std::mem::take(&mut self.key), conn);
        }
    }
}
