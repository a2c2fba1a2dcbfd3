//! `GET /metrics`: Prometheus text. Behind the client keys like every other route.

use crate::error::ApiError;
use crate::metrics::CONTENT_TYPE;
use crate::state::AppState;
use actix_web::{HttpResponse, web};

pub async fn get(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let live = state.generations.live() + state.relays.live();
    let text = state.metrics.render(live).map_err(|e| {
        log::error!("the metrics could not be written: {e}");
        ApiError::Internal("the metrics could not be written")
    })?;
    Ok(HttpResponse::Ok().content_type(CONTENT_TYPE).body(text))
}
