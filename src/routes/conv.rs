//! `POST /conv`: one conversation turn. The answer becomes a generation that runs in the
//! gateway; this request is its first reader (or, with `"background": true`, none).

use crate::edge::auth::Client;
use crate::error::{ApiError, RequestError};
use crate::generation::runner::{self, Run, Timing};
use crate::generation::{ReadFrom, Reader, ReaderItem, Target};
use crate::state::AppState;
use crate::turn::{self, TurnRequest};
use crate::upstream::metered::Tally;
use crate::wire::sse;
use actix_web::http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, ContentType, HeaderName, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use serde_json::json;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

pub async fn post(
    state: web::Data<AppState>,
    request: HttpRequest,
    payload: web::Payload,
    client: Client,
) -> Result<HttpResponse, ApiError> {
    let body = read_turn(&state, &request, payload).await?;
    let turn_request = TurnRequest::parse(&body)?;
    let read = ReadFrom {
        after: None,
        delta: turn_request.delta,
        refuse_early: true,
        final_only: !turn_request.stream,
    };
    let background = turn_request.background;
    let never_alone = background && !turn_request.cancel_unread;
    let turn = turn::prepare(&state, turn_request, &client).await?;

    let slot = state.admit_turn(&client).await?;

    // Wait for the first token (at most a heartbeat interval) before answering, so that
    // the router can retry and fail over unseen, and a refusal reaches the client as a
    // real HTTP status with the upstream's own message. A background turn waits only for
    // an upstream to accept it: its 202 names the answer before the first word, so that
    // the page can stop an answer that is slow to begin.
    let (heartbeat, idle) = (state.settings.heartbeat, state.settings.upstream_idle_timeout);
    let first_token_wait = if background { Duration::ZERO } else { heartbeat };
    let asked = Instant::now();
    let opened = state.router.open(turn.upstream, first_token_wait, idle).await?;
    // The client has waited since it asked: its first heartbeat is due a heartbeat
    // interval after that, not after the answer starts.
    let timing = Timing {
        first_heartbeat: heartbeat.saturating_sub(asked.elapsed()),
        ..state.timing()
    };
    // The answer names the upstream model that gives it, in frames and in the store.
    let mut identity = turn.identity;
    identity.model = opened.model.clone();
    let mut new_turn = turn.new_turn;
    new_turn.assistant.model = Some(opened.model);
    let (stream, upstream) = (opened.stream, opened.upstream);

    let owner = client.owner().map(str::to_owned);
    let producer = state.generations.start(identity.clone(), owner, never_alone).await;
    // Subscribed before the runner starts, so that this reader sees the answer from its
    // first chunk and an early failure as a refusal.
    let target = Target {
        conversation: identity.conversation_id,
        message: Some(identity.message_id),
    };
    let reader = match background {
        true => None,
        false => state.generations.subscribe(target, read).await,
    };
    runner::spawn(Run {
        identity: identity.clone(),
        stream,
        turn: new_turn,
        producer,
        store: state.store.clone(),
        unsaved: state.unsaved.clone(),
        timing,
        limits: state.limits(),
        slot,
        tally: Tally::new(Arc::clone(&state.metrics.upstream), upstream),
    });
    let Some(mut reader) = reader else {
        return Ok(HttpResponse::Accepted().json(json!({
            "conversation_id": identity.conversation_id.to_string(),
            "message_id": identity.message_id.to_string(),
            "parent_message_id": identity.parent_id.to_string(),
            "stream_url": format!("/conv/{}/stream?message_id={}", identity.conversation_id, identity.message_id),
        })));
    };
    match reader.next().await {
        Some(ReaderItem::Bytes(first)) => Ok(event_stream(Some(first), reader)),
        Some(ReaderItem::Final(object)) => Ok(HttpResponse::Ok().content_type(ContentType::json()).body(object)),
        // The turn was stored (the upstream had accepted it): say where, so that a client
        // can retry from it.
        Some(ReaderItem::Refused(error)) => Ok(error.response_with(json!({
            "conversation_id": identity.conversation_id.to_string(),
            "message_id": identity.parent_id.to_string(),
        }))),
        None => Err(ApiError::Internal("the answer ended without a last frame")),
    }
}

/// The body of a request for a new answer (`/conv`, `/v1`), read within the body limits;
/// refused once the gateway is stopping.
pub async fn read_turn(state: &AppState, request: &HttpRequest, payload: web::Payload) -> Result<Bytes, ApiError> {
    let limits = BodyLimits {
        bytes: state.settings.max_body_bytes,
        within: state.settings.request_timeout,
    };
    let body = read_body(request, payload, limits).await?;
    if state.stopping.load(Ordering::SeqCst) {
        return Err(ApiError::Stopping);
    }
    Ok(body)
}

/// How much of a request body is read, and for how long.
pub struct BodyLimits {
    pub bytes: usize,
    /// From the request's head (the moment its handler runs) to the body's last byte.
    pub within: Duration,
}

/// Reads the whole body: the one body reader, so that every route with a body has both
/// limits. Refuses it as soon as it passes the size limit, and as soon as its time is up:
/// a client that trickles a body holds a connection and a task for as long as it likes
/// otherwise (the request's head has its own deadline, see `startup.rs`).
pub async fn read_body(
    request: &HttpRequest,
    payload: web::Payload,
    limits: BodyLimits,
) -> Result<Bytes, RequestError> {
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let limit = limits.bytes;
    if declared.is_some_and(|n| n > limit) {
        return Err(RequestError::TooLarge { limit });
    }
    let read = async move {
        let mut payload = payload;
        let mut body = BytesMut::with_capacity(declared.unwrap_or(1024).min(limit));
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| RequestError::Unreadable(e.to_string()))?;
            if body.len() + chunk.len() > limit {
                return Err(RequestError::TooLarge { limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    };
    tokio::time::timeout(limits.within, read)
        .await
        .map_err(|_| RequestError::Timeout(limits.within))?
}

/// The `text/event-stream` response: `retry: 1000`, then what the reader renders.
pub fn event_stream(first: Option<Bytes>, reader: Reader) -> HttpResponse {
    let head = match first {
        Some(first) => [sse::RETRY, &first].concat().into(),
        None => Bytes::from_static(sse::RETRY),
    };
    sse_response(Frames {
        head: Some(head),
        reader,
    })
}

/// A reader's bytes after a head, with nothing but an `Option` to look at per frame.
struct Frames {
    head: Option<Bytes>,
    reader: Reader,
}

impl Stream for Frames {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(head) = self.head.take() {
            return Poll::Ready(Some(Ok(head)));
        }
        self.reader.as_mut().poll_next(cx).map(|item| {
            item.map(|item| match item {
                ReaderItem::Bytes(bytes) => Ok(bytes),
                // Refusals and final objects are only yielded to readers that asked for them.
                ReaderItem::Refused(_) | ReaderItem::Final(_) => Ok(Bytes::new()),
            })
        })
    }
}

/// An event stream's response. Its headers are made from constants: nothing is parsed or
/// copied while an answer's first token waits to be sent.
pub fn sse_response(body: impl Stream<Item = Result<Bytes, Infallible>> + 'static) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, HeaderValue::from_static("text/event-stream")))
        .insert_header((CACHE_CONTROL, HeaderValue::from_static("no-cache")))
        // nginx buffers proxied responses unless told not to.
        .insert_header((
            HeaderName::from_static("x-accel-buffering"),
            HeaderValue::from_static("no"),
        ))
        .streaming(body)
}
