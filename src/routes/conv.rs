//! `POST /conv`: one conversation turn, answered as a Server-Sent Events stream.

use crate::error::{ApiError, RequestError};
use crate::live::Body;
use crate::relay::{self, Verdict};
use crate::startup::AppState;
use crate::turn::{self, TurnRequest};
use crate::upstream::{Provider, UpstreamError};
use actix_web::http::header::{CACHE_CONTROL, CONTENT_LENGTH, ContentType};
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;

pub async fn post(
    state: web::Data<AppState>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&request, payload, state.settings.max_body_bytes).await?;
    let turn = turn::prepare(&state, TurnRequest::parse(&body)?).await?;

    // Wait for the upstream's status before answering, so that a refusal reaches the
    // client as a real HTTP status with the upstream's own message.
    let idle = state.settings.upstream_idle_timeout;
    let stream = tokio::time::timeout(idle, state.provider.stream_chat(turn.upstream))
        .await
        .map_err(|_| UpstreamError::IdleTimeout(idle))??;

    match relay::start(state.clone(), stream, turn.new_turn, turn.identity, turn.delta).await {
        Ok(Verdict::Stream(body)) => Ok(event_stream(body)),
        Ok(Verdict::Refuse(error)) => Err(error),
        Err(_) => Err(ApiError::Internal("the relay stopped before answering")),
    }
}

/// Reads the whole body, refusing it as soon as it passes `limit`.
async fn read_body(request: &HttpRequest, mut payload: web::Payload, limit: usize) -> Result<Bytes, RequestError> {
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(RequestError::TooLarge { limit });
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(1024).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| RequestError::Unreadable(e.to_string()))?;
        if body.len() + chunk.len() > limit {
            return Err(RequestError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

fn event_stream(body: Body) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(ContentType(actix_web::mime::TEXT_EVENT_STREAM))
        .insert_header((CACHE_CONTROL, "no-cache"))
        // nginx buffers proxied responses unless told not to.
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body.into_stream())
}
