//! `GET /conv/{id}/stream`: follow a conversation's live answer, or resume it after a frame
//! id (`Last-Event-ID`, as EventSource sends it on reconnecting); an answer that has ended
//! is replayed from the store as its last frame.

use super::conv::{event_stream, sse_response};
use super::conversation_id;
use crate::conversation::{MessageId, Role};
use crate::edge::auth::Client;
use crate::error::{ApiError, RequestError};
use crate::generation::{ReadFrom, Target, replay};
use crate::state::AppState;
use actix_web::{HttpRequest, HttpResponse, web};
use futures::stream;
use serde::Deserialize;
use std::convert::Infallible;

/// The query as clients send it; other parameters are ignored.
#[derive(Deserialize)]
struct Query {
    message_id: Option<String>,
    last_event_id: Option<String>,
    delta: Option<String>,
}

pub async fn get(
    state: web::Data<AppState>,
    path: web::Path<String>,
    request: HttpRequest,
    client: Client,
) -> Result<HttpResponse, ApiError> {
    let conversation = conversation_id(&path)?;
    // Before anything about it is looked at: another key's conversation does not exist.
    state.check_owner(conversation, &client).await?;
    let query = web::Query::<Query>::from_query(request.query_string())
        .map_err(|e| RequestError::InvalidQuery(format!("the query string is not valid: {e}")))?
        .into_inner();
    let message = query
        .message_id
        .filter(|m| !m.is_empty())
        .map(|raw| {
            MessageId::parse(&raw)
                .map_err(|_| RequestError::NoRoute(format!("/conv/{conversation}/stream?message_id={raw}")))
        })
        .transpose()?;
    // The header is the newer of the two: EventSource sends it on every reconnect, to the
    // URL that may still carry the first resume point.
    let header = request
        .headers()
        .get("Last-Event-ID")
        .map(|v| v.to_str().map(str::to_owned).unwrap_or_else(|_| "?".into()));
    let after = match header.or(query.last_event_id).filter(|v| !v.trim().is_empty()) {
        Some(raw) => Some(
            raw.trim()
                .parse::<u64>()
                .map_err(|_| RequestError::BadResumePoint(raw))?,
        ),
        None => None,
    };
    let delta = match query.delta.as_deref() {
        None | Some("" | "false" | "0") => false,
        Some("true" | "1") => true,
        Some(other) => {
            return Err(RequestError::InvalidQuery(format!("delta must be true or false, got {other:?}")).into());
        }
    };

    let read = ReadFrom {
        after,
        delta,
        ..ReadFrom::default()
    };
    let target = Target { conversation, message };
    if let Some(reader) = state.generations.subscribe(target, read).await {
        return Ok(event_stream(None, reader));
    }
    let stored = state
        .conversation(conversation)
        .await?
        .ok_or(RequestError::UnknownConversation(conversation))?;
    let answer = match message {
        Some(id) => stored
            .message(id)
            .filter(|m| m.role == Role::Assistant)
            .ok_or(RequestError::UnknownMessage(id))?,
        None => stored
            .message(stored.current_node)
            .filter(|m| m.role == Role::Assistant)
            .ok_or(RequestError::NoAnswer(conversation))?,
    };
    let frames = replay::last_frame(conversation, answer, after, delta);
    Ok(sse_response(stream::iter(frames.into_iter().map(Ok::<_, Infallible>))))
}
