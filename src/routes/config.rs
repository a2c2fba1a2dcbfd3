//! `GET /config`: what the chat page needs to know about this gateway (never the key).

use crate::state::AppState;
use actix_web::{HttpResponse, web};
use serde_json::json;

pub async fn get(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "provider": state.router.kind(),
        "demo": state.router.is_demo(),
        "default_model": state.settings.model,
        "max_body_bytes": state.settings.max_body_bytes,
    }))
}
