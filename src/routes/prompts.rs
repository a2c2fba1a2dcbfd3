//! `GET /prompts`: the presets a request can name in `prompt`.

use crate::state::AppState;
use actix_web::{HttpResponse, web};
use serde_json::json;

pub async fn list(state: web::Data<AppState>) -> HttpResponse {
    let items: Vec<_> = state
        .presets
        .all()
        .iter()
        .map(|p| json!({"name": p.name, "title": p.title}))
        .collect();
    HttpResponse::Ok().json(json!({ "items": items }))
}
