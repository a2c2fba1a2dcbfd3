//! The edge: what every request passes before a route sees it.
//!
//! - [`admit`]: the `Host` allowlist and the cross-site check. A page on `evil.example`
//!   whose name its owner re-points at 127.0.0.1 (DNS rebinding) is same-origin with the
//!   gateway for the browser: only the `Host` it sends tells the two apart. And a foreign
//!   page can send a `POST` that CORS never asked about (see [`origin::check`]).

pub mod origin;

use crate::config::Settings;
use crate::error::{ApiError, RequestError};
use crate::state::AppState;
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::http::{Method, Version};
use actix_web::middleware::Next;
use actix_web::{Error, HttpRequest, ResponseError, web};

/// Refuses a request for a host this gateway does not serve (421), and a cross-site one
/// that would change something (403), before any route, store or upstream sees it.
pub async fn admit<B: MessageBody>(
    req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<EitherBody<B>>, Error> {
    let refusal = match req.app_data::<web::Data<AppState>>() {
        Some(state) => check(req.request(), &state.settings).err().map(ApiError::from),
        None => Some(ApiError::Internal("the application state is missing")),
    };
    match refusal {
        Some(error) => Ok(req.into_response(error.error_response()).map_into_right_body()),
        None => next.call(req).await.map(ServiceResponse::map_into_left_body),
    }
}

fn check(req: &HttpRequest, settings: &Settings) -> Result<(), RequestError> {
    let host = host(req, settings)?;
    if changes_state(req.method()) {
        origin::check(req.headers(), &settings.cors, host)?;
    }
    Ok(())
}

/// The request's host, once every name it gives is allowed: its `Host` header, and the
/// authority of an absolute-form target (`POST http://host/conv HTTP/1.1`).
///
/// HTTP/1.1 must name its host in one `Host` header (RFC 9112 §3.2: 400 otherwise; actix
/// already refuses such a request, with an empty body, before the app sees it). HTTP/1.0
/// without a `Host` is let through: no browser sends that, so it cannot be a rebinding.
fn host<'r>(req: &'r HttpRequest, settings: &Settings) -> Result<Option<&'r str>, RequestError> {
    let mut headers = req.headers().get_all(header::HOST);
    let header = headers.next();
    if headers.next().is_some() {
        return Err(RequestError::BadHost("more than one Host header"));
    }
    let header = header
        .map(|v| {
            v.to_str()
                .map_err(|_| RequestError::MisdirectedHost("(not text)".into()))
        })
        .transpose()?;
    let authority = req.uri().authority().map(|a| a.as_str());
    for name in [authority, header].into_iter().flatten() {
        if !settings.allowed_hosts.allows(name) {
            return Err(RequestError::MisdirectedHost(name.to_owned()));
        }
    }
    match header.or(authority) {
        None if req.version() >= Version::HTTP_11 => Err(RequestError::BadHost("no Host header")),
        host => Ok(host),
    }
}

/// Everything but reading: the methods a form or `fetch` can use to change something.
fn changes_state(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}
