//! The official `openai` npm package, unchanged, against `/v1` (tests/sdk/openai-sdk.mjs):
//! what its users would see, streaming, not streaming, tool calls, the model list and the
//! typed errors it raises.

use crate::helpers::*;
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const CLIENT_KEY: &str = "sk-client-sdk-0001";

/// Runs the SDK script against `base_url`; its JSON report.
async fn run_sdk(base_url: String) -> Value {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk");
    assert!(
        dir.join("node_modules/openai/package.json").is_file(),
        "the openai npm package is not installed in tests/sdk: run `npm ci --prefix tests/sdk` \
         (scripts/test does it before the Rust tests)"
    );
    let child = Command::new("node")
        .arg(dir.join("openai-sdk.mjs"))
        .env("CHATGATE_BASE_URL", base_url)
        .env("CHATGATE_KEY", CLIENT_KEY)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `node` (Node.js 20 or later is needed): {e}"));
    // Waited for off the runtime: the gateway under test runs on this test's thread.
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .expect("the SDK script ends within two minutes")
    .unwrap()
    .expect("the SDK script ran");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the SDK script failed ({}):\n{stderr}\n{stdout}",
        output.status
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not a JSON report ({e}): {stdout}\n{stderr}"))
}

#[tokio::test]
async fn the_official_openai_npm_package_works_unchanged_against_v1() {
    let app = spawn_app_with(|s| s.api_keys = Some(format!("sdk:{CLIENT_KEY}"))).await;
    let report = run_sdk(app.url("/v1")).await;

    let streamed = &report["streamed"];
    assert_eq!(streamed["text"], echo("hello from the sdk", 3));
    assert_eq!(streamed["ids"].as_array().unwrap().len(), 1, "one id: {streamed}");
    assert_eq!(streamed["roles"], json!(["assistant"]));
    assert_eq!(streamed["finish"], "stop");
    let words = mockllm::word_chunks(&echo("hello from the sdk", 3)).len();
    assert_eq!(
        streamed["usage"],
        json!({"prompt_tokens": 10, "completion_tokens": words, "total_tokens": 10 + words})
    );

    let completion = &report["completion"];
    assert_eq!(completion["object"], "chat.completion");
    assert_eq!(completion["text"], echo("all at once", 0));
    assert_eq!(completion["role"], "assistant");
    assert_eq!(completion["finish"], "stop");
    assert!(completion["usage"]["total_tokens"].as_u64().unwrap() > 10);

    let tools = &report["tools"];
    assert_eq!(tools["finish"], "tool_calls");
    let expected: Vec<Value> = mockllm::tool_calls("weather", 2)
        .into_iter()
        .map(|c| json!({"id": c.id, "name": c.name, "arguments": c.arguments}))
        .collect();
    assert_eq!(tools["calls"], json!(expected));

    assert_eq!(
        report["models"],
        json!([{"id": "mock-model", "object": "model", "owned_by": "chatgate"}])
    );

    let limited = &report["rateLimited"];
    assert_eq!(limited["class"], "RateLimitError", "{limited}");
    assert_eq!(limited["isRateLimit"], true);
    assert_eq!(limited["status"], 429);
    assert_eq!(limited["retryAfter"], "7");
    assert!(
        limited["message"]
            .as_str()
            .unwrap()
            .contains("Rate limit reached for requests"),
        "{limited}"
    );

    let bad = &report["badRequest"];
    assert_eq!(bad["class"], "BadRequestError", "{bad}");
    assert_eq!(bad["isBadRequest"], true);
    assert!(
        bad["message"]
            .as_str()
            .unwrap()
            .contains("The request was refused by the mock.")
    );

    let refused_n = &report["refusedN"];
    assert_eq!(refused_n["class"], "BadRequestError", "{refused_n}");

    let unauthorized = &report["unauthorized"];
    assert_eq!(unauthorized["class"], "AuthenticationError", "{unauthorized}");
    assert_eq!(unauthorized["isAuthentication"], true);
    assert_eq!(unauthorized["code"], "invalid_api_key");

    let mid_stream = &report["midStream"];
    assert_eq!(mid_stream["isApiError"], true, "{mid_stream}");
    assert!(
        mid_stream["message"].as_str().unwrap().contains("crashed"),
        "{mid_stream}"
    );

    // What reached the upstream: the completions above and nothing refused before it.
    let requests = app.mock.requests();
    assert_eq!(requests.len(), 6, "{requests:?}");
    assert!(requests.iter().all(|r| r["model"] == "mock-model"));
}
