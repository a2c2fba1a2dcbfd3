//! The mock's HTTP server, its recorded requests and its stream counters.

use crate::answer::{self, Script};
use crate::anthropic;
use actix_web::dev::ServerHandle;
use actix_web::http::StatusCode;
use actix_web::{App, HttpResponse, HttpServer, web};
use serde::Serialize;
use serde_json::Value;
use std::collections::VecDeque;
use std::net::TcpListener;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// How the streams the mock served have ended so far.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Stats {
    /// Chat requests received.
    pub requests: u64,
    /// Streams that sent their last byte.
    pub completed: u64,
    /// Streams whose client went away before the last byte.
    pub cancelled: u64,
    /// Streams still being sent.
    pub active: u64,
}

/// The headers of one `POST /v1/messages` that the Anthropic API reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnthropicHeaders {
    pub api_key: Option<String>,
    pub version: Option<String>,
}

#[derive(Default)]
struct State {
    scripts: VecDeque<Script>,
    requests: Vec<Value>,
    /// The `Authorization` header of each chat request (`None`: there was none).
    authorizations: Vec<Option<String>>,
    /// The `x-api-key` and `anthropic-version` headers of each Anthropic request.
    anthropic_headers: Vec<AnthropicHeaders>,
    stats: Stats,
}

#[derive(Clone, Default)]
struct Shared(Arc<Mutex<State>>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking handler must not take the mock down for the other tests' requests.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A running mock upstream. Dropping it stops the server.
pub struct MockLlm {
    shared: Shared,
    port: u16,
    handle: ServerHandle,
}

impl MockLlm {
    /// Starts the mock on `addr` (`127.0.0.1:0` for a free port) in the current runtime.
    pub fn start(addr: &str) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        let port = listener.local_addr()?.port();
        let shared = Shared::default();
        let data = web::Data::new(shared.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::JsonConfig::default().limit(64 << 20))
                .route("/v1/chat/completions", web::post().to(chat))
                .route("/chat/completions", web::post().to(chat))
                .route("/v1/messages", web::post().to(messages))
                .route("/_mock/requests", web::get().to(requests))
                .route("/_mock/stats", web::get().to(stats))
                .route("/_mock/reset", web::post().to(reset))
                .route("/_mock/script", web::post().to(script))
        })
        .workers(2)
        .h1_allow_half_closed(false)
        .disable_signals()
        .listen(listener)?
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Ok(Self { shared, port, handle })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The OpenAI-style base URL (`…/v1`) to give the gateway.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    /// The Anthropic-style base URL (no `/v1`) to give the gateway.
    pub fn anthropic_base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Answers the next chat request (OpenAI's or Anthropic's) with `script` instead of the
    /// default behaviour.
    pub fn enqueue(&self, script: Script) {
        self.shared.lock().scripts.push_back(script);
    }

    /// Every chat request body received (OpenAI's and Anthropic's), oldest first.
    pub fn requests(&self) -> Vec<Value> {
        self.shared.lock().requests.clone()
    }

    /// The `Authorization` header of every chat request, oldest first.
    pub fn authorizations(&self) -> Vec<Option<String>> {
        self.shared.lock().authorizations.clone()
    }

    /// The `x-api-key` and `anthropic-version` headers of every Anthropic request, oldest first.
    pub fn anthropic_headers(&self) -> Vec<AnthropicHeaders> {
        self.shared.lock().anthropic_headers.clone()
    }

    pub fn stats(&self) -> Stats {
        self.shared.lock().stats
    }

    /// Waits up to `within` for `check` to hold on the stats; returns the last stats seen.
    pub async fn wait_for_stats(&self, within: Duration, check: impl Fn(&Stats) -> bool) -> Stats {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let stats = self.stats();
            if check(&stats) || tokio::time::Instant::now() >= deadline {
                return stats;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the server and waits for it to finish.
    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}

async fn chat(shared: web::Data<Shared>, http: actix_web::HttpRequest, body: web::Json<Value>) -> HttpResponse {
    let request = body.into_inner();
    let authorization = http
        .headers()
        .get("authorization")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let (script, n) = {
        let mut state = shared.lock();
        state.stats.requests += 1;
        state.requests.push(request.clone());
        state.authorizations.push(authorization);
        let n = state.stats.requests;
        (state.scripts.pop_front(), n)
    };
    let script = script.unwrap_or_else(|| answer::plan(&request, n));
    respond(script, shared.get_ref().clone())
}

/// `POST /v1/messages`: refused as the real API would refuse it, else scripted or planned.
async fn messages(shared: web::Data<Shared>, http: actix_web::HttpRequest, body: web::Json<Value>) -> HttpResponse {
    let request = body.into_inner();
    let header = |name: &str| {
        http.headers()
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let headers = AnthropicHeaders {
        api_key: header("x-api-key"),
        version: header("anthropic-version"),
    };
    let refusal = anthropic::refusal(headers.api_key.as_deref(), headers.version.as_deref(), &request);
    let (script, n) = {
        let mut state = shared.lock();
        state.stats.requests += 1;
        state.requests.push(request.clone());
        state.anthropic_headers.push(headers);
        let n = state.stats.requests;
        // A request the API would refuse leaves a queued script for the next one.
        match refusal {
            Some(refusal) => (Some(refusal), n),
            None => (state.scripts.pop_front(), n),
        }
    };
    let script = script.unwrap_or_else(|| anthropic::plan(&request, n));
    respond(script, shared.get_ref().clone())
}

fn respond(script: Script, shared: Shared) -> HttpResponse {
    let status = StatusCode::from_u16(script.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = HttpResponse::build(status);
    for (name, value) in &script.headers {
        response.insert_header((name.as_str(), value.as_str()));
    }
    shared.lock().stats.active += 1;
    let guard = StreamGuard {
        shared,
        finished: false,
    };
    let body = async_stream::stream! {
        let mut guard = guard;
        for part in script.parts {
            if part.delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(part.delay_ms)).await;
            }
            yield Ok::<_, std::convert::Infallible>(part.bytes);
        }
        if let Some(part) = script.repeat {
            loop {
                if part.delay_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(part.delay_ms)).await;
                }
                yield Ok(part.bytes.clone());
            }
        }
        if script.stall {
            std::future::pending::<()>().await;
        }
        guard.finished = true;
    };
    response.streaming(body)
}

/// Counts a stream as completed or cancelled when actix drops its body.
struct StreamGuard {
    shared: Shared,
    finished: bool,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.stats.active -= 1;
        if self.finished {
            state.stats.completed += 1;
        } else {
            state.stats.cancelled += 1;
        }
    }
}

async fn requests(shared: web::Data<Shared>) -> HttpResponse {
    HttpResponse::Ok().json(&shared.lock().requests)
}

async fn stats(shared: web::Data<Shared>) -> HttpResponse {
    HttpResponse::Ok().json(shared.lock().stats)
}

async fn reset(shared: web::Data<Shared>) -> HttpResponse {
    let mut state = shared.lock();
    let active = state.stats.active;
    *state = State::default();
    state.stats.active = active;
    HttpResponse::NoContent().finish()
}

async fn script(shared: web::Data<Shared>, body: web::Json<Script>) -> HttpResponse {
    shared.lock().scripts.push_back(body.into_inner());
    HttpResponse::NoContent().finish()
}
