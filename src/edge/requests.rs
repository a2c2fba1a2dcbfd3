//! Requests counted by route and status, for `GET /metrics`.

use actix_web::dev::ServiceResponse;
use actix_web::http::Method;
use actix_web::{Error, HttpRequest, Resource, web};
use prometheus::IntCounterVec;
use std::borrow::Cow;

/// A resource, with its path kept as the label its requests are counted under.
pub fn resource(path: &'static str) -> Resource {
    web::resource(path).app_data(Route(path))
}

/// The path a resource was made with (see [`resource`]).
struct Route(&'static str);

/// Counts a request once its response head is ready (a stream counts when it starts).
/// The route is the pattern a request matched (`/conv/{id}/stream`), never its path: ids
/// would add a series per conversation, and a query (`?api_key=…`) must never reach a label.
pub fn count<B>(counter: &IntCounterVec, method: &'static str, result: &Result<ServiceResponse<B>, Error>) {
    let (status, route) = match result {
        Ok(response) => (response.status(), route(response.request())),
        // No middleware or route here fails without a response (see `edge::pass`):
        // the request went with the error.
        Err(error) => (error.as_response_error().status_code(), Cow::Borrowed("unmatched")),
    };
    counter.with_label_values(&[&route, method, status.as_str()]).inc();
}

/// The label of the route `req` went to: its resource's path, read where routing left
/// it; for a request no resource took (refused before routing, a file of the page, no
/// route at all), the pattern the paths match, looked up again.
fn route(req: &HttpRequest) -> Cow<'static, str> {
    if let Some(Route(path)) = req.app_data::<Route>() {
        return Cow::Borrowed(path);
    }
    match req.match_pattern() {
        // The files service of the page is mounted at the root, as a prefix.
        Some(pattern) if pattern.is_empty() => Cow::Borrowed("page"),
        Some(pattern) => Cow::Owned(pattern),
        None => Cow::Borrowed("unmatched"),
    }
}

/// The method, or `other` for one no route serves: a client may send any token there.
pub fn method_label(method: &Method) -> &'static str {
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
