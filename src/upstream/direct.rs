//! Plain-HTTP upstreams (a model served on the same host or network: vLLM, llama.cpp,
//! Ollama) reached without reqwest's connection task: the answer's own task drives its
//! HTTP/1.1 connection (hyper's `client::conn`), so a chunk goes from the socket to the
//! task that reads the answer with no task in between: one task less a chunk, and a
//! request without reqwest's layers (BENCHMARKS.md has what it bought).
//!
//! Connections are kept alive between answers in a pool per thread: actix runs one
//! single-threaded runtime per worker, and a socket belongs to the runtime that opened it.
//! A connection is kept only when its answer was read to the end of its body. Every
//! [`SWEEP_EVERY`] a task of the thread lets go of the idle connections the upstream has
//! closed (a server's own keep-alive timeout is often seconds: uvicorn's is 5) and of those
//! idle for [`IDLE_TIMEOUT`]; one found closed when taken from the pool is dropped too.
//! HTTPS upstreams, and any upstream when a proxy is set in the environment, go through
//! reqwest as before (see `http::send`).

use bytes::Bytes;
use futures::Stream;
use futures::task::AtomicWaker;
use http_body_util::Full;
use hyper::body::{Body, Incoming};
use hyper::client::conn::TrySendError;
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper::header::{HOST, HeaderMap, HeaderValue};
use hyper_util::rt::TokioIo;
use reqwest::Url;
use std::cell::RefCell;
use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker, ready};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How long a kept-alive connection may wait in the pool for its next answer.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The most connections a thread keeps idle, to all upstreams together.
const MAX_IDLE: usize = 1024;

/// How often a thread's idle connections are looked at.
const SWEEP_EVERY: Duration = Duration::from_secs(2);

thread_local! {
    /// This thread's idle connections.
    static IDLE: RefCell<Pool> = RefCell::default();
}

#[derive(Default)]
struct Pool {
    /// By the upstream's `host:port`; never an empty list.
    by_key: HashMap<String, Vec<Idle>>,
    /// A sweep task runs on this thread.
    sweeping: bool,
}

impl Pool {
    /// Idle connections, to every upstream (a list per upstream host: a handful).
    fn len(&self) -> usize {
        self.by_key.values().map(Vec::len).sum()
    }
}

/// One HTTP/1.1 connection: the handle requests are sent on, and the connection itself,
/// which whoever waits for its answer polls.
struct Conn {
    sender: SendRequest<Full<Bytes>>,
    /// `None` once it has ended (closed, or failed). It is dropped then and there: a
    /// request still queued on it fails only when it is dropped (handing the request
    /// back), and would otherwise wait for an answer that cannot come.
    connection: Option<Pin<Box<Http1>>>,
}

impl Conn {
    /// Lets the connection read and write what it can; true while it is open.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if let Some(connection) = &mut self.connection
            && connection.as_mut().poll(cx).is_ready()
        {
            self.connection = None;
        }
        self.connection.is_some()
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

type Request = hyper::Request<Full<Bytes>>;
type Http1 = Connection<TokioIo<TcpStream>, Full<Bytes>>;

/// Sends a POST of `body` with `headers` to `url` (an `http://` URL) on a kept-alive
/// connection to its host, or a new one.
pub async fn post(url: &Url, headers: &HeaderMap, body: Bytes, connect_timeout: Duration) -> Result<Response, Failed> {
    let key = authority(url)?;
    let target = match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_owned(),
    };
    let mut request = hyper::Request::post(target).body(Full::new(body))?;
    *request.headers_mut() = headers.clone();
    request.headers_mut().insert(HOST, HeaderValue::from_str(&key)?);
    if let Some(conn) = take_idle(&key) {
        match send(conn, request, &key).await {
            Ok(response) => return Ok(response),
            // The upstream closed the kept-alive connection before it took the request (its
            // own idle timeout ran out as the request went): nothing was sent, so it is
            // sent again, on a new connection. A request that was sent is not.
            Err(mut e) => match e.take_message() {
                Some(unsent) => request = unsent,
                None => return Err(e.into_error().into()),
            },
        }
    }
    let conn = connect(url, connect_timeout).await?;
    send(conn, request, &key).await.map_err(|e| e.into_error().into())
}

/// Sends `request` on `conn` and waits for the answer's head, driving the connection.
async fn send(mut conn: Conn, request: Request, key: &str) -> Result<Response, TrySendError<Request>> {
    let mut sent = std::pin::pin!(conn.sender.try_send_request(request));
    let response = poll_fn(|cx| {
        conn.drive(cx);
        sent.as_mut().poll(cx)
    })
    .await?;
    let (head, body) = response.into_parts();
    Ok(Response {
        status: head.status,
        headers: head.headers,
        body: DirectBody::new(body, conn, key.to_owned()),
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
        connection: Some(Box::pin(connection)),
    })
}

/// A kept-alive connection to `key` that is still open, if the pool has one.
fn take_idle(key: &str) -> Option<Conn> {
    let mut cx = Context::from_waker(Waker::noop());
    IDLE.with_borrow_mut(|pool| {
        let list = pool.by_key.get_mut(key)?;
        let mut found = None;
        while let Some(Idle { mut conn, since }) = list.pop() {
            // Polled once: a connection the upstream closed since the last sweep completes now.
            if since.elapsed() < IDLE_TIMEOUT && conn.drive(&mut cx) && conn.sender.is_ready() {
                found = Some(conn);
                break;
            }
        }
        if list.is_empty() {
            pool.by_key.remove(key);
        }
        found
    })
}

/// Keeps `conn` for the next answer to `key`. Only on a single-threaded runtime (each of
/// actix's workers has one), where the sweep task runs on the pool's own thread; elsewhere
/// the connection is closed.
fn put_idle(key: String, conn: Conn) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if runtime.runtime_flavor() != tokio::runtime::RuntimeFlavor::CurrentThread {
        return;
    }
    let sweep = IDLE.with_borrow_mut(|pool| {
        if pool.len() >= MAX_IDLE {
            return false;
        }
        let since = Instant::now();
        pool.by_key.entry(key).or_default().push(Idle { conn, since });
        !std::mem::replace(&mut pool.sweeping, true)
    });
    if sweep {
        runtime.spawn(sweep_idle());
    }
}

/// Lets go of the thread's idle connections that have closed or waited too long, every
/// [`SWEEP_EVERY`], until none is left.
async fn sweep_idle() {
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        let mut cx = Context::from_waker(Waker::noop());
        let now = Instant::now();
        let left = IDLE.with_borrow_mut(|pool| {
            pool.by_key.retain(|_, list| {
                list.retain_mut(|idle| now.duration_since(idle.since) < IDLE_TIMEOUT && idle.conn.drive(&mut cx));
                !list.is_empty()
            });
            pool.sweeping = !pool.by_key.is_empty();
            pool.sweeping
        });
        if !left {
            return;
        }
    }
}

/// The body of an answer; polling it drives its connection. Dropped after its end, it puts
/// the connection back in the pool; dropped before, it closes it (which cancels the
/// upstream's request).
pub struct DirectBody {
    body: Incoming,
    conn: Option<Conn>,
    key: String,
    ended: bool,
    /// What the connection and the body are polled with (see [`Inward`]).
    inward: Arc<Inward>,
    waker: Waker,
}

impl DirectBody {
    fn new(body: Incoming, conn: Conn, key: String) -> Self {
        let inward = Arc::new(Inward::default());
        Self {
            body,
            conn: Some(conn),
            key,
            ended: false,
            waker: Waker::from(Arc::clone(&inward)),
            inward,
        }
    }

    /// The connection's progress, then the body's next frame.
    fn poll_once(&mut self) -> Poll<Option<Result<Bytes, hyper::Error>>> {
        let mut cx = Context::from_waker(&self.waker);
        loop {
            if let Some(conn) = &mut self.conn {
                conn.drive(&mut cx);
            }
            return match Pin::new(&mut self.body).poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => Poll::Ready(Some(Ok(data))),
                    // Trailers: nothing of the answer.
                    Err(_) => continue,
                },
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => {
                    self.ended = true;
                    Poll::Ready(None)
                }
                Poll::Pending => Poll::Pending,
            };
        }
    }
}

/// The waker of a connection and its body. The two wake each other as they go (a frame
/// handed to the body, the body asking for the next), and one task polls both: a wake-up
/// that comes while that task polls them is noted, and acted on in the same poll, rather
/// than scheduling the task once more for nothing. Wake-ups from outside (the socket's,
/// which come between polls) wake the task.
#[derive(Default)]
struct Inward {
    polling: AtomicBool,
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Inward {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        match self.polling.load(Ordering::SeqCst) {
            true => self.woken.store(true, Ordering::SeqCst),
            false => self.task.wake(),
        }
    }
}

/// Passes in a row that a poll may take for wake-ups of its own before it lets the task
/// be scheduled again instead.
const INWARD_PASSES: usize = 4;

impl Stream for DirectBody {
    type Item = Result<Bytes, hyper::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        // A body frame counts against the task's budget, as a message from a channel
        // would: an upstream that sent a long answer at once does not keep the worker's
        // other tasks waiting while the answer's task reads it all.
        let budget = ready!(tokio::task::coop::poll_proceed(cx));
        this.inward.task.register(cx.waker());
        for _ in 0..INWARD_PASSES {
            this.inward.polling.store(true, Ordering::SeqCst);
            let polled = this.poll_once();
            this.inward.polling.store(false, Ordering::SeqCst);
            if polled.is_ready() {
                budget.made_progress();
                // A wake-up of this pass is acted on by the next poll, which the reader
                // of a stream makes after an item.
                return polled;
            }
            if !this.inward.woken.swap(false, Ordering::SeqCst) {
                return Poll::Pending;
            }
        }
        // Still waking itself: let the other tasks run first.
        cx.waker().wake_by_ref();
        Poll::Pending
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
        if let Some(conn) = self.conn.take().filter(|c| self.ended && c.connection.is_some()) {
            put_idle(std::mem::take(&mut self.key), conn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::sync::atomic::AtomicUsize;

    #[derive(Default)]
    struct Counted(AtomicUsize);

    impl Wake for Counted {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A request on `key` with an empty body.
    fn request(key: &str) -> Request {
        let mut request = hyper::Request::post("/v1/chat/completions")
            .body(Full::default())
            .unwrap();
        request.headers_mut().insert(HOST, HeaderValue::from_str(key).unwrap());
        request
    }

    #[tokio::test]
    async fn a_request_queued_on_a_connection_that_ended_is_handed_back_unsent() {
        // An upstream that answers one request, then closes the connection when told to (as
        // a server whose keep-alive timeout runs out), reading nothing more.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}/v1", listener.local_addr().unwrap())).unwrap();
        let (close, closing) = tokio::sync::oneshot::channel::<()>();
        let upstream = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut byte = [0u8; 1];
                assert_eq!(socket.read(&mut byte).await.unwrap(), 1);
                head.push(byte[0]);
            }
            socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
            closing.await.unwrap();
        });
        let key = authority(&url).unwrap();
        let conn = connect(&url, Duration::from_secs(5)).await.unwrap();
        let mut response = send(conn, request(&key), &key).await.unwrap().body;
        assert_eq!(response.next().await.unwrap().unwrap(), "ok");
        assert!(response.next().await.is_none());
        let conn = response.conn.take().unwrap();

        close.send(()).unwrap();
        upstream.await.unwrap();
        // The upstream's FIN is seen by the runtime, not yet by the connection.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let sent = tokio::time::timeout(Duration::from_secs(10), send(conn, request(&key), &key)).await;
        let mut error = match sent {
            Ok(Err(e)) => e,
            Ok(Ok(_)) => panic!("a closed connection gave an answer"),
            Err(_) => panic!("the request waited on a connection that had ended"),
        };
        assert!(
            error.take_message().is_some(),
            "the unsent request comes back: {:?}",
            error.error()
        );
    }

    #[test]
    fn a_wake_up_while_polled_is_noted_and_one_from_outside_wakes_the_task() {
        let task = Arc::new(Counted::default());
        let inward = Arc::new(Inward::default());
        inward.task.register(&Waker::from(Arc::clone(&task)));
        let waker = Waker::from(Arc::clone(&inward));

        inward.polling.store(true, Ordering::SeqCst);
        waker.wake_by_ref();
        inward.polling.store(false, Ordering::SeqCst);
        assert_eq!(task.0.load(Ordering::SeqCst), 0, "the task is not scheduled again");
        assert!(inward.woken.swap(false, Ordering::SeqCst), "but the poll sees it");

        waker.wake_by_ref();
        assert_eq!(task.0.load(Ordering::SeqCst), 1);
        assert!(!inward.woken.load(Ordering::SeqCst));
    }
}
