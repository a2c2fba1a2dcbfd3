//! Reading and deleting stored conversations.

use super::conversation_id as parse_id;
use crate::error::{ApiError, RequestError};
use crate::state::AppState;
use crate::wire::chatgpt;
use actix_web::{HttpResponse, web};
use serde_json::json;

/// `GET /conversations`: newest first.
pub async fn list(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let items: Vec<_> = state
        .store
        .list()
        .await?
        .into_iter()
        .map(|c| json!({"conversation_id": c.id.to_string(), "title": c.title, "update_time": c.update_time}))
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "items": items })))
}

/// `GET /conv/{id}`: the whole tree, shaped like ChatGPT's history endpoint.
pub async fn get(state: web::Data<AppState>, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    let conversation = state
        .conversation(id)
        .await?
        .ok_or(RequestError::UnknownConversation(id))?;
    Ok(HttpResponse::Ok().json(chatgpt::conversation_json(&conversation)))
}

/// `DELETE /conv/{id}`.
pub async fn delete(state: web::Data<AppState>, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    if state.store.delete(id).await? {
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(RequestError::UnknownConversation(id).into())
    }
}
