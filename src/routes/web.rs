//! `GET /`: the bundled chat page, built from `web/` into the web directory.

use crate::error::{ApiError, RequestError};
use actix_files::Files;
use actix_web::dev::{ServiceResponse, fn_service};
use actix_web::web::ServiceConfig;
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use std::path::Path;

/// The page's files, or, when the page has not been built, a note saying how to build it.
pub fn configure(dir: &Path, cfg: &mut ServiceConfig) {
    if is_built(dir) {
        cfg.service(
            Files::new("/", dir)
                .index_file("index.html")
                .default_handler(fn_service(|req: actix_web::dev::ServiceRequest| async {
                    let (req, _) = req.into_parts();
                    let response = not_found(&req);
                    Ok(ServiceResponse::new(req, response))
                })),
        );
    } else {
        log::warn!(
            "no chat page at {}/index.html: build it with `npm --prefix web ci && npm --prefix web run build`",
            dir.display()
        );
        cfg.route("/", actix_web::web::get().to(unbuilt));
    }
}

pub fn is_built(dir: &Path) -> bool {
    dir.join("index.html").is_file()
}

pub fn not_found(req: &HttpRequest) -> HttpResponse {
    ApiError::from(RequestError::NoRoute(req.path().to_owned())).error_response()
}

async fn unbuilt() -> HttpResponse {
    HttpResponse::ServiceUnavailable()
        .content_type("text/html; charset=utf-8")
        .body(
            "<!doctype html><meta charset=utf-8><title>chatgate</title>\
         <p>chatgate is running, but its chat page has not been built. \
         Run <code>npm --prefix web ci &amp;&amp; npm --prefix web run build</code> and reload.</p>",
        )
}
