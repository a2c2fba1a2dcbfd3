//! The edge, from an attacker's and a client's side: foreign pages and rebinding host names
//! change nothing, every response carries the security headers, every error is JSON, and a
//! client that sends its request too slowly is cut off while others are served.

use crate::helpers::*;
use chatgate::config::{AllowedHosts, CorsOrigins};
use reqwest::Method;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const EVIL: &str = "https://evil.example";

/// `method path` with extra headers and an optional body, as a browser or curl sends it.
async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> reqwest::Response {
    let mut request = app.client.request(method, app.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(body) = body {
        request = request.body(body.to_owned());
    }
    request.send().await.expect("the gateway answers")
}

/// Whether the gateway stored any conversation.
async fn stored_conversations(app: &TestApp) -> usize {
    let (status, list) = app.get_json("/conversations").await;
    assert_eq!(status, 200);
    list["items"].as_array().expect("items").len()
}

const TURN: &str = r#"{"content":"hello"}"#;

#[tokio::test]
async fn a_cross_site_text_plain_form_post_reaches_neither_the_upstream_nor_the_store() {
    let app = spawn_app().await;
    // What `<form enctype="text/plain" method="post">` on a foreign page sends: no preflight.
    let headers = [
        ("Origin", EVIL),
        ("Content-Type", "text/plain"),
        ("Sec-Fetch-Site", "cross-site"),
    ];
    let response = send(&app, Method::POST, "/conv", &headers, Some(TURN)).await;
    assert_error(response, 403, "cross_site_request").await;
    assert_eq!(app.mock.stats().requests, 0, "nothing reached the upstream");
    assert_eq!(stored_conversations(&app).await, 0, "nothing was stored");
}

#[tokio::test]
async fn origin_null_is_cross_site_even_when_every_origin_is_allowed() {
    for cors in [CorsOrigins::Localhost, CorsOrigins::Any] {
        let app = spawn_app_with(|s| s.cors = cors).await;
        let response = send(&app, Method::POST, "/conv", &[("Origin", "null")], Some(TURN)).await;
        assert_error(response, 403, "cross_site_request").await;
        assert_eq!(app.mock.stats().requests, 0);
    }
}

#[tokio::test]
async fn a_cross_site_fetch_without_an_origin_is_refused() {
    let app = spawn_app().await;
    let headers = [("Sec-Fetch-Site", "cross-site")];
    let response = send(&app, Method::POST, "/conv", &headers, Some(TURN)).await;
    assert_error(response, 403, "cross_site_request").await;
    assert_eq!(app.mock.stats().requests, 0);
}

#[tokio::test]
async fn same_origin_same_site_and_curl_like_requests_are_served() {
    let app = spawn_app().await;
    for headers in [
        vec![("Sec-Fetch-Site", "same-origin")],
        vec![("Sec-Fetch-Site", "same-site")],
        vec![("Sec-Fetch-Site", "none")],
        vec![],
    ] {
        let response = send(&app, Method::POST, "/conv", &headers, Some(TURN)).await;
        assert_eq!(response.status(), 200, "{headers:?}");
        read_stream(response).await.assert_finished();
    }
}

#[tokio::test]
async fn an_allowed_origin_and_the_gateways_own_still_work() {
    let app = spawn_app().await;
    for origin in ["http://localhost:5173", app.address.as_str()] {
        let headers = [("Origin", origin), ("Sec-Fetch-Site", "cross-site")];
        let response = send(&app, Method::POST, "/conv", &headers, Some(TURN)).await;
        assert_eq!(response.status(), 200, "{origin}");
        assert_eq!(response.headers()["access-control-allow-origin"], origin);
        read_stream(response).await.assert_finished();
    }
}

#[tokio::test]
async fn the_page_served_under_its_own_host_name_may_post_with_the_default_cors() {
    let app = spawn_app_with(|s| s.allowed_hosts = AllowedHosts::List(vec!["chat.example.com".into()])).await;
    let port = app.address.rsplit(':').next().unwrap();
    let host = format!("chat.example.com:{port}");
    let own = format!("http://{host}");
    let headers = [("Host", host.as_str()), ("Origin", own.as_str())];
    let response = send(&app, Method::POST, "/conv", &headers, Some(TURN)).await;
    assert_eq!(response.status(), 200);
    read_stream(response).await.assert_finished();

    let other = [("Host", host.as_str()), ("Origin", "http://chat.example.net")];
    let response = send(&app, Method::POST, "/conv", &other, Some(TURN)).await;
    assert_error(response, 403, "cross_site_request").await;
}

#[tokio::test]
async fn a_cross_site_delete_or_stop_is_refused_and_the_conversation_stays() {
    let app = spawn_app().await;
    let id = app.ask("keep me").await.conversation_id();
    let path = format!("/conv/{id}");
    let response = send(&app, Method::DELETE, &path, &[("Origin", EVIL)], None).await;
    assert_error(response, 403, "cross_site_request").await;
    let stop = format!("/conv/{id}/stop");
    let response = send(&app, Method::POST, &stop, &[("Origin", EVIL)], None).await;
    assert_error(response, 403, "cross_site_request").await;
    let (status, conversation) = app.get_json(&path).await;
    assert_eq!(status, 200, "{conversation}");

    let response = send(
        &app,
        Method::DELETE,
        &path,
        &[("Origin", "http://localhost:5173")],
        None,
    )
    .await;
    assert_eq!(response.status(), 204, "an allowed origin may delete");
}

#[tokio::test]
async fn a_rebinding_host_name_gets_421_on_every_route() {
    let app = spawn_app().await;
    let evil = [("Host", "evil.example:8000")];
    for (method, path, body) in [
        (Method::GET, "/conversations", None),
        (Method::POST, "/conv", Some(TURN)),
        (Method::GET, "/", None),
        (Method::GET, "/healthz", None),
    ] {
        let response = send(&app, method, path, &evil, body).await;
        assert_error(response, 421, "host_not_allowed").await;
    }
    // The host in an absolute-form target counts too, whatever the Host header says.
    let absolute = b"GET http://evil.example/healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    let answer = raw_exchange(&app, absolute).await;
    assert!(answer.starts_with("HTTP/1.1 421 "), "{answer}");
    assert_eq!(app.mock.stats().requests, 0);
    assert_eq!(stored_conversations(&app).await, 0);
}

#[tokio::test]
async fn allowed_hosts_star_serves_any_host_name() {
    let app = spawn_app_with(|s| s.allowed_hosts = AllowedHosts::Any).await;
    let response = send(&app, Method::GET, "/conversations", &[("Host", "evil.example")], None).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn http_1_0_without_a_host_is_served_and_http_1_1_without_one_is_refused() {
    let app = spawn_app().await;
    let old = raw_exchange(&app, b"GET /healthz HTTP/1.0\r\n\r\n").await;
    assert!(old.starts_with("HTTP/1.0 200"), "{old}");
    // actix refuses it before the app sees it; the edge makes its answer JSON.
    let new = raw_exchange(&app, b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    let body = assert_raw_error(&new, "HTTP/1.1 400 ", "bad_request");
    assert!(body["error"]["message"].as_str().unwrap().contains("Host"), "{body}");
}

/// Checks that `answer` (a whole raw response) has `status_line`'s start, the security
/// headers, `Connection: close` and a JSON error body with `code`; returns the body.
fn assert_raw_error(answer: &str, status_line: &str, code: &str) -> Value {
    let (head, body) = answer.split_once("\r\n\r\n").expect("a whole response");
    assert!(head.starts_with(status_line), "{head}");
    let head = head.to_ascii_lowercase();
    for header in [
        "x-content-type-options: nosniff",
        "referrer-policy: no-referrer",
        "content-type: application/json",
        "connection: close",
    ] {
        assert!(head.lines().any(|l| l == header), "{header} missing in:\n{head}");
    }
    let length = format!("content-length: {}", body.len());
    assert!(head.lines().any(|l| l == length), "{head}");
    let body: Value = serde_json::from_str(body).expect("a JSON body");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    assert!(
        body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    body
}

#[tokio::test]
async fn what_actix_refuses_before_the_app_is_a_json_error_with_the_security_headers_and_counted() {
    let app = spawn_app().await;
    // A request line that is not HTTP.
    let garbage = raw_exchange(&app, b"HELLO THERE\r\n\r\n").await;
    assert_raw_error(&garbage, "HTTP/1.1 400 ", "bad_request");
    // A header with no colon.
    let no_colon = raw_exchange(&app, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nbroken\r\n\r\n").await;
    assert_raw_error(&no_colon, "HTTP/1.1 400 ", "bad_request");
    // More header fields than actix reads.
    let mut many = String::from("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for i in 0..100 {
        many.push_str(&format!("X-Field-{i}: {i}\r\n"));
    }
    many.push_str("\r\n");
    let too_many = raw_exchange(&app, many.as_bytes()).await;
    let body = assert_raw_error(&too_many, "HTTP/1.1 431 ", "headers_too_large");
    assert!(body["error"]["message"].as_str().unwrap().contains("96"), "{body}");
    // A head over actix's 128 KiB.
    let long = format!(
        "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Long: {}\r\n\r\n",
        "a".repeat(140 * 1024)
    );
    let too_long = raw_exchange(&app, long.as_bytes()).await;
    assert_raw_error(&too_long, "HTTP/1.1 431 ", "headers_too_large");
    // A good request afterwards is served as ever, with its own body.
    let healthy = raw_exchange(
        &app,
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(healthy.starts_with("HTTP/1.1 200 "), "{healthy}");

    let m = app.metrics().await;
    let refused = |status| {
        m.exactly(
            "chatgate_http_requests_total",
            &[("route", "unmatched"), ("method", "other"), ("status", status)],
        )
    };
    assert_eq!((refused("400"), refused("431")), (2.0, 2.0), "{}", m.text);
}

fn assert_secure(response: &reqwest::Response, what: &str) {
    let headers = response.headers();
    assert_eq!(headers["x-content-type-options"], "nosniff", "{what}");
    assert_eq!(headers["referrer-policy"], "no-referrer", "{what}");
}

#[tokio::test]
async fn every_kind_of_response_carries_the_security_headers() {
    let app = spawn_app().await;
    let response = send(&app, Method::GET, "/healthz", &[], None).await;
    assert_secure(&response, "a 200 JSON");
    let response = app.post_conv(json!({"content": "a stream"})).await;
    assert_eq!(response.status(), 200);
    assert_secure(&response, "an event stream");
    read_stream(response).await.assert_finished();
    let response = send(&app, Method::GET, "/no/such/thing", &[], None).await;
    assert_secure(&response, "a 404");
    let response = send(&app, Method::DELETE, "/conversations", &[], None).await;
    assert_secure(&response, "a 405");
    let response = send(&app, Method::POST, "/conv", &[("Origin", EVIL)], Some(TURN)).await;
    assert_secure(&response, "a 403");
    let response = send(&app, Method::GET, "/", &[("Host", "evil.example")], None).await;
    assert_secure(&response, "a 421");
}

/// A built page of two files, as `npm run build` leaves it.
fn page_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("index.html"),
        r#"<!doctype html><title>chatgate</title><script type="module" src="./app.js"></script>"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("app.js"), "document.title = 'ok'").unwrap();
    dir
}

#[tokio::test]
async fn the_page_forbids_inline_script_and_framing() {
    let dir = page_dir();
    let app = spawn_app_with(|s| s.web_dir = dir.path().to_owned()).await;
    for path in ["/", "/app.js"] {
        let response = send(&app, Method::GET, path, &[], None).await;
        assert_eq!(response.status(), 200, "{path}");
        assert_secure(&response, path);
        assert_eq!(response.headers()["x-frame-options"], "DENY");
        let policy = response.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_owned();
        let directive = |name: &str| {
            policy
                .split(';')
                .map(str::trim)
                .find(|d| d.starts_with(name))
                .unwrap_or_else(|| panic!("no {name} in {policy}"))
                .to_owned()
        };
        assert_eq!(directive("script-src"), "script-src 'self'");
        assert_eq!(directive("frame-ancestors"), "frame-ancestors 'none'");
        assert!(!policy.contains("unsafe-eval"), "{policy}");
    }
    let html = send(&app, Method::GET, "/", &[], None).await.text().await.unwrap();
    assert!(
        html.contains("<script type=\"module\" src="),
        "the page itself is served"
    );
}

#[tokio::test]
async fn a_wrong_method_is_a_json_405_that_names_the_allowed_ones() {
    let dir = page_dir();
    let app = spawn_app_with(|s| s.web_dir = dir.path().to_owned()).await;
    let id = "8a0ec4a6-06b4-4a7d-9cf6-7b4f2b5e4c7e";
    for (method, path, allowed) in [
        (Method::GET, format!("/conv/{id}/stop"), "POST"),
        (Method::PUT, format!("/conv/{id}"), "GET, DELETE"),
        (Method::GET, "/conv".to_owned(), "POST"),
        (Method::POST, "/healthz".to_owned(), "GET"),
        (Method::POST, "/app.js".to_owned(), "GET, HEAD"),
    ] {
        let response = send(&app, method.clone(), &path, &[], None).await;
        let allow = response.headers().get("allow").map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(allow.as_deref(), Some(allowed), "{method} {path}");
        assert_error(response, 405, "method_not_allowed").await;
    }
}

#[tokio::test]
async fn unknown_paths_are_json_404s_whatever_the_method() {
    let app = spawn_app().await;
    for (method, path) in [
        (Method::POST, "/no/such/thing"),
        (Method::GET, "/conv/8a0ec4a6-06b4-4a7d-9cf6-7b4f2b5e4c7e/nothing"),
        (Method::DELETE, "/conv/x/stream/deeper"),
        (Method::GET, "/conv/%FF"),
    ] {
        let response = send(&app, method.clone(), path, &[], None).await;
        assert_error(response, 404, "not_found").await;
    }
}

#[tokio::test]
async fn a_refused_cors_preflight_is_json_too() {
    let app = spawn_app().await;
    let headers = [("Origin", EVIL), ("Access-Control-Request-Method", "POST")];
    let response = send(&app, Method::OPTIONS, "/conv", &headers, None).await;
    assert!(response.headers().get("access-control-allow-origin").is_none());
    assert_error(response, 400, "bad_request").await;
}

async fn post_json_body(app: &TestApp, path: &str, body: &str) -> reqwest::Response {
    send(
        app,
        Method::POST,
        path,
        &[("Content-Type", "application/json")],
        Some(body),
    )
    .await
}

#[tokio::test]
async fn a_hundred_thousand_open_brackets_are_a_400_not_a_field_error() {
    let app = spawn_app().await;
    let brackets = "[".repeat(100_000);
    assert_error(post_json_body(&app, "/conv", &brackets).await, 400, "malformed_json").await;
    // A stop body is at most 4 KiB.
    let stop = "/conv/8a0ec4a6-06b4-4a7d-9cf6-7b4f2b5e4c7e/stop";
    assert_error(
        post_json_body(&app, stop, &brackets[..4000]).await,
        400,
        "malformed_json",
    )
    .await;
    assert_eq!(app.mock.stats().requests, 0);
}

#[tokio::test]
async fn a_truncated_body_is_a_400() {
    let app = spawn_app().await;
    let response = post_json_body(&app, "/conv", r#"{"content":"hel"#).await;
    assert_error(response, 400, "malformed_json").await;
    let response = post_json_body(&app, "/conv", r#"{"content": 5, "model": "#).await;
    assert_error(response, 400, "malformed_json").await;
}

#[tokio::test]
async fn well_formed_json_of_the_wrong_type_is_still_a_422() {
    let app = spawn_app().await;
    for body in [r#"{"content": 5}"#, "[1, 2]", r#""hello""#] {
        assert_error(post_json_body(&app, "/conv", body).await, 422, "invalid_field").await;
    }
    let stop = "/conv/8a0ec4a6-06b4-4a7d-9cf6-7b4f2b5e4c7e/stop";
    let response = post_json_body(&app, stop, r#"{"message_id": 5}"#).await;
    assert_error(response, 422, "invalid_field").await;
}

#[tokio::test]
async fn a_bad_query_is_a_json_400() {
    let app = spawn_app().await;
    let path = "/conv/8a0ec4a6-06b4-4a7d-9cf6-7b4f2b5e4c7e/stream?delta=maybe";
    let response = send(&app, Method::GET, path, &[], None).await;
    let body: Value = assert_error(response, 400, "invalid_query").await;
    assert!(body["error"]["message"].as_str().unwrap().contains("maybe"), "{body}");
}

/// Sends `request` on a fresh connection and reads until the gateway closes it.
async fn raw_exchange(app: &TestApp, request: &[u8]) -> String {
    let mut socket = TcpStream::connect(app.address.trim_start_matches("http://"))
        .await
        .unwrap();
    socket.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut answer))
        .await
        .expect("the gateway answers and closes")
        .expect("the answer reads");
    String::from_utf8_lossy(&answer).into_owned()
}

/// Short, so that the slow clients below are cut off quickly.
const TIMEOUT: Duration = Duration::from_secs(1);
/// How late after the timeout a slow client may still be cut off, on a loaded test machine.
const LEEWAY: Duration = Duration::from_millis(1500);
/// actix's `client_disconnect_timeout`: how long it lets a connection linger after a
/// last answer that left part of the request unread.
const LINGER: Duration = Duration::from_secs(1);

/// What a client that sends `start` and then one byte a second sees.
struct Cut {
    /// The status line it got, if any before the connection closed.
    status: Option<String>,
    /// From its first byte to the first byte of the answer.
    answered: Option<Duration>,
    /// From its first byte to the connection's end.
    closed: Duration,
    /// All it read.
    answer: String,
}

async fn trickle(address: &str, start: &[u8], byte: u8) -> Cut {
    let socket = TcpStream::connect(address).await.expect("connects");
    let (mut read, mut write) = socket.into_split();
    let began = Instant::now();
    write.write_all(start).await.expect("the start is sent");
    let dribble = async {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if write.write_all(&[byte]).await.is_err() {
                // Closed on us: the reading side tells the rest.
                std::future::pending::<()>().await;
            }
        }
    };
    let mut answer = Vec::new();
    let mut answered = None;
    let read_to_end = async {
        let mut buffer = [0; 4096];
        // A reset after the answer is as good as an end.
        while let Ok(n @ 1..) = read.read(&mut buffer).await {
            answered.get_or_insert_with(|| began.elapsed());
            answer.extend_from_slice(&buffer[..n]);
        }
    };
    tokio::select! {
        _ = read_to_end => {}
        _ = dribble => unreachable!(),
        _ = tokio::time::sleep(Duration::from_secs(30)) => panic!("the slow client was never cut off"),
    }
    let answer = String::from_utf8_lossy(&answer).into_owned();
    Cut {
        status: answer.lines().next().filter(|l| !l.is_empty()).map(str::to_owned),
        answered,
        closed: began.elapsed(),
        answer,
    }
}

const SLOW_BODY: &[u8] =
    b"POST /conv HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{";

#[tokio::test]
async fn a_thousand_trickling_bodies_get_408_in_time_while_a_normal_client_is_served() {
    let app = spawn_app_with(|s| s.request_timeout = TIMEOUT).await;
    let address = app.address.trim_start_matches("http://").to_owned();
    // Each slow client holds a socket here and one in the gateway, in this one process:
    // at most 200 at once keeps both under a 1024-descriptor limit.
    let slots = Arc::new(tokio::sync::Semaphore::new(200));
    let slow = async {
        let mut clients = tokio::task::JoinSet::new();
        for _ in 0..1000 {
            let slot = Arc::clone(&slots).acquire_owned().await.unwrap();
            let address = address.clone();
            clients.spawn(async move {
                let cut = trickle(&address, SLOW_BODY, b' ').await;
                drop(slot);
                cut
            });
        }
        clients.join_all().await
    };
    let normal = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let began = Instant::now();
        app.ask("served meanwhile").await.assert_finished();
        began.elapsed()
    };
    let (cuts, served_in) = tokio::join!(slow, normal);

    assert!(served_in < TIMEOUT + LEEWAY, "the normal client waited {served_in:?}");
    for cut in &cuts {
        if let Some(after) = cut.answered {
            assert!(after < TIMEOUT + LEEWAY, "answered after {after:?}");
        }
        // actix lets a connection with an unread body linger a second before it closes it.
        assert!(cut.closed < TIMEOUT + LINGER + LEEWAY, "closed after {:?}", cut.closed);
        if let Some(status) = &cut.status {
            assert!(status.starts_with("HTTP/1.1 408 "), "{status}");
        }
    }
    // A connection reset can overtake an answer on its way; nearly all must arrive.
    let answered = cuts.iter().filter(|c| c.status.is_some()).count();
    assert!(answered >= 990, "only {answered} of 1000 slow clients read their 408");
    assert_eq!(app.mock.stats().requests, 1, "only the normal turn went upstream");
}

#[tokio::test]
async fn a_slow_body_gets_a_json_408_and_its_connection_closes() {
    let app = spawn_app_with(|s| s.request_timeout = TIMEOUT).await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut socket = TcpStream::connect(&address).await.unwrap();
    socket.write_all(SLOW_BODY).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(TIMEOUT + LEEWAY, socket.read_to_end(&mut answer))
        .await
        .expect("answered and closed in time")
        .expect("reads");
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").expect("a whole response");
    assert!(head.starts_with("HTTP/1.1 408 "), "{head}");
    assert!(head.to_ascii_lowercase().contains("connection: close"), "{head}");
    let body: Value = serde_json::from_str(body).expect("a JSON body");
    assert_eq!(body["error"]["code"], "request_timeout", "{body}");
}

#[tokio::test]
async fn a_trickling_head_is_cut_off_at_the_timeout_too() {
    let app = spawn_app_with(|s| s.request_timeout = TIMEOUT).await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let cut = trickle(&address, b"POST /conv HTTP/1.1\r\nX-Slow: ", b'a').await;
    assert!(cut.closed < TIMEOUT + LINGER + LEEWAY, "closed after {:?}", cut.closed);
    if let Some(after) = cut.answered {
        assert!(after < TIMEOUT + LEEWAY, "answered after {after:?}");
    }
    // actix answers it itself, before the app; the edge makes its answer JSON.
    if cut.status.is_some() {
        let body = assert_raw_error(&cut.answer, "HTTP/1.1 408 ", "request_timeout");
        assert!(
            body["error"]["message"].as_str().unwrap().contains("within 1 s"),
            "{body}"
        );
    }
}

#[tokio::test]
async fn a_body_that_comes_slowly_but_in_time_is_served() {
    let app = spawn_app_with(|s| s.request_timeout = TIMEOUT).await;
    let turn = r#"{"content":"slow but in time"}"#;
    let head = format!(
        "POST /conv HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        turn.len()
    );
    let mut socket = TcpStream::connect(app.address.trim_start_matches("http://"))
        .await
        .unwrap();
    let (first, rest) = turn.split_at(10);
    socket.write_all(format!("{head}{first}").as_bytes()).await.unwrap();
    tokio::time::sleep(TIMEOUT / 2).await;
    socket.write_all(rest.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), socket.read_to_end(&mut answer))
        .await
        .expect("the turn ends")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.contains("slow but in time"), "{answer}");
}
