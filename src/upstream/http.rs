//! What every HTTP upstream shares: a client per thread, a request sent on the right one
//! of two paths, errors described with their causes, the start of an error response, and
//! a streamed body read by a decoder through the hygiene gate.

use super::direct::{self, DirectBody};
use super::hygiene::{AnswerGate, Hygiene};
use super::{ChunkStream, Item, UpstreamError};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, ready};
use std::thread::ThreadId;
use std::time::Duration;

/// How long connecting to an upstream may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Most of an error body worth reading; bodies are short, a proxy's HTML page is not.
const ERROR_BODY_LIMIT: usize = 16 * 1024;

/// One HTTP client, and so one connection pool, per thread. hyper drives a connection on a
/// task of the runtime that opened it, and actix runs a single-threaded runtime per worker:
/// a connection opened on one worker and reused from another would wake the first worker's
/// thread for every chunk of every answer.
pub struct Clients {
    clients: Mutex<HashMap<ThreadId, reqwest::Client>>,
    /// Built at start-up, so that settings that cannot make a client fail there; shared
    /// by any thread whose own client could not be built after all.
    fallback: reqwest::Client,
}

impl Clients {
    pub fn new() -> Result<Self, reqwest::Error> {
        Ok(Self {
            clients: Mutex::default(),
            fallback: build_client()?,
        })
    }

    /// This thread's client, made on the thread's first call: making one loads the
    /// system's root certificates, about 40 ms (see [`super::Provider::warm`]).
    pub fn get(&self) -> reqwest::Client {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients
            .entry(std::thread::current().id())
            .or_insert_with(|| build_client().unwrap_or_else(|_| self.fallback.clone()))
            .clone()
    }
}

/// An upstream endpoint's URL, parsed once rather than on every request (parsing runs
/// the host through IDNA processing: a few µs of every answer's time to first token).
pub struct Endpoint(Result<reqwest::Url, String>);

impl Endpoint {
    /// `base_url` with `path` appended (one `/` between them).
    pub fn new(base_url: &str, path: &str) -> Self {
        let url = format!("{}{path}", base_url.trim_end_matches('/'));
        // The settings check base URLs at start-up; one that does not parse still reaches
        // reqwest as text, which then fails each request with its own reason.
        Self(reqwest::Url::parse(&url).map_err(|_| url))
    }

    /// A POST to the endpoint with this thread's client.
    pub fn post(&self, clients: &Clients) -> reqwest::RequestBuilder {
        let client = clients.get();
        match &self.0 {
            Ok(url) => client.post(url.clone()),
            Err(raw) => client.post(raw.as_str()),
        }
    }
}

fn build_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        // Nagle's algorithm would hold the request's last segment for the ACK of the
        // previous one, adding ~40 ms to every turn.
        .tcp_nodelay(true)
        .connect_timeout(CONNECT_TIMEOUT)
        .pool_idle_timeout(Duration::from_secs(90))
        // A redirect is an error, never followed: reqwest would send the request's body
        // (the conversation) to wherever it points, and with it every header it does not
        // know to be secret, Anthropic's `x-api-key` among them.
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

/// An upstream's answer as it began: its status, its headers and its body to come.
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    body: Body,
}

enum Body {
    /// Read through reqwest: its connection task reads the socket.
    Reqwest(BoxStream<'static, reqwest::Result<Bytes>>),
    /// Read by the task that polls it (see [`direct`]).
    Direct(DirectBody),
}

impl Body {
    /// The next read of the body, lent to `read` (a direct body's where it lies in the
    /// connection's buffer); its error described with its causes. `None` after the end.
    fn poll_read_with(&mut self, cx: &mut Context<'_>, read: impl FnOnce(&[u8])) -> Poll<Option<Result<(), String>>> {
        match self {
            Body::Reqwest(body) => body
                .as_mut()
                .poll_next(cx)
                .map(|r| r.map(|bytes| bytes.map(|bytes| read(&bytes)).map_err(|e| describe(&e)))),
            Body::Direct(body) => body
                .poll_read_with(cx, read)
                .map(|r| r.map(|made| made.map_err(|e| describe(&e)))),
        }
    }

    /// The answer is whole: what is left of the body is its framing (see
    /// [`DirectBody::answered`]; reqwest's connections are reqwest's).
    fn answered(&mut self) {
        if let Body::Direct(body) = self {
            body.answered();
        }
    }
}

/// Sends `request`: to a plain-HTTP upstream on a connection driven by the task that reads
/// the answer ([`direct`]), to any other (HTTPS, or through a proxy the environment sets)
/// with this thread's reqwest client. An error is the upstream's being unreachable.
pub async fn send(clients: &Clients, request: reqwest::RequestBuilder) -> Result<Response, UpstreamError> {
    let unreachable = |e: reqwest::Error| UpstreamError::Unreachable(describe(&e));
    let request = request.build().map_err(unreachable)?;
    let body = request.body().and_then(reqwest::Body::as_bytes);
    if let Some(body) = body.filter(|_| request.url().scheme() == "http" && !proxied()) {
        let url = request.url();
        let response = direct::post(url, request.headers(), body, CONNECT_TIMEOUT)
            .await
            // Worded as reqwest words its own.
            .map_err(|e| {
                UpstreamError::Unreachable(format!("error sending request for url ({url}): {}", describe(&*e)))
            })?;
        return Ok(Response {
            status: response.status,
            headers: response.headers,
            body: Body::Direct(response.body),
        });
    }
    let response = clients.get().execute(request).await.map_err(unreachable)?;
    Ok(Response {
        status: response.status(),
        headers: response.headers().clone(),
        body: Body::Reqwest(response.bytes_stream().boxed()),
    })
}

/// Whether the environment sets a proxy for plain-HTTP requests, which reqwest then takes
/// (and honours `NO_PROXY` for): looked at once.
fn proxied() -> bool {
    static PROXIED: OnceLock<bool> = OnceLock::new();
    *PROXIED.get_or_init(|| {
        ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
            .iter()
            .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()))
    })
}

/// The error and its causes on one line: reqwest's own message alone rarely says why.
pub fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = cause.source();
    }
    text
}

/// What a response that is not a success says, before any upstream reads it its own way.
pub struct ErrorResponse {
    pub status: StatusCode,
    pub retry_after: Option<String>,
    /// The start of the body, at most [`ERROR_BODY_LIMIT`] bytes and a read.
    pub body: Vec<u8>,
}

impl ErrorResponse {
    pub async fn read(mut response: Response) -> Self {
        let status = response.status;
        let retry_after = response
            .headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut body = Vec::new();
        while body.len() < ERROR_BODY_LIMIT {
            let read = poll_fn(|cx| response.body.poll_read_with(cx, |bytes| body.extend_from_slice(bytes)));
            if !matches!(read.await, Some(Ok(()))) {
                break;
            }
        }
        Self {
            status,
            retry_after,
            body,
        }
    }

    /// The upstream's message, or the status's reason when it gave none.
    pub fn message_or_reason(&self, message: Option<String>) -> String {
        if self.status.is_redirection() {
            // Where it points is not passed on: it is the upstream's text, unchecked.
            return "the upstream answered with a redirect, which chatgate does not follow: set its \
                    base URL to the address it redirects to"
                .to_owned();
        }
        match message {
            Some(m) if !m.is_empty() => m,
            _ => self.status.canonical_reason().unwrap_or("no reason given").to_owned(),
        }
    }
}

/// Reads an upstream's streamed answer from its bytes, read by read, with no network in
/// it (so that it can be fuzzed). Every read yields at least one item: keep-alive bytes
/// count as life.
pub trait AnswerDecoder: Send + Unpin + 'static {
    fn read(&mut self, bytes: &[u8], out: &mut Vec<Item>);
    /// The body ended.
    fn end(&mut self, out: &mut Vec<Item>);
    /// The answer is over: the body need not be read further.
    fn is_over(&self) -> bool;
}

/// What a provider sent for (its answer, read by `decoder`, or why there is none) through
/// the hygiene gate. The answer is decoded and gated in one pass over each read of its body.
pub fn gated(
    hygiene: &Arc<Hygiene>,
    sent: Result<(Response, impl AnswerDecoder), UpstreamError>,
) -> Result<ChunkStream, UpstreamError> {
    match sent {
        Ok((response, decoder)) => Ok(answer_stream(response, decoder, AnswerGate::new(Arc::clone(hygiene)))),
        Err(e) => Err(hygiene.error(e)),
    }
}

/// The response body as chunks, read by `decoder` and passed through `gate`: both in the
/// one task that reads the body, each chunk handed on once.
fn answer_stream(response: Response, decoder: impl AnswerDecoder, gate: AnswerGate) -> ChunkStream {
    Box::pin(Gated {
        body: response.body,
        decoder,
        gate,
        items: Vec::new(),
        ready: VecDeque::with_capacity(2),
        read_all: false,
        over: false,
    })
}

/// An answer's chunks as [`answer_stream`] makes them: written by hand rather than as an
/// `async` block, since every chunk of every answer passes here.
struct Gated<D> {
    body: Body,
    decoder: D,
    gate: AnswerGate,
    /// What the decoder made of the last read, before the gate.
    items: Vec<Item>,
    /// What passed the gate and is not yet handed on, in order.
    ready: VecDeque<Item>,
    /// The body has ended.
    read_all: bool,
    /// Nothing more comes: the answer ended (and the gate let go of what it held) or failed.
    over: bool,
}

impl<D: AnswerDecoder> Stream for Gated<D> {
    type Item = Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        let this = self.get_mut();
        loop {
            if let Some(item) = this.ready.pop_front() {
                return Poll::Ready(Some(item));
            }
            if this.over {
                return Poll::Ready(None);
            }
            if this.read_all || this.decoder.is_over() {
                // Over with no error (one would have ended the answer below): the decoder
                // read the answer's last event.
                if !this.read_all {
                    this.body.answered();
                }
                this.gate.end(&mut this.ready);
                this.over = true;
                continue;
            }
            let (decoder, items) = (&mut this.decoder, &mut this.items);
            match ready!(this.body.poll_read_with(cx, |bytes| decoder.read(bytes, items))) {
                Some(Ok(())) => {}
                Some(Err(e)) => this.items.push(Err(UpstreamError::Broken(e))),
                None => {
                    this.decoder.end(&mut this.items);
                    this.read_all = true;
                }
            }
            for item in this.items.drain(..) {
                // The first error ends the answer; what the decoder made after it is dropped.
                let failed = item.is_err();
                this.gate.item(item, &mut this.ready);
                if failed {
                    this.over = true;
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(endpoint: &Endpoint) -> Result<String, String> {
        let clients = Clients::new().unwrap();
        let request = endpoint.post(&clients).build().map_err(|e| describe(&e))?;
        Ok(request.url().to_string())
    }

    #[test]
    fn each_thread_makes_its_client_once() {
        let clients = std::sync::Arc::new(Clients::new().unwrap());
        let threads = |c: &Clients| c.clients.lock().unwrap().len();
        clients.get();
        clients.get();
        assert_eq!(threads(&clients), 1);
        let other = std::sync::Arc::clone(&clients);
        std::thread::spawn(move || other.get()).join().unwrap();
        assert_eq!(threads(&clients), 2);
    }

    #[test]
    fn an_endpoint_is_its_base_url_and_path_with_one_slash_between() {
        let endpoint = Endpoint::new("http://127.0.0.1:9/v1/", "/chat/completions");
        assert_eq!(target(&endpoint).unwrap(), "http://127.0.0.1:9/v1/chat/completions");
        let endpoint = Endpoint::new("https://api.anthropic.com", "/v1/messages");
        assert_eq!(target(&endpoint).unwrap(), "https://api.anthropic.com/v1/messages");
    }

    #[test]
    fn an_endpoint_that_does_not_parse_fails_each_request_with_a_reason() {
        let endpoint = Endpoint::new("http://[::1", "/chat/completions");
        let error = target(&endpoint).unwrap_err();
        assert!(error.contains("builder error"), "{error}");
    }
}
