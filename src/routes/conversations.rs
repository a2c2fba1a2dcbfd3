//! Reading and deleting stored conversations.

use super::conversation_id as parse_id;
use crate::edge::auth::Client;
use crate::error::{ApiError, RequestError};
use crate::state::AppState;
use crate::wire::chatgpt;
use actix_web::{HttpResponse, web};
use serde_json::json;

/// `GET /conversations`: newest first; with keys, only the client's own.
pub async fn list(state: web::Data<AppState>, client: Client) -> Result<HttpResponse, ApiError> {
    let items: Vec<_> = state
        .store
        .list(client.owner())
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

/// `DELETE /conv/{id}`.
pub async fn delete(
    state: web::Data<AppState>,
    path: web::Path<String>,
    client: Client,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    state.check_owner(id, &client).await?;
    if state.store.delete(id).await? {
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(RequestError::UnknownConversation(id).into())
    }
}
