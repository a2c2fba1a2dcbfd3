//! Every error a client can see: its HTTP status and its JSON body
//! `{"error":{"message","type","param","code"}}` (OpenAI's shape), decided in one place.

use crate::conversation::{ConversationId, MessageId, StoreError};
use crate::upstream::UpstreamError;
use actix_web::http::header::RETRY_AFTER;
use actix_web::http::{ConnectionType, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde::de::value::MapAccessDeserializer;
use serde::de::{DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};
use std::marker::PhantomData;

/// A request the gateway will not carry out as sent.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("the request body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("the request body could not be read: {0}")]
    Unreadable(String),
    #[error("the request body is larger than the limit of {limit} bytes")]
    TooLarge { limit: usize },
    /// A field of the wrong type or value: `param` names where in the body (`content`,
    /// `messages.[0].role`), when the problem is inside it.
    #[error("{message}")]
    InvalidField { param: Option<String>, message: String },
    /// A request parameter OpenAI's API would refuse, named as OpenAI names it (`/v1`).
    #[error("{message}")]
    InvalidParam {
        param: String,
        code: &'static str,
        message: String,
    },
    #[error("there is no prompt preset named {0:?}; GET /prompts lists them")]
    UnknownPrompt(String),
    #[error("conversation {0} does not exist")]
    UnknownConversation(ConversationId),
    #[error("message {0} is not part of this conversation")]
    UnknownMessage(MessageId),
    #[error("there is nothing at {0}")]
    NoRoute(String),
    #[error("conversation {0} has no answer to stream")]
    NoAnswer(ConversationId),
    #[error("{0}")]
    InvalidQuery(String),
    #[error("the resume point must be a frame id (a whole number from 0), got {0:?}")]
    BadResumePoint(String),
    #[error("{method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error("the request was not received within {} s", .0.as_secs_f64())]
    Timeout(std::time::Duration),
    #[error("this gateway does not serve the host {0:?}")]
    MisdirectedHost(String),
    #[error("an HTTP/1.1 request names its host in exactly one Host header ({0})")]
    BadHost(&'static str),
    #[error("cross-site requests may not change anything here (origin {0})")]
    CrossSite(String),
}

impl RequestError {
    /// `param` is not what it must be: `message` says why.
    pub fn invalid_field(param: &str, message: String) -> Self {
        RequestError::InvalidField {
            param: Some(param.to_owned()),
            message,
        }
    }

    /// Why a body did not parse as the type wanted: `MalformedJson` (400) when it is not
    /// well-formed JSON at all, `InvalidField` (422) when it is JSON of the wrong shape.
    ///
    /// serde_json reports the first problem it meets, so a typed parse can call a body's
    /// wrong shape before reaching where it stops being JSON (`[[[[…` is "a sequence, expected
    /// a string" at its second byte): only a full untyped parse tells the two apart. That
    /// parse skips values without recursing, so no nesting depth makes it fail on valid JSON.
    /// A wrong shape is then parsed once more, tracking the path, to name the field at
    /// fault: the price of a refused request only.
    fn from_json<T: DeserializeOwned>(error: serde_json::Error, body: &[u8]) -> Self {
        let data = error.classify() == serde_json::error::Category::Data;
        match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
            Ok(_) if data => {
                let mut json = serde_json::Deserializer::from_slice(body);
                let param = match serde_path_to_error::deserialize::<_, Object<T>>(&mut json) {
                    Err(error) => param(error.path()),
                    Ok(_) => None,
                };
                let message = match (&param, not_an_object(body)) {
                    (Some(param), _) => format!("{param}: {error}"),
                    (None, Some(kind)) => format!("the request body must be a JSON object, not {kind}"),
                    (None, None) => error.to_string(),
                };
                RequestError::InvalidField { param, message }
            }
            Ok(_) => RequestError::MalformedJson(error.to_string()),
            Err(malformed) => RequestError::MalformedJson(malformed.to_string()),
        }
    }
}

/// A request body, which must be one JSON object, as `T`. Not an array of `T`'s fields in
/// order, which is what serde's derived structs also accept: `["hi"]` is no turn.
pub fn parse_object<T: DeserializeOwned>(body: &[u8]) -> Result<T, RequestError> {
    serde_json::from_slice::<Object<T>>(body)
        .map(|Object(value)| value)
        .map_err(|error| RequestError::from_json::<T>(error, body))
}

/// `T`, read only from a JSON object.
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Fields<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }
        deserializer.deserialize_map(Fields(PhantomData)).map(Object)
    }
}

/// What a well-formed body is when it is not an object, by its first byte.
fn not_an_object(body: &[u8]) -> Option<&'static str> {
    match body.iter().find(|b| !b.is_ascii_whitespace())? {
        b'{' => None,
        b'[' => Some("an array"),
        b'"' => Some("a string"),
        b'n' => Some("null"),
        b't' | b'f' => Some("a boolean"),
        _ => Some("a number"),
    }
}

/// Where in a body a parse failed, as OpenAI names a parameter (`messages.[1].role`);
/// `None` at the body itself.
fn param(path: &serde_path_to_error::Path) -> Option<String> {
    use serde_path_to_error::Segment;
    let names: Vec<String> = path
        .iter()
        .map(|segment| match segment {
            Segment::Seq { index } => format!("[{index}]"),
            Segment::Map { key } => key.clone(),
            Segment::Enum { variant } => variant.clone(),
            Segment::Unknown => "?".to_owned(),
        })
        .collect();
    (!names.is_empty()).then(|| names.join("."))
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("chatgate is shutting down: no new answer starts, and running ones end at the shutdown grace")]
    Stopping,
    #[error("the chatgate replica generating this answer stopped before it was finished")]
    ReplicaStopped,
    #[error(
        "the bus that carries live answers between replicas failed ({0}); the answer may still finish on the replica generating it: read the conversation again"
    )]
    Bus(String),
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// An error the framework answered by itself (see `edge::pass`), kept as it was.
    #[error("{message}")]
    Http { status: StatusCode, message: String },
    #[error("a valid client key is needed: send `Authorization: Bearer KEY`")]
    Unauthorized,
    #[error("too many turns: this client may send {limit} a minute")]
    RateLimited { limit: u32, retry_after: u64 },
    #[error("too many answers at once: this client may run {0} at a time")]
    TooManyStreams(u32),
    #[error(
        "chatgate is running, but its chat page has not been built: run `npm --prefix web ci && npm --prefix web run build` and reload"
    )]
    PageNotBuilt,
}

/// An error as a client gets it: status, `{message,type,code}` object and retry hint,
/// detached from its cause so that it can be kept and handed to every reader of an answer.
#[derive(Debug, Clone)]
pub struct ErrorBody {
    pub status: StatusCode,
    pub object: Value,
    pub retry_after: Option<String>,
}

impl From<&ApiError> for ErrorBody {
    fn from(e: &ApiError) -> Self {
        Self {
            status: e.status_code(),
            object: e.object(),
            retry_after: e.retry_after(),
        }
    }
}

impl ErrorBody {
    pub fn response(&self) -> HttpResponse {
        self.response_with(json!({}))
    }

    /// The response, with `fields` beside `error` in its body (an object). The error
    /// object gets OpenAI's `param` (`null` unless a parameter is to blame), so that every
    /// error body is one an OpenAI client reads.
    pub fn response_with(&self, fields: Value) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if let Some(seconds) = &self.retry_after {
            response.insert_header((RETRY_AFTER, seconds.as_str()));
        }
        response.json(self.body_with(fields))
    }

    /// The body alone: `fields` (an object) with `error` beside them.
    pub fn body_with(&self, mut fields: Value) -> Value {
        let mut object = self.object.clone();
        if let Value::Object(map) = &mut object
            && !map.contains_key("param")
        {
            map.insert("param".into(), Value::Null);
        }
        fields["error"] = object;
        fields
    }
}

impl ApiError {
    /// The HTTP status, and the `type` and `code` of the JSON body.
    fn classify(&self) -> (StatusCode, &'static str, String) {
        use RequestError as R;
        use UpstreamError as U;
        let invalid = "invalid_request_error";
        let upstream = "upstream_error";
        let (status, kind, code) = match self {
            ApiError::Request(e) => match e {
                R::MalformedJson(_) | R::Unreadable(_) => (StatusCode::BAD_REQUEST, invalid, "malformed_json"),
                R::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, invalid, "body_too_large"),
                R::InvalidField { .. } => (StatusCode::UNPROCESSABLE_ENTITY, invalid, "invalid_field"),
                R::InvalidParam { code, .. } => (StatusCode::BAD_REQUEST, invalid, *code),
                R::UnknownPrompt(_) => (StatusCode::UNPROCESSABLE_ENTITY, invalid, "unknown_prompt"),
                R::UnknownConversation(_) => (StatusCode::NOT_FOUND, invalid, "conversation_not_found"),
                R::UnknownMessage(_) => (StatusCode::NOT_FOUND, invalid, "message_not_found"),
                R::NoRoute(_) => (StatusCode::NOT_FOUND, invalid, "not_found"),
                R::NoAnswer(_) => (StatusCode::NOT_FOUND, invalid, "message_not_found"),
                R::InvalidQuery(_) => (StatusCode::BAD_REQUEST, invalid, "invalid_query"),
                R::BadResumePoint(_) => (StatusCode::BAD_REQUEST, invalid, "invalid_last_event_id"),
                R::MethodNotAllowed { .. } => (StatusCode::METHOD_NOT_ALLOWED, invalid, "method_not_allowed"),
                R::Timeout(_) => (StatusCode::REQUEST_TIMEOUT, invalid, "request_timeout"),
                R::MisdirectedHost(_) => (StatusCode::MISDIRECTED_REQUEST, invalid, "host_not_allowed"),
                R::BadHost(_) => (StatusCode::BAD_REQUEST, invalid, "invalid_host_header"),
                R::CrossSite(_) => (StatusCode::FORBIDDEN, "permission_error", "cross_site_request"),
            },
            ApiError::Upstream(e) => match e {
                U::Refused { status: 429, code, .. } => {
                    return (
                        StatusCode::TOO_MANY_REQUESTS,
                        "rate_limit_error",
                        code.clone().unwrap_or_else(|| "rate_limit_exceeded".into()),
                    );
                }
                U::Refused { status, code, .. } => {
                    return (
                        StatusCode::BAD_GATEWAY,
                        upstream,
                        code.clone().unwrap_or_else(|| format!("upstream_http_{status}")),
                    );
                }
                U::InStream { code, .. } => {
                    return (
                        StatusCode::BAD_GATEWAY,
                        upstream,
                        code.clone().unwrap_or_else(|| "upstream_error".into()),
                    );
                }
                U::Unreachable(_) => (StatusCode::BAD_GATEWAY, upstream, "upstream_unreachable"),
                U::IdleTimeout(_) => (StatusCode::GATEWAY_TIMEOUT, upstream, "upstream_timeout"),
                U::Broken(_) => (StatusCode::BAD_GATEWAY, upstream, "upstream_disconnected"),
                U::Truncated => (StatusCode::BAD_GATEWAY, upstream, "upstream_truncated"),
                U::BadChunk(_) => (StatusCode::BAD_GATEWAY, upstream, "upstream_bad_chunk"),
                U::TooLarge { .. } => (StatusCode::BAD_GATEWAY, upstream, "answer_too_large"),
            },
            ApiError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "server_error", "store_failed"),
            ApiError::Stopping => (StatusCode::SERVICE_UNAVAILABLE, "server_error", "gateway_stopping"),
            ApiError::ReplicaStopped => (StatusCode::SERVICE_UNAVAILABLE, "server_error", "gateway_stopped"),
            ApiError::Bus(_) => (StatusCode::SERVICE_UNAVAILABLE, "server_error", "bus_failed"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "server_error", "internal_error"),
            ApiError::Http { status, .. } => {
                let kind = if status.is_server_error() {
                    "server_error"
                } else {
                    invalid
                };
                (*status, kind, http_code(*status))
            }
            ApiError::PageNotBuilt => (StatusCode::SERVICE_UNAVAILABLE, "server_error", "page_not_built"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "authentication_error", "invalid_api_key"),
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", "rate_limit_exceeded"),
            ApiError::TooManyStreams(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", "too_many_streams"),
        };
        (status, kind, code.to_owned())
    }

    /// The `{"message","type","code"}` object, for an error body or an in-stream frame
    /// (error bodies add `param`, see [`ErrorBody::response_with`]).
    pub fn object(&self) -> Value {
        let (_, kind, code) = self.classify();
        let mut object = json!({"message": self.to_string(), "type": kind, "code": code});
        match self {
            ApiError::Request(RequestError::InvalidParam { param, .. }) => object["param"] = json!(param),
            ApiError::Request(RequestError::InvalidField { param: Some(param), .. }) => object["param"] = json!(param),
            _ => {}
        }
        object
    }

    /// The error as `/v1`, the OpenAI-compatible endpoint, answers it: as everywhere else,
    /// except that an upstream's own refusal (a 4xx) keeps its status and its message, so
    /// that an OpenAI SDK raises the error it would have raised talking to the upstream
    /// (`BadRequestError`, `RateLimitError`, …), and that a body of the wrong shape is a
    /// 400, as OpenAI answers one.
    pub fn openai_body(&self) -> ErrorBody {
        let mut body = ErrorBody::from(self);
        match self {
            ApiError::Upstream(UpstreamError::Refused { status, message, .. }) if (400..500).contains(status) => {
                body.status = StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_REQUEST);
                body.object["message"] = json!(message);
                body.object["type"] = json!(openai_type(*status));
            }
            ApiError::Request(RequestError::InvalidField { .. }) => body.status = StatusCode::BAD_REQUEST,
            _ => {}
        }
        body
    }

    fn retry_after(&self) -> Option<String> {
        match self {
            ApiError::Upstream(UpstreamError::Refused { retry_after, .. }) => retry_after.clone(),
            ApiError::RateLimited { retry_after, .. } => Some(retry_after.to_string()),
            _ => None,
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.classify().0
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = ErrorBody::from(self).response();
        if let ApiError::Unauthorized = self {
            response.headers_mut().insert(
                actix_web::http::header::WWW_AUTHENTICATE,
                actix_web::http::header::HeaderValue::from_static("Bearer"),
            );
        }
        // The rest of a body that came too slowly would be read as the next request.
        if let ApiError::Request(RequestError::Timeout(_)) = self {
            response.head_mut().set_connection_type(ConnectionType::Close);
        }
        response
    }
}

/// OpenAI's error `type` for a refusal with `status`.
fn openai_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        _ => "invalid_request_error",
    }
}

/// An error as `/v1` answers it ([`ApiError::openai_body`]).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct OpenAiError(#[from] pub ApiError);

impl From<RequestError> for OpenAiError {
    fn from(e: RequestError) -> Self {
        Self(e.into())
    }
}

impl From<UpstreamError> for OpenAiError {
    fn from(e: UpstreamError) -> Self {
        Self(e.into())
    }
}

impl ResponseError for OpenAiError {
    fn status_code(&self) -> StatusCode {
        self.0.openai_body().status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = self.0.openai_body().response();
        // The rest of a body that came too slowly would be read as the next request.
        if let ApiError::Request(RequestError::Timeout(_)) = self.0 {
            response.head_mut().set_connection_type(ConnectionType::Close);
        }
        response
    }
}

/// The `code` of an error the framework answered by itself.
fn http_code(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "request_timeout",
        411 => "length_required",
        413 => "body_too_large",
        414 => "uri_too_long",
        415 => "unsupported_media_type",
        431 => "headers_too_large",
        s if s >= 500 => "internal_error",
        _ => "invalid_request",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_refusals_keep_the_upstream_message_and_code() {
        let e = ApiError::from(UpstreamError::Refused {
            status: 401,
            message: "Incorrect API key provided".into(),
            code: Some("invalid_api_key".into()),
            retry_after: None,
        });
        assert_eq!(e.status_code(), StatusCode::BAD_GATEWAY);
        let object = e.object();
        assert_eq!(object["code"], "invalid_api_key");
        assert!(
            object["message"]
                .as_str()
                .unwrap()
                .contains("Incorrect API key provided")
        );
    }

    #[test]
    fn a_rate_limit_stays_a_429_with_its_retry_hint() {
        let e = ApiError::from(UpstreamError::Refused {
            status: 429,
            message: "slow down".into(),
            code: None,
            retry_after: Some("7".into()),
        });
        let response = e.error_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers().get(RETRY_AFTER).unwrap(), "7");
    }
}
