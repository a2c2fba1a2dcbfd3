//! Every bad request gets its contract status and a JSON error, and the server keeps serving.

use crate::helpers::*;
use serde_json::json;

async fn post_raw(app: &TestApp, body: impl Into<reqwest::Body>) -> reqwest::Response {
    app.client
        .post(app.url("/conv"))
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn malformed_json_is_a_400() {
    let app = spawn_app().await;
    assert_error(post_raw(&app, "{\"content\": ").await, 400, "malformed_json").await;
    assert_error(post_raw(&app, "").await, 400, "malformed_json").await;
    app.ask("still serving").await.assert_finished();
}

#[tokio::test]
async fn wrong_types_and_missing_or_empty_content_are_422() {
    let app = spawn_app().await;
    for body in [
        json!({"content": 42}),
        json!({"content": ["a"]}),
        json!({"conversation_id": "x"}),
        json!({"content": "   "}),
        json!({"content": "hi", "conversation_id": 7}),
        json!({"content": "hi", "conversation_id": "not-a-uuid"}),
        json!({"content": "hi", "parent_message_id": "8a0ec4a6-06b4-4a7d-9cf6-7b4f2b5e4c7e"}),
        json!({"content": "hi", "prompt": "no-such-preset"}),
        json!([1, 2]),
    ] {
        let response = post_raw(&app, body.to_string()).await;
        let code = if body.get("prompt").is_some() {
            "unknown_prompt"
        } else {
            "invalid_field"
        };
        assert_error(response, 422, code).await;
    }
    assert_eq!(app.mock.stats().requests, 0, "nothing bad reached the upstream");
    app.ask("still serving").await.assert_finished();
}

#[tokio::test]
async fn a_body_that_is_not_an_object_is_a_422_and_a_wrong_field_is_named() {
    let app = spawn_app().await;
    // A derived struct would also read `["hello"]` as its fields in order: no turn here.
    for body in [
        r#"["hello"]"#,
        r#"["hello", null, null, "m"]"#,
        r#""hello""#,
        "null",
        "7",
    ] {
        let error = assert_error(post_raw(&app, body).await, 422, "invalid_field").await;
        let message = error["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("the request body must be a JSON object, not "),
            "{body}: {message}"
        );
        assert_eq!(error["error"]["param"], json!(null), "{body}");
    }
    for (body, param) in [
        (json!({"content": 42}), "content"),
        (json!({"content": "hi", "model": ["m"]}), "model"),
        (json!({"content": "hi", "delta": "yes"}), "delta"),
    ] {
        let error = assert_error(post_raw(&app, body.to_string()).await, 422, "invalid_field").await;
        assert_eq!(error["error"]["param"], param, "{body}");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(&format!("{param}: invalid type")), "{message}");
    }
    for (body, param) in [
        (json!({"content": "  "}), "content"),
        (
            json!({"content": "hi", "conversation_id": "not-a-uuid"}),
            "conversation_id",
        ),
        (
            json!({"content": "hi", "parent_message_id": "8a0ec4a6-06b4-4a7d-9cf6-7b4f2b5e4c7e"}),
            "parent_message_id",
        ),
    ] {
        let error = assert_error(post_raw(&app, body.to_string()).await, 422, "invalid_field").await;
        assert_eq!(error["error"]["param"], param, "{body}");
    }
    assert_eq!(app.mock.stats().requests, 0, "nothing reached the upstream");
}

#[tokio::test]
async fn an_unknown_conversation_or_parent_is_a_404() {
    let app = spawn_app().await;
    let missing = "8a0ec4a6-06b4-4a7d-9cf6-7b4f2b5e4c7e";
    let response = app
        .post_conv(json!({"content": "hi", "conversation_id": missing}))
        .await;
    assert_error(response, 404, "conversation_not_found").await;

    let first = app.ask("real").await;
    let response = app
        .post_conv(json!({"content": "hi", "conversation_id": first.conversation_id(), "parent_message_id": missing}))
        .await;
    assert_error(response, 404, "message_not_found").await;

    // a message of another conversation is not a parent here
    let other = app.ask("other").await;
    let response = app
        .post_conv(json!({"content": "hi", "conversation_id": first.conversation_id(), "parent_message_id": other.message_id()}))
        .await;
    assert_error(response, 404, "message_not_found").await;
    app.ask("still serving").await.assert_finished();
}

#[tokio::test]
async fn an_oversized_body_is_a_413() {
    let app = spawn_app_with(|s| s.max_body_bytes = 1024).await;
    let big = json!({"content": "x".repeat(2000)}).to_string();
    assert_error(post_raw(&app, big.clone()).await, 413, "body_too_large").await;
    // also when the size is not declared up front (chunked upload)
    let chunks = futures::stream::iter(
        big.into_bytes()
            .chunks(100)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let response = post_raw(&app, reqwest::Body::wrap_stream(chunks)).await;
    assert_error(response, 413, "body_too_large").await;
    app.ask("still serving").await.assert_finished();
}

#[tokio::test]
async fn curl_style_form_content_type_is_still_read_as_json() {
    let app = spawn_app().await;
    let response = app
        .client
        .post(app.url("/conv"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(json!({"content": "from curl -d"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    read_stream(response).await.assert_finished();
}

#[tokio::test]
async fn unknown_paths_and_ids_are_json_404s() {
    let app = spawn_app().await;
    let response = app.client.get(app.url("/no/such/thing")).send().await.unwrap();
    assert_error(response, 404, "not_found").await;
    let response = app.client.get(app.url("/conv/not-a-uuid")).send().await.unwrap();
    assert_error(response, 404, "not_found").await;
    let response = app
        .client
        .get(app.url("/conv/8a0ec4a6-06b4-4a7d-9cf6-7b4f2b5e4c7e"))
        .send()
        .await
        .unwrap();
    assert_error(response, 404, "conversation_not_found").await;
}
