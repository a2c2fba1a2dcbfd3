//! An upstream that refuses or cannot be reached gives a real HTTP status before any
//! stream, with the upstream's own message and never the key; nothing is stored.

use crate::helpers::*;
use chatgate::config::UpstreamKind;
use mockllm::{MockLlm, Script};
use serde_json::json;
use std::time::Duration;

/// The gateway against an OpenAI-compatible upstream at `base_url` (not the mock).
pub async fn app_against(base_url: String) -> TestApp {
    spawn_app_with(|s| {
        s.upstream = UpstreamKind::OpenAi {
            base_url,
            key: Some(KEY.to_owned()),
        }
    })
    .await
}

pub async fn assert_nothing_stored(app: &TestApp) {
    let (_, list) = app.get_json("/conversations").await;
    assert_eq!(list["items"], json!([]), "a refused turn leaves no conversation");
}

#[tokio::test]
async fn an_upstream_401_is_a_502_with_its_message_and_never_the_key() {
    let app = spawn_app().await;
    let response = app.post_conv(json!({"content": "hi [mock:status=401]"})).await;
    let text = response.text().await.unwrap();
    assert!(!text.contains(KEY) && !text.contains(&KEY[..12]), "{text}");
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["error"]["code"], "invalid_api_key");
    assert_eq!(body["error"]["type"], "upstream_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Incorrect API key provided")
    );
    assert_nothing_stored(&app).await;
    // and the key went upstream as a bearer token
    assert_eq!(app.mock.stats().requests, 1);
}

#[tokio::test]
async fn an_upstream_429_stays_a_429_with_its_retry_after() {
    let app = spawn_app().await;
    // Longer than the retry budget: not waited for, so passed on at once.
    let response = app
        .post_conv(json!({"content": "hi [mock:status=429] [mock:retry-after=30]"}))
        .await;
    assert_eq!(response.headers()["retry-after"], "30");
    let body = assert_error(response, 429, "rate_limit_exceeded").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Rate limit reached")
    );
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn an_upstream_500_is_a_502() {
    let app = spawn_app().await;
    let response = app.post_conv(json!({"content": "hi [mock:status=500]"})).await;
    let body = assert_error(response, 502, "server_error").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("The server had an error")
    );
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn a_non_json_error_page_is_carried_as_text() {
    let app = spawn_app().await;
    // A 503 is tried three times before it reaches the client.
    for _ in 0..3 {
        app.mock
            .enqueue(Script::refuse(503, "<html>upstream maintenance</html>"));
    }
    let response = app.post_conv(json!({"content": "hi"})).await;
    let body = assert_error(response, 502, "upstream_http_503").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("upstream maintenance")
    );
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_502() {
    // a port that was free a moment ago and has nobody listening now
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let app = app_against(format!("http://127.0.0.1:{closed}/v1")).await;
    let response = app.post_conv(json!({"content": "anyone?"})).await;
    let body = assert_error(response, 502, "upstream_unreachable").await;
    assert!(!body.to_string().contains(KEY));
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn an_upstream_silent_before_its_first_token_times_out_as_a_504() {
    let app = spawn_app_with(|s| s.upstream_idle_timeout = Duration::from_millis(300)).await;
    let response = app.post_conv(json!({"content": "hello? [mock:stall]"})).await;
    assert_error(response, 504, "upstream_timeout").await;
    let stats = app
        .mock
        .wait_for_stats(Duration::from_secs(2), |s| s.cancelled == 3)
        .await;
    assert_eq!(stats.cancelled, 3, "each of the three silent tries is dropped");
}

#[tokio::test]
async fn an_upstream_silent_mid_answer_ends_with_a_timeout_frame() {
    let app = spawn_app_with(|s| s.upstream_idle_timeout = Duration::from_millis(300)).await;
    let c = mockllm::wire::Completion::new("mock-model", 1);
    app.mock
        .enqueue(Script::stream([c.role(), c.content("so far")]).then_stall());
    let stream = app.ask("go").await;
    let last = stream.last();
    assert_eq!(last["message"]["status"], "error");
    assert_eq!(last["message"]["content"]["parts"][0], "so far");
    assert_eq!(last["error"]["code"], "upstream_timeout");
    stream.assert_closed_properly();
}

#[tokio::test]
async fn an_error_after_the_upstream_accepted_but_before_any_text_names_the_stored_turn() {
    let app = spawn_app().await;
    let response = app
        .post_conv(json!({"content": "fail early [mock:error-after=0]"}))
        .await;
    let body = assert_error(response, 502, "server_error").await;
    let conversation = body["conversation_id"].as_str().expect("the stored conversation");
    let question = body["message_id"].as_str().expect("the stored user message");
    let (status, tree) = app.get_json(&format!("/conv/{conversation}")).await;
    assert_eq!(status, 200);
    let user = &tree["mapping"][question];
    assert_eq!(user["message"]["author"]["role"], "user");
    assert_eq!(
        user["message"]["content"]["parts"][0],
        "fail early [mock:error-after=0]"
    );
    let answer = user["children"][0].as_str().expect("the answer beside it");
    let stored = app.stored_message(conversation, answer).await;
    assert_eq!(stored["status"], "error");
    assert_eq!(stored["metadata"]["error"]["code"], "server_error");

    // A retry from it: the same question again under the same parent.
    let parent = user["parent"].as_str().unwrap();
    let retry = app
        .turn(json!({"content": "again", "conversation_id": conversation, "parent_message_id": parent}))
        .await;
    retry.assert_finished();
}

/// An upstream that answers every request with a `307` to the same path at `elsewhere`
/// (an origin, `http://host:port`); returns its own origin.
async fn redirecting_upstream(elsewhere: String) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", upstream.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = upstream.accept().await {
            // The request's first read names the path.
            let mut head = vec![0u8; 16 * 1024];
            let n = socket.read(&mut head).await.unwrap_or(0);
            let head = String::from_utf8_lossy(&head[..n]).to_string();
            let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
            let answer = format!(
                "HTTP/1.1 307 Temporary Redirect\r\nlocation: {elsewhere}{path}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
            let _ = socket.write_all(answer.as_bytes()).await;
            // Closing with unread bytes would reset the connection before the answer is read.
            let _ = socket.shutdown().await;
            while matches!(socket.read(&mut [0u8; 4096]).await, Ok(n) if n > 0) {}
        }
    });
    origin
}

/// A redirect is refused, never followed: following it would send the conversation, and
/// with Anthropic's `x-api-key` the key itself, to `elsewhere` (a mock, which would answer).
async fn assert_redirect_refused(response: reqwest::Response, elsewhere: &MockLlm) {
    let body = assert_error(response, 502, "upstream_http_307").await;
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("redirect"), "{message}");
    assert_eq!(elsewhere.stats().requests, 0, "nothing reached the redirect's target");
}

#[tokio::test]
async fn an_openai_upstream_that_redirects_is_refused_and_the_conversation_goes_nowhere_else() {
    let elsewhere = MockLlm::start("127.0.0.1:0").unwrap();
    let base_url = redirecting_upstream(format!("http://127.0.0.1:{}", elsewhere.port())).await;
    let app = app_against(format!("{base_url}/v1")).await;
    let response = app.post_conv(json!({"content": "a private question"})).await;
    assert_redirect_refused(response, &elsewhere).await;
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn an_anthropic_upstream_that_redirects_is_refused_and_its_key_goes_nowhere_else() {
    let elsewhere = MockLlm::start("127.0.0.1:0").unwrap();
    let base_url = redirecting_upstream(format!("http://127.0.0.1:{}", elsewhere.port())).await;
    let app = spawn_app_with(|s| {
        s.upstream = UpstreamKind::Anthropic {
            base_url,
            key: Some(KEY.to_owned()),
        };
        s.model = "claude-mock".into();
    })
    .await;
    let response = app.post_conv(json!({"content": "a private question"})).await;
    assert_redirect_refused(response, &elsewhere).await;
}
