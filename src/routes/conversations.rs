//! Reading and deleting stored conversations.

use super::conversation_id as parse_id;
use crate::edge::auth::Client;
use crate::error::{ApiError, RequestError};
use crate::generation::Target;
use crate::state::AppState;
use crate::wire::chatgpt;
use actix_web::{HttpResponse, web};
use serde_json::json;

/// The most live answers a deletion stops.
const MAX_STOPPED: usize = 16;

/// `GET /conversations`: newest first; with keys, only the client's own.
pub async fn list(state: web::Data<AppState>, client: Client) -> Result<HttpResponse, ApiError> {
    let items: Vec<_> = state
        .conversations(client.owner())
        .await?
        .into_iter()
        .map(|c| json!({"conversation_id": c.id.to_string(), "title": c.title, "update_time": c.update_time}))
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "items": items })))
}

/// `GET /conv/{id}`: the whole tree, shaped like ChatGPT's history endpoint.
pub async fn get(
    state: web::Data<AppState>,
    path: web::Path<String>,
    client: Client,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    let conversation = state.owned_conversation(id, &client).await?;
    Ok(HttpResponse::Ok().json(chatgpt::conversation_json(&conversation)))
}

/// `DELETE /conv/{id}`; its live answers are stopped (nobody can see their text any more).
pub async fn delete(
    state: web::Data<AppState>,
    path: web::Path<String>,
    client: Client,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    // Read first, so that a conversation whose first turn is still being written is
    // deleted once it is stored, not brought back by that write.
    state.owned_conversation(id, &client).await?;
    if state.store.delete(id).await? {
        let newest = Target {
            conversation: id,
            message: None,
        };
        // One at a time, newest first; a stop that another request makes ends the loop.
        for _ in 0..MAX_STOPPED {
            if !state.generations.stop(newest).await {
                break;
            }
        }
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(RequestError::UnknownConversation(id).into())
    }
}
