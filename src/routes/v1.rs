//! `/v1`: OpenAI's Chat Completions API, so that any OpenAI SDK works with
//! `base_url = http://HOST:PORT/v1` and a client key as its API key.
//!
//! Stateless: nothing is stored and no generation is registered. The response relays the
//! upstream's answer itself, so a client that goes away drops the response, the relay and
//! with them the upstream stream: the upstream request is cancelled at once. Same keys,
//! limits, body limits and upstream hygiene as `POST /conv`. A shutdown waits for these
//! answers for its grace, then ends them in-band, as it ends generations (see `relays`).

mod relay;
mod request;

use super::conv::{read_turn, sse_response};
use crate::edge::auth::Client;
use crate::error::{ApiError, OpenAiError};
use crate::limits::StreamSlot;
use crate::relays::Relayed;
use crate::state::AppState;
use crate::upstream::metered::Tally;
use crate::upstream::{ChatRequest, Chunk, ChunkStream, UpstreamError};
use crate::wire::openai::{self, ChunkWriter, Completion, Gathered};
use crate::wire::sse;
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::Bytes;
use futures::Stream;
use relay::Relay;
use request::CompletionRequest;
use serde_json::Value;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    state: web::Data<AppState>,
    request: HttpRequest,
    payload: web::Payload,
    client: Client,
) -> Result<HttpResponse, OpenAiError> {
    let body = read_turn(&state, &request, payload).await?;
    let asked = CompletionRequest::parse(&body, &state.settings.model)?;

    // The slot moves into the response's stream, so it is held until the answer is sent.
    let slot = state.admit_turn(&client).await.map_err(OpenAiError)?;
    let mut relayed = state.relays.start();

    let opening = Instant::now();
    let (stream, model, upstream) = open(&state, asked.upstream).await?;
    let completion = Completion::new(&model);
    let idle = state.settings.upstream_idle_timeout;
    let tally = Tally::new(Arc::clone(&state.metrics.upstream), upstream);
    let mut relay = Relay::new(stream, idle, state.settings.max_answer_bytes, tally);

    if !asked.stream {
        let object = tokio::select! {
            object = gather(&mut relay, &completion) => object?,
            () = relayed.ended() => return Err(ApiError::Stopping.into()),
        };
        drop(slot);
        return Ok(HttpResponse::Ok().json(object));
    }

    // Wait for the first piece before answering, so that an upstream that fails before it
    // does so with a real HTTP status and OpenAI's error body. One that says nothing for a
    // heartbeat gets its stream opened, to keep the connection and proxies alive: one
    // heartbeat interval in all, counting what the router waited for a first token.
    let heartbeat = state.settings.heartbeat;
    let first = match tokio::time::timeout(heartbeat.saturating_sub(opening.elapsed()), relay.next()).await {
        Ok(Some(Err(error))) => return Err(error.into()),
        Ok(first) => Some(first),
        Err(_) => None,
    };
    let streamed = Streamed {
        relay,
        first,
        writer: ChunkWriter::new(completion, asked.include_usage),
        heartbeat,
        _slot: slot,
        relayed,
    };
    Ok(sse_response(streamed.events()))
}

/// Sends the request through the router, which retries and fails over until the first
/// token (for at most a heartbeat): the answer, and the upstream model name that answers
/// (which every chunk names).
async fn open(state: &AppState, request: ChatRequest) -> Result<(ChunkStream, String, Arc<str>), UpstreamError> {
    let (heartbeat, idle) = (state.settings.heartbeat, state.settings.upstream_idle_timeout);
    let opened = state.router.open(request, heartbeat, idle).await?;
    Ok((opened.stream, opened.model, opened.upstream))
}

/// The whole answer as one `chat.completion` object; any error is the response's.
async fn gather(relay: &mut Relay, completion: &Completion) -> Result<Value, OpenAiError> {
    let mut gathered = Gathered::default();
    while let Some(piece) = relay.next().await {
        gathered.add(piece?);
    }
    Ok(gathered.object(completion, relay.usage()))
}

/// A streamed answer, once its response has begun.
struct Streamed {
    relay: Relay,
    /// What came before the response began (`Some(None)`: the answer ended already).
    first: Option<Option<Piece>>,
    writer: ChunkWriter,
    /// The longest quiet before a `: keep-alive` comment.
    heartbeat: Duration,
    /// The client's live-answer slot, held (never read) until the stream ends or is
    /// dropped.
    _slot: Option<StreamSlot>,
    /// Counted as running, for a shutdown to wait for and end.
    relayed: Relayed,
}

type Piece = Result<Chunk, UpstreamError>;

impl Streamed {
    /// The events: the role, the answer's chunks, the usage when asked for and `[DONE]`; or,
    /// on an error (the gateway stopping too), an error event and the end.
    fn events(self) -> Events {
        let sent = Instant::now();
        Events {
            beat: Box::pin(tokio::time::sleep_until(sent + self.heartbeat)),
            sent,
            ready: VecDeque::with_capacity(2),
            at: At::Opening,
            streamed: Some(self),
        }
    }
}

/// Where the events are.
#[derive(PartialEq)]
enum At {
    /// The role's event comes first.
    Opening,
    Relaying,
    /// Nothing follows the events ready.
    Over,
}

/// The events of a streamed answer, as [`Streamed::events`] makes them: a stream written by
/// hand rather than as an `async` block, since every chunk of every answer passes here.
struct Events {
    /// What makes the events; dropped (the slot and the shutdown's count with it) once
    /// the last event has been handed on.
    streamed: Option<Streamed>,
    /// When an event was last handed on, and the heartbeat due after it: one timer for
    /// the whole answer, moved on only when it fires.
    sent: Instant,
    beat: Pin<Box<Sleep>>,
    /// Events made and not yet handed on, in order.
    ready: VecDeque<Bytes>,
    at: At,
}

impl Stream for Events {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(event) = this.ready.pop_front() {
                return Poll::Ready(Some(Ok(event)));
            }
            let Some(streamed) = this.streamed.as_mut().filter(|_| this.at != At::Over) else {
                this.streamed = None;
                return Poll::Ready(None);
            };
            if this.at == At::Opening {
                this.at = At::Relaying;
                return Poll::Ready(Some(Ok(streamed.writer.opening())));
            }
            let piece = match streamed.first.take() {
                Some(piece) => piece,
                None => {
                    if streamed.relayed.poll_ended(cx).is_ready() {
                        this.ready
                            .push_back(openai::error_event(&ApiError::Stopping.openai_body().object));
                        this.at = At::Over;
                        continue;
                    }
                    match streamed.relay.poll_next(cx) {
                        Poll::Ready(piece) => piece,
                        Poll::Pending => {
                            ready!(relay::poll_quiet(&mut this.beat, this.sent, streamed.heartbeat, cx));
                            this.sent = Instant::now();
                            this.beat.as_mut().reset(this.sent + streamed.heartbeat);
                            return Poll::Ready(Some(Ok(Bytes::from_static(sse::HEARTBEAT))));
                        }
                    }
                }
            };
            match piece {
                Some(Ok(chunk)) => {
                    // The clock was read as the piece came: it is handed on now.
                    this.sent = streamed.relay.heard();
                    streamed.writer.piece(&chunk, &mut this.ready);
                }
                Some(Err(error)) => {
                    this.ready
                        .push_back(openai::error_event(&ApiError::from(error).openai_body().object));
                    this.at = At::Over;
                }
                None => {
                    if let Some(usage) = streamed.writer.usage(streamed.relay.usage()) {
                        this.ready.push_back(usage);
                    }
                    this.ready.push_back(Bytes::from_static(openai::DONE));
                    this.at = At::Over;
                }
            }
        }
    }
}

/// `GET /v1/models`.
pub async fn models(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(openai::model_list(&state.model_names()))
}
