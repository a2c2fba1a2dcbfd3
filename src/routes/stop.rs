//! `POST /conv/{id}/stop`: end a live answer now. Every reader gets its last frame
//! (`finished_partial_completion`, interrupted), the upstream request is cancelled, and the
//! partial text is stored before this answers.

use super::conv::{BodyLimits, read_body};
use super::conversation_id;
use crate::conversation::MessageId;
use crate::edge::auth::Client;
use crate::error::{ApiError, RequestError, parse_object};
use crate::generation::Target;
use crate::state::AppState;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

/// The optional body.
#[derive(Deserialize, Default)]
struct Wire {
    #[serde(default)]
    message_id: Option<String>,
}

/// A stop request names a conversation and at most one message: a small body.
const MAX_BODY: usize = 4096;

pub async fn post(
    state: web::Data<AppState>,
    path: web::Path<String>,
    request: HttpRequest,
    payload: web::Payload,
    client: Client,
) -> Result<HttpResponse, ApiError> {
    let conversation = conversation_id(&path)?;
    state.check_owner(conversation, &client).await?;
    let limits = BodyLimits {
        bytes: MAX_BODY,
        within: state.settings.request_timeout,
    };
    let body = read_body(&request, payload, limits).await?;
    let wire: Wire = if body.iter().all(u8::is_ascii_whitespace) {
        Wire::default()
    } else {
        parse_object(&body)?
    };
    let message = wire
        .message_id
        .filter(|m| !m.trim().is_empty())
        .map(|raw| {
            MessageId::parse(&raw).map_err(|_| {
                RequestError::invalid_field("message_id", format!("message_id must be a UUID, got {raw:?}"))
            })
        })
        .transpose()?;
    let stopped = state.generations.stop(Target { conversation, message }).await;
    if !stopped && state.conversation(conversation).await?.is_none() {
        return Err(RequestError::UnknownConversation(conversation).into());
    }
    Ok(HttpResponse::Ok().json(json!({ "stopped": stopped })))
}
