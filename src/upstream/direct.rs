//! Plain-HTTP upstreams (a model served on the same host or network: vLLM, llama.cpp,
//! Ollama) reached without reqwest: the answer's own task writes the request on its
//! HTTP/1.1 connection and reads the answer from the socket itself, so a chunk goes from
//! the socket to the task that reads the answer with no task, channel or wake-up in
//! between (BENCHMARKS.md has what it bought).
//!
//! What is read here is an upstream's, so untrusted: the response head is parsed by
//! `httparse`, at most [`MAX_HEAD`] bytes of it; the body's framing (chunked, a length, or
//! to the connection's close) is decoded here, each of its lines at most [`MAX_LINE`]
//! bytes and its trailers at most [`MAX_TRAILERS`]; anything out of shape ends the answer
//! with a reason and the connection with it.
//!
//! Connections are kept alive between answers in a pool per thread: actix runs one
//! single-threaded runtime per worker, and a socket belongs to the runtime that opened it.
//! A connection is kept only when its answer was read to the end of its body with nothing
//! after it (a body whose end comes after the answer's last event is read to it on a task
//! of its own), and the upstream did not ask to close it; it waits without its read buffer.
//! Every [`SWEEP_EVERY`] a task of the thread lets go of the idle connections the upstream
//! has closed (a server's own keep-alive timeout is often seconds: uvicorn's is 5) and of
//! those idle for [`IDLE_TIMEOUT`]; one found closed when taken from the pool is dropped
//! too, and a request that could not be written on a kept connection is written again on
//! a new one. HTTPS upstreams, and any upstream when a proxy is set in the environment, go
//! through reqwest (see `http::send`).

use bytes::{Buf, BytesMut};
use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use std::cell::RefCell;
use std::collections::HashMap;
use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How long a kept-alive connection may wait in the pool for its next answer.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The most connections a thread keeps idle, to all upstreams together.
const MAX_IDLE: usize = 1024;

/// How often a thread's idle connections are looked at.
const SWEEP_EVERY: Duration = Duration::from_secs(2);

/// The longest response head (status line and headers) read from an upstream.
const MAX_HEAD: usize = 64 * 1024;

/// The most header fields a response head may have.
const MAX_HEADERS: usize = 128;

/// The longest line of a chunked body's framing: a chunk's size (with any extensions),
/// or a trailer field.
const MAX_LINE: usize = 4096;

/// The most bytes of trailer fields after a chunked body's last chunk.
const MAX_TRAILERS: usize = 16 * 1024;

/// The most interim (`1xx`) heads read before an answer's own.
const MAX_INTERIM: usize = 8;

/// The room made in a connection's buffer before each read of its socket.
const READ_ROOM: usize = 8 * 1024;

/// How long the end of a body may come after its answer's last event before the
/// connection is closed rather than kept (see [`DirectBody::answered`]).
const END_WAIT: Duration = Duration::from_secs(1);

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

/// One HTTP/1.1 connection, and what has been read from it and not yet used.
struct Conn {
    tcp: TcpStream,
    read: BytesMut,
}

impl Conn {
    fn new(tcp: TcpStream) -> Self {
        Self {
            tcp,
            read: BytesMut::new(),
        }
    }

    /// Reads what the socket has into the buffer: the bytes read, 0 once the upstream has
    /// closed its side.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.read.reserve(READ_ROOM);
        tokio_util::io::poll_read_buf(Pin::new(&mut self.tcp), cx, &mut self.read)
    }

    /// Whether an idle connection is still open: the upstream has neither closed it nor
    /// sent anything on it (nothing is due between answers). Asks the socket itself, so a
    /// close the runtime has not yet been told of is seen too.
    fn is_open(&self) -> bool {
        let mut byte = [MaybeUninit::uninit()];
        match socket2::SockRef::from(&self.tcp).peek(&mut byte) {
            Err(e) => e.kind() == io::ErrorKind::WouldBlock,
            // closed (0), or bytes nobody asked for
            Ok(_) => false,
        }
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
pub async fn post(url: &Url, headers: &HeaderMap, body: &[u8], connect_timeout: Duration) -> Result<Response, Failed> {
    let key = authority(url)?;
    let request = request(url, &key, headers, body);
    if let Some(mut conn) = take_idle(&key) {
        // A request that could not be written on a kept connection (the upstream closed
        // it as the request went) cannot have been answered: it is written again, on a
        // new connection. One that was written is not, whatever happens next.
        if conn.tcp.write_all(&request).await.is_ok() {
            return answer(conn, key).await;
        }
    }
    let mut conn = connect(url, connect_timeout).await?;
    conn.tcp.write_all(&request).await?;
    answer(conn, key).await
}

/// The request, written at once: `POST`, the URL's path and query, its headers, `Host`,
/// the body's length and the body. Every part of the head is checked already: the URL
/// parsed, the header values `HeaderValue`s (which hold no line break).
fn request(url: &Url, key: &str, headers: &HeaderMap, body: &[u8]) -> Vec<u8> {
    let mut head = Vec::with_capacity(256 + headers.len() * 64 + body.len());
    head.extend_from_slice(b"POST ");
    head.extend_from_slice(url.path().as_bytes());
    if let Some(query) = url.query() {
        head.push(b'?');
        head.extend_from_slice(query.as_bytes());
    }
    head.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    head.extend_from_slice(key.as_bytes());
    for (name, value) in headers {
        if name == reqwest::header::HOST || name == reqwest::header::CONTENT_LENGTH {
            continue;
        }
        head.extend_from_slice(b"\r\n");
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
    }
    head.extend_from_slice(format!("\r\ncontent-length: {}\r\n\r\n", body.len()).as_bytes());
    head.extend_from_slice(body);
    head
}

/// Reads the answer's head (past any interim `1xx` one) and begins its body.
async fn answer(mut conn: Conn, key: String) -> Result<Response, Failed> {
    let (mut interim, mut scanned) = (0, 0);
    loop {
        if head_may_end(&conn.read, &mut scanned)
            && let Some(head) = parse_head(&mut conn.read)?
        {
            scanned = 0;
            if head.status.is_informational() {
                if head.status == reqwest::StatusCode::SWITCHING_PROTOCOLS {
                    return Err("the upstream switched protocols, which it was not asked to".into());
                }
                // `100 Continue` and the like: the answer's own head follows.
                interim += 1;
                if interim > MAX_INTERIM {
                    return Err(format!("the upstream sent more than {MAX_INTERIM} interim (1xx) answers").into());
                }
                continue;
            }
            let (framing, keep) = framing(&head)?;
            return Ok(Response {
                status: head.status,
                headers: head.headers,
                body: DirectBody {
                    conn: Some(conn),
                    framing,
                    keep,
                    key,
                    ended: false,
                    answered: false,
                },
            });
        }
        if poll_fn(|cx| conn.poll_fill(cx)).await? == 0 {
            return Err("the upstream closed the connection before it answered".into());
        }
    }
}

/// Whether `read` may hold a whole head: it has a blank line, looked for only in what came
/// since the last look (`scanned` bytes were looked at), so that a head trickled in a byte
/// at a time is not parsed again for every byte; or it is as long as a head may be.
fn head_may_end(read: &[u8], scanned: &mut usize) -> bool {
    if read.len() >= MAX_HEAD {
        return true;
    }
    // A blank line that straddles the last look's end is found too.
    let new = &read[scanned.saturating_sub(3)..];
    *scanned = read.len();
    memchr::memmem::find(new, b"\n\r\n").is_some() || memchr::memmem::find(new, b"\n\n").is_some()
}

/// A response head, as the upstream sent it.
struct Head {
    /// HTTP/1.1 (rather than 1.0).
    http11: bool,
    status: reqwest::StatusCode,
    headers: HeaderMap,
}

/// The head at the start of `read`, taken from it; `None` while it is incomplete.
fn parse_head(read: &mut BytesMut) -> Result<Option<Head>, Failed> {
    if read.is_empty() {
        return Ok(None);
    }
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut fields);
    let length = match response.parse(read) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) if read.len() < MAX_HEAD => return Ok(None),
        Ok(httparse::Status::Partial) => {
            return Err(format!("the upstream's response head is longer than {} KiB", MAX_HEAD / 1024).into());
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(format!("the upstream's response has more than {MAX_HEADERS} header fields").into());
        }
        Err(e) => return Err(format!("the upstream's response is not HTTP/1.1 ({e})").into()),
    };
    if length > MAX_HEAD {
        return Err(format!("the upstream's response head is longer than {} KiB", MAX_HEAD / 1024).into());
    }
    // `httparse` gives all three once a head is complete.
    let status = reqwest::StatusCode::from_u16(response.code.unwrap_or_default())
        .map_err(|_| "the upstream's response has no valid status")?;
    let http11 = response.version == Some(1);
    let mut headers = HeaderMap::with_capacity(response.headers.len());
    for field in response.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes());
        let value = HeaderValue::from_bytes(field.value);
        match (name, value) {
            (Ok(name), Ok(value)) => {
                headers.append(name, value);
            }
            _ => return Err(format!("the upstream's response has a malformed header field ({})", field.name).into()),
        }
    }
    read.advance(length);
    Ok(Some(Head {
        http11,
        status,
        headers,
    }))
}

/// How the body of an answer with `head` ends, and whether its connection may be kept
/// after it (RFC 9112, section 6).
fn framing(head: &Head) -> Result<(Framing, bool), Failed> {
    let mut keep = head.http11 && !has_token(&head.headers, reqwest::header::CONNECTION, "close");
    if matches!(head.status.as_u16(), 204 | 304) {
        return Ok((Framing::Length(0), keep));
    }
    let codings = head.headers.get_all(reqwest::header::TRANSFER_ENCODING);
    if codings.iter().next().is_some() {
        // A length beside the codings is ignored, and the connection not kept: the two
        // disagree about where the next answer would start.
        keep &= !head.headers.contains_key(reqwest::header::CONTENT_LENGTH);
        let last = codings
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(<[u8]>::trim_ascii)
            .rfind(|coding| !coding.is_empty());
        return Ok(match last {
            Some(coding) if coding.eq_ignore_ascii_case(b"chunked") => (Framing::Chunked(Chunked::Size), keep),
            // Not chunked last: the body ends where the connection does.
            _ => (Framing::Close, false),
        });
    }
    let mut length = None;
    for value in head.headers.get_all(reqwest::header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|b| *b == b',') {
            let part = part.trim_ascii();
            let parsed = std::str::from_utf8(part)
                .ok()
                .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|p| p.parse::<u64>().ok());
            match (parsed, length) {
                (Some(n), None) => length = Some(n),
                (Some(n), Some(m)) if n == m => {}
                _ => return Err("the upstream's response has an invalid content-length".into()),
            }
        }
    }
    Ok(match length {
        Some(n) => (Framing::Length(n), keep),
        None => (Framing::Close, false),
    })
}

/// Whether the header `name` lists `token` (case aside).
fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
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
    Ok(Conn::new(tcp))
}

/// A kept-alive connection to `key` that is still open, if the pool has one.
fn take_idle(key: &str) -> Option<Conn> {
    IDLE.with_borrow_mut(|pool| {
        let list = pool.by_key.get_mut(key)?;
        let mut found = None;
        while let Some(Idle { conn, since }) = list.pop() {
            if since.elapsed() < IDLE_TIMEOUT && conn.is_open() {
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
        let now = Instant::now();
        let left = IDLE.with_borrow_mut(|pool| {
            pool.by_key.retain(|_, list| {
                list.retain(|idle| now.duration_since(idle.since) < IDLE_TIMEOUT && idle.conn.is_open());
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

/// Where an answer's body ends.
enum Framing {
    /// After this many bytes more.
    Length(u64),
    /// At the chunk of size 0 and the trailers after it; here in the chunks.
    Chunked(Chunked),
    /// Where the connection does.
    Close,
}

/// Where a chunked body's reading is.
enum Chunked {
    /// At a chunk's size line.
    Size,
    /// In a chunk's data, this many bytes of it left.
    Data(u64),
    /// At the line break that ends a chunk's data.
    DataEnd,
    /// In the trailer fields, after this many bytes of them.
    Trailers(usize),
}

/// What the bytes read so far give.
enum Step {
    /// The first this many bytes read are the body's (used where they lie, then dropped
    /// from the buffer).
    Data(usize),
    /// The body's end.
    End,
    /// Nothing until more is read.
    More,
}

/// The body of an answer, read from the socket by whichever task polls it. Dropped after
/// its end, it puts the connection back in the pool; dropped before, it closes it (which
/// cancels the upstream's request).
pub struct DirectBody {
    /// `None` once the body has failed.
    conn: Option<Conn>,
    framing: Framing,
    /// The connection may serve another answer after this one.
    keep: bool,
    key: String,
    ended: bool,
    /// The answer is whole (its decoder read its last event): only the body's framing is
    /// left to come.
    answered: bool,
}

impl DirectBody {
    /// Says that the answer is whole: dropped before the body's end, the body then waits
    /// for that end (for at most [`END_WAIT`]) on a task of its own, and its connection
    /// is kept. A server often writes the body's last bytes (a chunked body's `0` chunk)
    /// after its last event, apart from it: a decoder that read the event first would
    /// otherwise close the connection, and the next answer would wait for a new one.
    pub fn answered(&mut self) {
        self.answered = true;
    }

    /// The next thing the bytes already read give, taken from them.
    fn step(&mut self) -> io::Result<Step> {
        let Some(conn) = &mut self.conn else {
            return Ok(Step::End);
        };
        let read = &mut conn.read;
        match &mut self.framing {
            Framing::Length(0) => Ok(Step::End),
            Framing::Length(left) => Ok(match take(read, left) {
                Some(data) => Step::Data(data),
                None => Step::More,
            }),
            Framing::Close => Ok(match read.is_empty() {
                true => Step::More,
                false => Step::Data(read.len()),
            }),
            Framing::Chunked(at) => chunked(read, at),
        }
    }

    /// The upstream closed its side: the end of a body that ends there, else a failure.
    fn closed(&mut self) -> io::Result<Step> {
        match self.framing {
            Framing::Close => Ok(Step::End),
            _ => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the upstream closed the connection before the answer's end",
            )),
        }
    }

    /// One poll of the socket after what was read is used up.
    fn poll_step(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Step>> {
        loop {
            match self.step()? {
                Step::More => {}
                step => return Poll::Ready(Ok(step)),
            }
            let Some(conn) = &mut self.conn else {
                return Poll::Ready(Ok(Step::End));
            };
            if ready!(conn.poll_fill(cx))? == 0 {
                return Poll::Ready(self.closed());
            }
        }
    }
}

/// How many bytes of what was read are the next data: up to `left`, counted down; `None`
/// if nothing was read.
fn take(read: &BytesMut, left: &mut u64) -> Option<usize> {
    if read.is_empty() {
        return None;
    }
    let n = usize::try_from(*left).unwrap_or(usize::MAX).min(read.len());
    *left -= n as u64;
    Some(n)
}

/// The next step of a chunked body from `read`, at `at`.
fn chunked(read: &mut BytesMut, at: &mut Chunked) -> io::Result<Step> {
    let malformed = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the upstream's chunked body is malformed: {what}"),
        )
    };
    loop {
        match at {
            Chunked::Size => {
                let Some((end, used)) = line(read)? else {
                    return Ok(Step::More);
                };
                // Extensions after `;` mean nothing here.
                let size = read[..end]
                    .split(|b| *b == b';')
                    .next()
                    .unwrap_or_default()
                    .trim_ascii();
                if size.is_empty() || size.len() > 16 || !size.iter().all(u8::is_ascii_hexdigit) {
                    return Err(malformed(
                        "a chunk size is not a hexadecimal number of at most 16 digits",
                    ));
                }
                let size = std::str::from_utf8(size)
                    .ok()
                    .and_then(|s| u64::from_str_radix(s, 16).ok())
                    .ok_or_else(|| malformed("a chunk size is not a number"))?;
                read.advance(used);
                *at = match size {
                    0 => Chunked::Trailers(0),
                    n => Chunked::Data(n),
                };
            }
            Chunked::Data(left) => {
                let Some(data) = take(read, left) else {
                    return Ok(Step::More);
                };
                if *left == 0 {
                    *at = Chunked::DataEnd;
                }
                return Ok(Step::Data(data));
            }
            Chunked::DataEnd => match &read[..] {
                [] | [b'\r'] => return Ok(Step::More),
                [b'\r', b'\n', ..] => {
                    read.advance(2);
                    *at = Chunked::Size;
                }
                [b'\n', ..] => {
                    read.advance(1);
                    *at = Chunked::Size;
                }
                _ => return Err(malformed("a chunk's data is longer than its size")),
            },
            Chunked::Trailers(so_far) => {
                let Some((end, used)) = line(read)? else {
                    return match *so_far + read.len() > MAX_TRAILERS {
                        true => Err(malformed("its trailers are too long")),
                        false => Ok(Step::More),
                    };
                };
                read.advance(used);
                if end == 0 {
                    return Ok(Step::End);
                }
                *so_far += end;
                if *so_far > MAX_TRAILERS {
                    return Err(malformed("its trailers are too long"));
                }
            }
        }
    }
}

/// Where the first line of `read` ends, and where the next begins (after its line break);
/// `None` while there is no whole line yet.
fn line(read: &BytesMut) -> io::Result<Option<(usize, usize)>> {
    let too_long = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "the upstream's chunked body is malformed: a line is too long",
        )
    };
    let Some(end) = memchr::memchr(b'\n', read) else {
        return match read.len() > MAX_LINE {
            true => Err(too_long()),
            false => Ok(None),
        };
    };
    if end > MAX_LINE {
        return Err(too_long());
    }
    let content = match end > 0 && read[end - 1] == b'\r' {
        true => end - 1,
        false => end,
    };
    Ok(Some((content, end + 1)))
}

impl DirectBody {
    /// The next piece of the body, lent to `read` where it lies in the connection's
    /// buffer (it is not copied out, nor counted in a shared buffer); `None` after the
    /// body's end.
    pub fn poll_read_with<R>(
        &mut self,
        cx: &mut Context<'_>,
        read: impl FnOnce(&[u8]) -> R,
    ) -> Poll<Option<io::Result<R>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        // A body read counts against the task's budget, as a message from a channel
        // would: an upstream that sent a long answer at once does not keep the worker's
        // other tasks waiting while the answer's task reads it all.
        let budget = ready!(tokio::task::coop::poll_proceed(cx));
        let step = ready!(self.poll_step(cx));
        budget.made_progress();
        Poll::Ready(match (step, &mut self.conn) {
            (Ok(Step::Data(n)), Some(conn)) => {
                let made = read(&conn.read[..n]);
                conn.read.advance(n);
                Some(Ok(made))
            }
            (Ok(_), _) => {
                self.ended = true;
                None
            }
            (Err(e), _) => {
                self.ended = true;
                self.conn = None;
                Some(Err(e))
            }
        })
    }
}

impl Drop for DirectBody {
    fn drop(&mut self) {
        if !self.ended {
            // A decoder stops reading at the answer's last event (`[DONE]`): the body's end
            // usually came with it, and then the connection is kept; one still to come is
            // waited for apart (see `answered`). Whatever else is there means it cannot be.
            let mut cx = Context::from_waker(std::task::Waker::noop());
            match self.poll_step(&mut cx) {
                Poll::Ready(Ok(Step::End)) => self.ended = true,
                Poll::Pending if self.answered && self.keep => return end_later(self),
                _ => {}
            }
        }
        let Some(mut conn) = self.conn.take() else { return };
        if self.ended && self.keep && conn.read.is_empty() {
            // An idle connection holds no buffer: the pool may keep a thousand of them.
            conn.read = BytesMut::new();
            put_idle(std::mem::take(&mut self.key), conn);
        }
    }
}

/// Reads the rest of a whole answer's body on a task of the thread's runtime, then lets it
/// go: its connection is kept if the body ended, with nothing else in it, within
/// [`END_WAIT`], and closed otherwise. Off a single-threaded runtime, closed at once.
fn end_later(body: &mut DirectBody) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if runtime.runtime_flavor() != tokio::runtime::RuntimeFlavor::CurrentThread {
        return;
    }
    let mut rest = DirectBody {
        conn: body.conn.take(),
        framing: std::mem::replace(&mut body.framing, Framing::Close),
        keep: body.keep,
        key: std::mem::take(&mut body.key),
        ended: false,
        answered: false,
    };
    runtime.spawn(async move {
        let end = poll_fn(|cx| {
            rest.ended = match ready!(rest.poll_step(cx)) {
                Ok(Step::End) => true,
                // Bytes after the answer's last event: the connection is not trusted again.
                Ok(_) | Err(_) => false,
            };
            Poll::Ready(())
        });
        let _ = tokio::time::timeout(END_WAIT, end).await;
        if !rest.ended {
            drop(rest.conn.take());
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// An upstream that answers each request on a connection with the next of `answers`,
    /// written a few bytes at a time; counts its connections and those the client closed,
    /// and keeps the requests' bytes.
    struct Upstream {
        url: Url,
        connections: Arc<AtomicUsize>,
        closed: Arc<AtomicUsize>,
        requests: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    }

    impl Upstream {
        /// The connections made to it so far.
        fn connections(&self) -> usize {
            self.connections.load(Ordering::SeqCst)
        }
    }

    /// What the upstream does after an answer.
    #[derive(Clone, Copy, PartialEq)]
    enum After {
        KeepOpen,
        Close,
    }

    async fn upstream(answers: Vec<(&'static str, After)>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!(
            "http://{}/v1/chat/completions?x=1",
            listener.local_addr().unwrap()
        ))
        .unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (counted, kept, gone) = (Arc::clone(&connections), Arc::clone(&requests), Arc::clone(&closed));
        let answers = Arc::new(std::sync::Mutex::new(answers.into_iter()));
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let (answers, kept, gone) = (Arc::clone(&answers), Arc::clone(&kept), Arc::clone(&gone));
                tokio::spawn(async move {
                    loop {
                        let Some(request) = read_request(&mut socket).await else {
                            gone.fetch_add(1, Ordering::SeqCst);
                            return;
                        };
                        kept.lock().unwrap().push(request);
                        let Some((answer, after)) = answers.lock().unwrap().next() else {
                            return;
                        };
                        for piece in answer.as_bytes().chunks(3) {
                            if socket.write_all(piece).await.is_err() {
                                gone.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                            tokio::task::yield_now().await;
                        }
                        if after == After::Close {
                            return;
                        }
                    }
                });
            }
        });
        Upstream {
            url,
            connections,
            closed,
            requests,
        }
    }

    /// A request's head and its `content-length` bytes of body; `None` once the client
    /// has closed.
    async fn read_request(socket: &mut TcpStream) -> Option<Vec<u8>> {
        let mut request = Vec::new();
        while !request.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            if socket.read(&mut byte).await.ok()? == 0 {
                return None;
            }
            request.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&request).to_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        socket.read_exact(&mut body).await.ok()?;
        request.extend_from_slice(&body);
        Some(request)
    }

    async fn ask(upstream: &Upstream) -> Result<(u16, Result<Vec<u8>, String>), String> {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_static("Bearer k"));
        let response = post(&upstream.url, &headers, b"{}", Duration::from_secs(5))
            .await
            .map_err(|e| e.to_string())?;
        let mut body = response.body;
        let mut read = Vec::new();
        while let Some(piece) = next(&mut body).await {
            match piece {
                Ok(piece) => read.extend_from_slice(&piece),
                Err(e) => return Ok((response.status.as_u16(), Err(e.to_string()))),
            }
        }
        Ok((response.status.as_u16(), Ok(read)))
    }

    /// The next piece of `body`, copied out.
    async fn next(body: &mut DirectBody) -> Option<io::Result<Vec<u8>>> {
        poll_fn(|cx| body.poll_read_with(cx, <[u8]>::to_vec)).await
    }

    const CHUNKED: &str = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                           5;name=value\r\nhello\r\n6\r\n world\r\n0\r\ntrailer: x\r\n\r\n";

    #[tokio::test]
    async fn the_request_is_a_post_with_its_host_headers_and_length() {
        let upstream = upstream(vec![(CHUNKED, After::KeepOpen)]).await;
        assert_eq!(ask(&upstream).await.unwrap(), (200, Ok(b"hello world".to_vec())));
        let request = String::from_utf8(upstream.requests.lock().unwrap()[0].clone()).unwrap();
        let host = authority(&upstream.url).unwrap();
        assert_eq!(
            request,
            format!(
                "POST /v1/chat/completions?x=1 HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer k\r\ncontent-length: 2\r\n\r\n{{}}"
            )
        );
    }

    #[tokio::test]
    async fn a_chunked_answer_read_a_few_bytes_at_a_time_is_whole_and_its_connection_kept() {
        let upstream = upstream(vec![(CHUNKED, After::KeepOpen), (CHUNKED, After::KeepOpen)]).await;
        for _ in 0..2 {
            assert_eq!(ask(&upstream).await.unwrap(), (200, Ok(b"hello world".to_vec())));
            let buffers: Vec<usize> = IDLE.with_borrow(|pool| {
                let idle = pool.by_key.values().flatten();
                idle.map(|idle| idle.conn.read.capacity()).collect()
            });
            assert_eq!(buffers, [0], "one connection kept, without its read buffer");
        }
        assert_eq!(
            upstream.connections(),
            1,
            "the second answer came on the first's connection"
        );
    }

    #[tokio::test]
    async fn a_length_ends_a_body_and_keeps_its_connection_a_close_ends_one_and_does_not() {
        let upstream = upstream(vec![
            (
                "HTTP/1.1 201 Created\r\ncontent-length: 5\r\n\r\nhello",
                After::KeepOpen,
            ),
            ("HTTP/1.1 204 No Content\r\n\r\n", After::KeepOpen),
            ("HTTP/1.0 200 OK\r\n\r\nuntil the end", After::Close),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                After::KeepOpen,
            ),
            ("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", After::KeepOpen),
        ])
        .await;
        assert_eq!(ask(&upstream).await.unwrap(), (201, Ok(b"hello".to_vec())));
        assert_eq!(ask(&upstream).await.unwrap(), (204, Ok(Vec::new())));
        assert_eq!(upstream.connections(), 1);
        assert_eq!(ask(&upstream).await.unwrap(), (200, Ok(b"until the end".to_vec())));
        assert_eq!(upstream.connections(), 1);
        assert_eq!(ask(&upstream).await.unwrap(), (200, Ok(b"ok".to_vec())));
        assert_eq!(upstream.connections(), 2, "HTTP/1.0 without keep-alive is not kept");
        assert_eq!(ask(&upstream).await.unwrap(), (200, Ok(b"ok".to_vec())));
        assert_eq!(upstream.connections(), 3, "`connection: close` is not kept");
    }

    #[tokio::test]
    async fn a_head_trickled_a_byte_at_a_time_is_read_and_interim_answers_are_few() {
        let first = upstream(vec![(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\n\
             content-length: 2\r\n\r\nok",
            After::KeepOpen,
        )])
        .await;
        assert_eq!(ask(&first).await.unwrap(), (200, Ok(b"ok".to_vec())));
        let mut scanned = 0;
        let mut read = Vec::new();
        for byte in b"HTTP/1.1 200 OK\r\nx: y\r\n\r" {
            read.push(*byte);
            assert!(
                !head_may_end(&read, &mut scanned),
                "{:?}",
                String::from_utf8_lossy(&read)
            );
        }
        read.push(b'\n');
        assert!(head_may_end(&read, &mut scanned));

        let many: &'static str = Box::leak(
            format!("{}HTTP/1.1 200 OK\r\n\r\n", "HTTP/1.1 102 Processing\r\n\r\n".repeat(9)).into_boxed_str(),
        );
        let second = upstream(vec![(many, After::KeepOpen)]).await;
        let error = ask(&second).await.unwrap_err();
        assert!(error.contains("more than 8 interim"), "{error}");
    }

    #[tokio::test]
    async fn a_kept_connection_the_upstream_closed_is_not_used_again() {
        // The upstream answers and then closes, as a server whose keep-alive timeout ran out.
        let upstream = upstream(vec![
            ("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", After::Close),
            ("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", After::Close),
        ])
        .await;
        assert_eq!(ask(&upstream).await.unwrap(), (200, Ok(b"ok".to_vec())));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(ask(&upstream).await.unwrap(), (200, Ok(b"ok".to_vec())));
        assert_eq!(upstream.connections(), 2);
        assert_eq!(upstream.requests.lock().unwrap().len(), 2, "each request was sent once");
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_closes_its_connection() {
        let upstream = upstream(vec![(
            "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nthe start",
            After::KeepOpen,
        )])
        .await;
        let response = post(&upstream.url, &HeaderMap::new(), b"", Duration::from_secs(5))
            .await
            .unwrap();
        let mut body = response.body;
        assert!(next(&mut body).await.unwrap().is_ok());
        drop(body);
        assert_eq!(IDLE.with_borrow(|pool| pool.len()), 0, "nothing kept");
        // The upstream sees the connection close: its request is cancelled.
        assert!(
            until(|| upstream.closed.load(Ordering::SeqCst) > 0).await,
            "the connection was left open"
        );
    }

    /// An upstream that answers every request on a connection with `hello` in a chunked
    /// body, and writes `tail` (the body's end, or more) 50 ms later, apart; none: never.
    async fn late_end(tail: Option<&'static str>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!(
            "http://{}/v1/chat/completions",
            listener.local_addr().unwrap()
        ))
        .unwrap();
        let (connections, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (counted, gone) = (Arc::clone(&connections), Arc::clone(&closed));
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let gone = Arc::clone(&gone);
                tokio::spawn(async move {
                    while read_request(&mut socket).await.is_some() {
                        let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n";
                        socket.write_all(head.as_bytes()).await.unwrap();
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        if let Some(tail) = tail {
                            let _ = socket.write_all(tail.as_bytes()).await;
                        }
                    }
                    gone.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Upstream {
            url,
            connections,
            closed,
            requests: Arc::default(),
        }
    }

    /// Reads `hello` from the upstream, says the answer is whole and lets the body go.
    async fn read_whole_answer(upstream: &Upstream) {
        let response = post(&upstream.url, &HeaderMap::new(), b"", Duration::from_secs(5))
            .await
            .unwrap();
        let mut body = response.body;
        assert_eq!(next(&mut body).await.unwrap().unwrap(), b"hello");
        body.answered();
    }

    /// Waits (at most 5 s) until `done` holds.
    async fn until(done: impl Fn() -> bool) -> bool {
        tokio::time::timeout(Duration::from_secs(5), async {
            while !done() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .is_ok()
    }

    #[tokio::test]
    async fn a_whole_answer_whose_body_ends_after_it_keeps_its_connection() {
        let upstream = late_end(Some("0\r\n\r\n")).await;
        read_whole_answer(&upstream).await;
        assert_eq!(
            IDLE.with_borrow(|pool| pool.len()),
            0,
            "the body's end has not come yet"
        );
        assert!(
            until(|| IDLE.with_borrow(|pool| pool.len()) == 1).await,
            "the connection was not kept"
        );
        read_whole_answer(&upstream).await;
        assert_eq!(
            upstream.connections(),
            1,
            "the second answer came on the first's connection"
        );
        assert_eq!(upstream.closed.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_whole_answer_whose_body_goes_on_or_does_not_end_closes_its_connection() {
        for tail in [Some("3\r\nabc\r\n0\r\n\r\n"), None] {
            let upstream = late_end(tail).await;
            read_whole_answer(&upstream).await;
            // For the body that never ends: closed after END_WAIT, in the paused clock.
            assert!(
                until(|| upstream.closed.load(Ordering::SeqCst) == 1).await,
                "{tail:?}: the connection was left open"
            );
            assert_eq!(IDLE.with_borrow(|pool| pool.len()), 0, "{tail:?}: kept");
        }
    }

    #[tokio::test]
    async fn an_answer_out_of_shape_fails_with_the_reason() {
        let cases: [(&str, &str); 9] = [
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
                "hexadecimal",
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n",
                "hexadecimal",
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n10000000000000000\r\n",
                "16 digits",
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n",
                "longer than its size",
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel",
                "closed the connection before the answer's end",
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc",
                "closed the connection before the answer's end",
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 1x\r\n\r\nabc",
                "invalid content-length",
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabc",
                "invalid content-length",
            ),
            ("HTTP/1.1 2OO OK\r\n\r\n", "not HTTP/1.1"),
        ];
        for (answer, reason) in cases {
            let upstream = upstream(vec![(answer, After::Close)]).await;
            let error = match ask(&upstream).await {
                Err(e) => e,
                Ok((_, Err(e))) => e,
                Ok((_, Ok(body))) => panic!("{answer:?} gave {:?}", String::from_utf8_lossy(&body)),
            };
            assert!(error.contains(reason), "{answer:?}: {error}");
        }
    }

    #[tokio::test]
    async fn a_head_too_long_or_a_line_too_long_is_refused() {
        let long_head: &'static str =
            Box::leak(format!("HTTP/1.1 200 OK\r\nx: {}\r\n\r\n", "a".repeat(MAX_HEAD)).into_boxed_str());
        let long_line: &'static str = Box::leak(
            format!(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;{}\r\n",
                "a".repeat(MAX_LINE)
            )
            .into_boxed_str(),
        );
        let upstream_head = upstream(vec![(long_head, After::KeepOpen)]).await;
        let error = ask(&upstream_head).await.unwrap_err();
        assert!(error.contains("longer than 64 KiB"), "{error}");
        let upstream_line = upstream(vec![(long_line, After::KeepOpen)]).await;
        let (_, body) = ask(&upstream_line).await.unwrap();
        assert!(body.unwrap_err().contains("a line is too long"));
    }
}
