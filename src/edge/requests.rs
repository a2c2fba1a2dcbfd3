//! Requests counted by route and status, for `GET /metrics`.

use crate::state::AppState;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{Error, web};

/// Counts every request once its response head is ready (a stream counts when it starts).
/// The route is the pattern a request matched (`/conv/{id}/stream`), never its path: ids
/// would add a series per conversation, and a query (`?api_key=…`) must never reach a label.
pub async fn count<B: MessageBody>(req: ServiceRequest, next: Next<B>) -> Result<ServiceResponse<B>, Error> {
    let counter = req
        .app_data::<web::Data<AppState>>()
        .map(|state| state.metrics.requests.clone());
    let route = req.match_pattern();
    let method = method_label(req.method());
    let result = next.call(req).await;
    if let Some(counter) = counter {
        let status = match &result {
            Ok(response) => response.status(),
            Err(error) => error.as_response_error().status_code(),
        };
        let route = match route.as_deref() {
            // The files service of the page is mounted at the root, as a prefix.
            Some("") => "page",
            Some(pattern) => pattern,
            None => "unmatched",
        };
        counter.with_label_values(&[route, method, status.as_str()]).inc();
    }
    result
}

/// The method, or `other` for one no route serves: a client may send any token there.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}
