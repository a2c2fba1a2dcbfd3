//! `GET /`: the bundled chat page, built from `web/` into the web directory.

use crate::error::{ApiError, RequestError};
use crate::state::AppState;
use actix_files::Files;
use actix_web::dev::{ServiceResponse, fn_service};
use actix_web::http::Method;
use actix_web::http::header::ALLOW;
use actix_web::web::ServiceConfig;
use actix_web::{HttpRequest, HttpResponse, ResponseError, guard, web};
use std::path::Path;

/// The page's files, or, when the page has not been built, a note saying how to build it.
pub fn configure(dir: &Path, cfg: &mut ServiceConfig) {
    if is_built(dir) {
        cfg.service(
            Files::new("/", dir)
                .index_file("index.html")
                // Other methods fall through to `fallback`: a `POST` to a path that is no
                // file is a 404 there, not the files service's plain-text 405.
                .guard(guard::Any(guard::Get()).or(guard::Head()))
                .default_handler(fn_service(|req: actix_web::dev::ServiceRequest| async {
                    let (req, _) = req.into_parts();
                    let response = not_found(&req);
                    Ok(ServiceResponse::new(req, response))
                })),
        );
    } else {
        // (start-up has said so once: this runs once per worker)
        cfg.route("/", web::get().to(unbuilt));
    }
}

pub fn is_built(dir: &Path) -> bool {
    dir.join("index.html").is_file()
}

/// What no route took: 404, or 405 for another method on one of the page's files.
pub async fn fallback(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let reading = matches!(*req.method(), Method::GET | Method::HEAD);
    if reading || !is_page_file(&state.settings.web_dir, req.path()) {
        return not_found(&req);
    }
    let mut response = ApiError::from(RequestError::MethodNotAllowed {
        method: req.method().to_string(),
        path: req.path().to_owned(),
    })
    .error_response();
    response
        .headers_mut()
        .insert(ALLOW, actix_web::http::header::HeaderValue::from_static("GET, HEAD"));
    response
}

/// Whether `path` names one of the page's files (`/` its index). Only plain names are
/// looked up: nothing that could leave the directory.
pub fn is_page_file(dir: &Path, path: &str) -> bool {
    let relative = path.trim_start_matches('/');
    if relative.is_empty() {
        return is_built(dir);
    }
    let plain = relative
        .split('/')
        .all(|part| !part.is_empty() && !part.starts_with('.') && !part.contains(['\\', '%']));
    plain && dir.join(relative).is_file()
}

pub fn not_found(req: &HttpRequest) -> HttpResponse {
    ApiError::from(RequestError::NoRoute(req.path().to_owned())).error_response()
}

async fn unbuilt() -> HttpResponse {
    ApiError::PageNotBuilt.error_response()
}
