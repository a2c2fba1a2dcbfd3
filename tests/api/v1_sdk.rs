//! The official `openai` packages, unchanged, against `/v1`: the npm package
//! (tests/sdk/openai-sdk.mjs) and the Python package (tests/sdk/openai_sdk.py). Each script
//! reports, in one JSON shape, what its users would see: streaming, not streaming, tool
//! calls through the SDK's own stream helper, the model list and the typed errors it raises.

use crate::helpers::*;
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const CLIENT_KEY: &str = "sk-client-sdk-0001";

/// One SDK's script: how to run it, and what installs what it needs.
struct Sdk {
    /// The interpreter, relative to tests/sdk when it is a path.
    interpreter: &'static str,
    script: &'static str,
    /// A file that exists once the SDK is installed, relative to tests/sdk.
    installed: &'static str,
    install: &'static str,
}

const NODE: Sdk = Sdk {
    interpreter: "node",
    script: "openai-sdk.mjs",
    installed: "node_modules/openai/package.json",
    install: "npm ci --prefix tests/sdk",
};

const PYTHON: Sdk = Sdk {
    interpreter: ".venv/bin/python",
    script: "openai_sdk.py",
    installed: ".venv/bin/python",
    install: "python3 -m venv tests/sdk/.venv && tests/sdk/.venv/bin/pip install -r tests/sdk/requirements.txt",
};

/// Runs `sdk`'s script against `base_url`; its JSON report.
async fn run_sdk(sdk: &Sdk, base_url: String) -> Value {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk");
    assert!(
        dir.join(sdk.installed).is_file(),
        "the SDK for tests/sdk/{} is not installed: run `{}` (scripts/test does it before the Rust tests)",
        sdk.script,
        sdk.install
    );
    let interpreter = match sdk.interpreter.contains('/') {
        true => dir.join(sdk.interpreter),
        false => sdk.interpreter.into(),
    };
    let child = Command::new(&interpreter)
        .arg(dir.join(sdk.script))
        .env("CHATGATE_BASE_URL", base_url)
        .env("CHATGATE_KEY", CLIENT_KEY)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", interpreter.display()));
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
    works_unchanged(&NODE).await;
}

#[tokio::test]
async fn the_official_openai_python_package_works_unchanged_against_v1() {
    works_unchanged(&PYTHON).await;
}

async fn works_unchanged(sdk: &Sdk) {
    let app = spawn_app_with(|s| s.api_keys = Some(format!("sdk:{CLIENT_KEY}"))).await;
    let report = run_sdk(sdk, app.url("/v1")).await;

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
    assert_eq!(limited["retryAfter"], "30");
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
