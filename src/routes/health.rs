//! `GET /healthz`: 200 while the server is serving.

use actix_web::HttpResponse;

pub async fn get() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}
