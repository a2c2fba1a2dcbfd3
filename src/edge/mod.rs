//! The edge: what every request passes before a route sees it, and what every response
//! carries on its way out.
//!
//! All of it in one middleware, [`pass`]:
//!
//! - admitting: the `Host` allowlist and the cross-site check. A page on `evil.example`
//!   whose name its owner re-points at 127.0.0.1 (DNS rebinding) is same-origin with the
//!   gateway for the browser: only the `Host` it sends tells the two apart. And a foreign
//!   page can send a `POST` that CORS never asked about (see [`origin::check`]).
//! - admitting also names the client ([`auth::Client`]): with client keys, by its key
//!   (401 without a valid one, except for the page and `/healthz`); without, by its peer
//!   address. Routes take it as an extractor.
//! - finishing: the security headers on every response, and the JSON error body on the
//!   errors the framework answers by itself.
//! - counting: every request counted by route and status, for `GET /metrics`
//!   ([`requests`]).

pub mod auth;
pub mod origin;
pub mod refusals;
pub mod requests;

use crate::config::Settings;
use crate::error::{ApiError, RequestError};
use crate::routes::web::is_page_file;
use crate::state::AppState;
use actix_web::body::{EitherBody, MessageBody, to_bytes_limited};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::http::{ConnectionType, Method, StatusCode, Version};
use actix_web::middleware::Next;
use actix_web::{Error, FromRequest, HttpMessage, HttpRequest, HttpResponse, ResponseError, web};
use auth::Client;
use std::future::{Ready, ready};

/// The one middleware every request passes, in this order on its way in: counted (last,
/// with the status it finally got), finished (security headers and the JSON error body on
/// whatever comes back, refusals included), admitted (host, cross-site check, client).
/// One layer rather than three: each layer costs a boxed future and an indirect call per
/// request, which shows in a request's time when it comes to cold caches.
pub async fn pass<B: MessageBody + 'static>(
    req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<EitherBody<B>>, Error> {
    let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
        let error = ApiError::Internal("the application state is missing");
        return finish(Ok(req.into_response(error.error_response()).map_into_right_body())).await;
    };
    let method = requests::method_label(req.method());
    let admitted = check(req.request(), &state.settings)
        .map_err(ApiError::from)
        .and_then(|()| authenticate(req.request(), &state));
    let result = match admitted {
        Ok(client) => {
            req.extensions_mut().insert(client);
            next.call(req).await.map(ServiceResponse::map_into_left_body)
        }
        Err(error) => Ok(req.into_response(error.error_response()).map_into_right_body()),
    };
    let result = finish(result).await;
    requests::count(&state.metrics.requests, method, &result);
    result
}

/// Who is asking. Without keys, its peer address (not `X-Forwarded-For`: any client can
/// write that); with keys, the name of the key it presents, or 401.
fn authenticate(req: &HttpRequest, state: &AppState) -> Result<Client, ApiError> {
    let anonymous = Client::Address(req.peer_addr().map(|a| a.ip()));
    let Some(keyring) = &state.keys else {
        return Ok(anonymous);
    };
    if is_public(req, &state.settings) {
        return Ok(anonymous);
    }
    let keys = keyring.current();
    presented_key(req)
        .and_then(|key| keys.name_of(&key).map(|name| Client::Key(name.to_owned())))
        .ok_or(ApiError::Unauthorized)
}

/// What anyone may fetch: the page and its files, `/healthz`, and CORS preflights (a
/// browser sends them without credentials; the real request that follows needs its key).
fn is_public(req: &HttpRequest, settings: &Settings) -> bool {
    let reading = matches!(*req.method(), Method::GET | Method::HEAD);
    let path = req.path();
    let preflight =
        req.method() == Method::OPTIONS && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    preflight || (reading && (path == "/" || path == "/healthz" || is_page_file(&settings.web_dir, path)))
}

/// `Authorization: Bearer KEY`; on a stream GET also `?api_key=KEY` (EventSource cannot
/// set headers). The query is never logged: no log line here prints a request's target.
fn presented_key(req: &HttpRequest) -> Option<String> {
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key.trim().to_owned());
    bearer.or_else(|| {
        let segments: Vec<&str> = req.path().split('/').collect();
        let stream = req.method() == Method::GET && matches!(segments[..], ["", "conv", _, "stream"]);
        if !stream {
            return None;
        }
        web::Query::<std::collections::HashMap<String, String>>::from_query(req.query_string())
            .ok()?
            .into_inner()
            .remove("api_key")
    })
}

/// Routes take the client [`admit`] named as an argument.
impl FromRequest for Client {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        ready(
            req.extensions()
                .get::<Client>()
                .cloned()
                .ok_or(ApiError::Internal("the request's client was not named")),
        )
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

/// The page's policy: no inline script, nothing from elsewhere (an answer's markdown cannot
/// load a tracking image), no framing. Vue's style bindings write through the CSSOM, which
/// `style-src` does not govern, so inline styles need no `'unsafe-inline'`.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// Every response leaves with the security headers; every error with the JSON body.
///
/// The policy goes on every response, not only the page's: it costs nothing on JSON and
/// event streams, and then no document the gateway serves (the page, its SVG icon, an
/// error opened in a tab) can run inline script or be framed.
async fn finish<B: MessageBody + 'static>(
    result: Result<ServiceResponse<EitherBody<B>>, Error>,
) -> Result<ServiceResponse<EitherBody<B>>, Error> {
    match result {
        Ok(response) => {
            let mut response = match is_plain_error(response.status(), response.headers()) {
                false => response,
                true => as_json(response).await.map_into_right_body(),
            };
            add_security_headers(response.headers_mut());
            Ok(response)
        }
        // Only turned into a response further out, where the request is gone: no path to
        // name, no body to read (rare: routes and middleware here answer their errors).
        Err(mut error) => {
            error.add_response_mapper(|response| {
                let mut response = match is_plain_error(response.status(), response.headers()) {
                    false => response,
                    true => json_like(
                        ApiError::Http {
                            status: response.status(),
                            message: reason(response.status()).to_owned(),
                        },
                        &response,
                    ),
                };
                add_security_headers(response.headers_mut());
                response
            });
            Err(error)
        }
    }
}

/// The headers every response carries.
const SECURITY_HEADERS: [(HeaderName, &str); 4] = [
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "no-referrer"),
    (header::X_FRAME_OPTIONS, "DENY"),
    (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
];

fn add_security_headers(headers: &mut HeaderMap) {
    for (name, value) in SECURITY_HEADERS {
        headers.insert(name, HeaderValue::from_static(value));
    }
}

/// An error status without the JSON body: one the framework answered by itself (a method
/// a resource has no route for, a path that does not decode, a refused CORS preflight).
fn is_plain_error(status: StatusCode, headers: &HeaderMap) -> bool {
    let json = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    status.as_u16() >= 400 && !json
}

/// The framework's error as the JSON error body; its text, if short, becomes the message.
async fn as_json<B: MessageBody>(response: ServiceResponse<B>) -> ServiceResponse {
    let (request, response) = response.into_parts();
    let status = response.status();
    let (plain, body) = response.into_parts();
    let text = match to_bytes_limited(body, 1024).await {
        Ok(Ok(bytes)) => String::from_utf8(bytes.to_vec()).unwrap_or_default(),
        _ => String::new(),
    };
    let path = request.path().to_owned();
    let error = match status {
        StatusCode::NOT_FOUND => RequestError::NoRoute(path).into(),
        StatusCode::METHOD_NOT_ALLOWED => RequestError::MethodNotAllowed {
            method: request.method().to_string(),
            path,
        }
        .into(),
        _ => ApiError::Http {
            status,
            message: match text.trim() {
                "" => reason(status).to_owned(),
                text => text.to_owned(),
            },
        },
    };
    let json = json_like(error, &plain);
    ServiceResponse::new(request, json)
}

/// `error`'s JSON response, keeping what `plain` said besides its body: `Allow`, `Vary`,
/// CORS headers, and whether the connection closes.
fn json_like<B>(error: ApiError, plain: &HttpResponse<B>) -> HttpResponse {
    let mut json = error.error_response();
    for (name, value) in plain.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            json.headers_mut().append(name.clone(), value.clone());
        }
    }
    if plain.head().connection_type() == ConnectionType::Close {
        json.head_mut().set_connection_type(ConnectionType::Close);
    }
    json
}

fn reason(status: StatusCode) -> &'static str {
    status.canonical_reason().unwrap_or("error")
}
