//! Client keys, ownership and per-client limits: who may use the gateway, who may see a
//! conversation, and how much one client may ask of the upstream.

use crate::helpers::*;
use crate::shutdown::Gateway;
use mockllm::MockLlm;
use reqwest::Method;
use serde_json::{Value, json};
use std::process::{Command, Stdio};
use std::time::Duration;

const ALICE: &str = "sk-client-alice-0001";
const BOB: &str = "sk-client-bob-0002";

/// A long answer: 400 words, 20 ms apart.
const LONG: &str = "tell me a long story [mock:words=400] [mock:delay=20]";

async fn keyed_app(adjust: impl FnOnce(&mut chatgate::config::Settings)) -> TestApp {
    spawn_app_with(|s| {
        s.api_keys = Some(format!("alice:{ALICE}, bob:{BOB}"));
        adjust(s);
    })
    .await
}

async fn send(app: &TestApp, method: Method, path: &str, key: Option<&str>, body: Option<Value>) -> reqwest::Response {
    let mut request = app.client.request(method, app.url(path));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.expect("the gateway answers")
}

/// A finished first turn by `key`: (conversation id, answer id).
async fn finished_turn(app: &TestApp, key: &str) -> (String, String) {
    let response = send(app, Method::POST, "/conv", Some(key), Some(json!({"content": "hello"}))).await;
    assert_eq!(response.status(), 200);
    let stream = read_stream(response).await;
    stream.assert_finished();
    (stream.conversation_id(), stream.message_id())
}

/// A background long answer by `key`: (status, body).
async fn background(app: &TestApp, key: Option<&str>, content: &str) -> (u16, Value) {
    let response = send(
        app,
        Method::POST,
        "/conv",
        key,
        Some(json!({"content": content, "background": true})),
    )
    .await;
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON body"))
}

#[tokio::test]
async fn every_route_but_the_page_and_healthz_needs_a_valid_key() {
    let web = tempfile::tempdir().unwrap();
    std::fs::write(web.path().join("index.html"), "<!doctype html><title>chat</title>").unwrap();
    std::fs::create_dir(web.path().join("assets")).unwrap();
    std::fs::write(web.path().join("assets/app.js"), "console.log(1)").unwrap();
    let dir = web.path().to_owned();
    let app = keyed_app(|s| s.web_dir = dir).await;
    let (conversation, _) = finished_turn(&app, ALICE).await;

    let guarded = [
        (Method::POST, "/conv".to_owned(), Some(json!({"content": "hi"}))),
        (Method::GET, format!("/conv/{conversation}"), None),
        (Method::DELETE, format!("/conv/{conversation}"), None),
        (Method::GET, format!("/conv/{conversation}/stream"), None),
        (Method::POST, format!("/conv/{conversation}/stop"), None),
        (Method::GET, "/conversations".to_owned(), None),
        (Method::GET, "/prompts".to_owned(), None),
        (Method::GET, "/config".to_owned(), None),
        (Method::GET, "/no/such/route".to_owned(), None),
    ];
    for key in [None, Some("sk-wrong"), Some(&ALICE[..ALICE.len() - 1])] {
        for (method, path, body) in &guarded {
            let response = send(&app, method.clone(), path, key, body.clone()).await;
            assert_eq!(response.headers()["www-authenticate"], "Bearer", "{method} {path}");
            let body = assert_error(response, 401, "invalid_api_key").await;
            assert_eq!(body["error"]["type"], "authentication_error");
        }
    }
    assert_eq!(app.mock.requests().len(), 1, "only the keyed turn went upstream");

    for path in ["/", "/index.html", "/assets/app.js", "/healthz"] {
        let response = send(&app, Method::GET, path, None, None).await;
        assert_eq!(response.status(), 200, "{path}");
    }
    for (path, status) in [("/conversations", 200), ("/prompts", 200), ("/config", 200)] {
        assert_eq!(send(&app, Method::GET, path, Some(BOB), None).await.status(), status);
    }
}

#[tokio::test]
async fn the_query_key_is_taken_on_stream_gets_only() {
    let app = keyed_app(|_| {}).await;
    let (conversation, _) = finished_turn(&app, ALICE).await;
    let stream = app
        .client
        .get(app.url(&format!("/conv/{conversation}/stream?api_key={ALICE}")))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    read_stream(stream).await.assert_finished();

    let turn = app
        .client
        .post(app.url(&format!("/conv?api_key={ALICE}")))
        .json(&json!({"content": "hi"}))
        .send()
        .await
        .unwrap();
    assert_error(turn, 401, "invalid_api_key").await;
    let read = app
        .client
        .get(app.url(&format!("/conv/{conversation}?api_key={ALICE}")))
        .send()
        .await
        .unwrap();
    assert_error(read, 401, "invalid_api_key").await;
}

#[tokio::test]
async fn another_keys_conversation_does_not_exist_for_it() {
    let app = keyed_app(|_| {}).await;
    let (conversation, answer) = finished_turn(&app, ALICE).await;
    let continuing = json!({"content": "more", "conversation_id": conversation});
    let routes = [
        (Method::GET, format!("/conv/{conversation}"), None),
        (Method::GET, format!("/conv/{conversation}/stream"), None),
        (
            Method::GET,
            format!("/conv/{conversation}/stream?message_id={answer}"),
            None,
        ),
        (Method::POST, format!("/conv/{conversation}/stop"), None),
        (Method::POST, "/conv".to_owned(), Some(continuing.clone())),
        (Method::DELETE, format!("/conv/{conversation}"), None),
    ];
    for (method, path, body) in &routes {
        let response = send(&app, method.clone(), path, Some(BOB), body.clone()).await;
        assert_error(response, 404, "conversation_not_found").await;
    }
    let (_, bobs) = app_list(&app, BOB).await;
    assert!(bobs.is_empty(), "{bobs:?}");
    assert_eq!(app.mock.requests().len(), 1, "B's turn never went upstream");

    // Alice still has it all.
    let (_, alices) = app_list(&app, ALICE).await;
    assert_eq!(alices, vec![conversation.clone()]);
    let response = send(&app, Method::POST, "/conv", Some(ALICE), Some(continuing)).await;
    assert_eq!(response.status(), 200);
    read_stream(response).await.assert_finished();
    let response = send(
        &app,
        Method::DELETE,
        &format!("/conv/{conversation}"),
        Some(ALICE),
        None,
    )
    .await;
    assert_eq!(response.status(), 204);
}

async fn app_list(app: &TestApp, key: &str) -> (u16, Vec<String>) {
    let response = send(app, Method::GET, "/conversations", Some(key), None).await;
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    let ids = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["conversation_id"].as_str().unwrap().to_owned())
        .collect();
    (status, ids)
}

#[tokio::test]
async fn another_key_can_neither_follow_nor_stop_a_live_answer() {
    let app = keyed_app(|_| {}).await;
    let (status, accepted) = background(&app, Some(ALICE), LONG).await;
    assert_eq!(status, 202, "{accepted}");
    let conversation = accepted["conversation_id"].as_str().unwrap();
    let message = accepted["message_id"].as_str().unwrap();

    // At once: the new conversation's row may not be stored yet.
    for path in [
        format!("/conv/{conversation}/stream"),
        format!("/conv/{conversation}/stream?message_id={message}"),
    ] {
        let response = send(&app, Method::GET, &path, Some(BOB), None).await;
        assert_error(response, 404, "conversation_not_found").await;
    }
    let stop = send(
        &app,
        Method::POST,
        &format!("/conv/{conversation}/stop"),
        Some(BOB),
        Some(json!({"message_id": message})),
    )
    .await;
    assert_error(stop, 404, "conversation_not_found").await;
    assert_eq!(app.generations.live(), 1, "the answer runs on");

    let follow = send(
        &app,
        Method::GET,
        &format!("/conv/{conversation}/stream"),
        Some(ALICE),
        None,
    )
    .await;
    assert_eq!(follow.status(), 200);
    let mut live = Live::new(follow);
    live.next_frame().await;
    let stop = send(
        &app,
        Method::POST,
        &format!("/conv/{conversation}/stop"),
        Some(ALICE),
        None,
    )
    .await;
    assert_eq!(stop.status(), 200);
    assert_eq!(stop.json::<Value>().await.unwrap()["stopped"], true);
    app.registry_empties().await;
}

#[tokio::test]
async fn turns_over_the_rate_limit_get_429_and_never_reach_the_upstream() {
    let app = spawn_app_with(|s| s.limits.turns_per_minute = Some(2)).await;
    // Refused for another reason: not counted.
    let invalid = app.post_conv(json!({"content": "  "})).await;
    assert_eq!(invalid.status(), 422);
    app.ask("one").await.assert_finished();
    app.ask("two").await.assert_finished();
    for _ in 0..2 {
        let refused = app.post_conv(json!({"content": "three"})).await;
        let retry: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "{retry}");
        let body = assert_error(refused, 429, "rate_limit_exceeded").await;
        assert_eq!(body["error"]["type"], "rate_limit_error");
    }
    assert_eq!(app.mock.requests().len(), 2);
}

#[tokio::test]
async fn each_key_has_its_own_rate_limit() {
    let app = keyed_app(|s| s.limits.turns_per_minute = Some(1)).await;
    finished_turn(&app, ALICE).await;
    let refused = send(&app, Method::POST, "/conv", Some(ALICE), Some(json!({"content": "x"}))).await;
    assert_error(refused, 429, "rate_limit_exceeded").await;
    finished_turn(&app, BOB).await;
}

#[tokio::test]
async fn live_answers_over_the_limit_get_429_until_one_ends() {
    let app = spawn_app_with(|s| s.limits.streams = Some(1)).await;
    let (status, first) = background(&app, None, LONG).await;
    assert_eq!(status, 202, "{first}");
    let (status, refused) = background(&app, None, LONG).await;
    assert_eq!(status, 429, "{refused}");
    assert_eq!(refused["error"]["code"], "too_many_streams");
    assert_eq!(refused["error"]["type"], "rate_limit_error");
    assert_eq!(app.mock.requests().len(), 1);

    let conversation = first["conversation_id"].as_str().unwrap();
    let (status, stopped) = app.stop(conversation, None).await;
    assert_eq!((status, &stopped["stopped"]), (200, &json!(true)));
    app.registry_empties().await;
    let mut status = 0;
    for _ in 0..100 {
        let (s, next) = background(&app, None, "short").await;
        status = s;
        if s == 202 {
            let id = next["conversation_id"].as_str().unwrap().to_owned();
            app.stop(&id, None).await;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, 202, "the slot is given back when the answer ends");
}

/// `chatgate` with `args` and no settings from the environment, not yet waited for.
fn chatgate(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_chatgate"));
    command
        .args(args)
        .args(["--store", "memory"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, _) in std::env::vars() {
        if key.starts_with("OPENAI_") || key.starts_with("CHATGATE_") {
            command.env_remove(key);
        }
    }
    command
}

#[tokio::test]
async fn an_open_address_without_keys_refuses_to_start() {
    let output = chatgate(&["--listen", "0.0.0.0:0"]).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--api-keys") && stderr.contains("--no-auth"),
        "{stderr}"
    );

    let mut open = chatgate(&["--listen", "0.0.0.0:0", "--no-auth"]).spawn().unwrap();
    let stdout = open.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).map(|_| line)
    });
    let line = tokio::time::timeout(Duration::from_secs(30), line).await;
    open.kill().unwrap();
    open.wait().unwrap();
    let line = line.expect("it starts within 30 s").unwrap().unwrap();
    assert!(line.starts_with("chatgate listening on"), "{line}");
}

#[tokio::test]
async fn a_bad_keys_file_stops_start_up_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("clients.keys");
    std::fs::write(&file, "# our clients\nalice:sk-a\n\nsk-secret-without-a-name\n").unwrap();
    let output = chatgate(&["--api-keys-file", file.to_str().unwrap()]).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("clients.keys") && stderr.contains("line 4"), "{stderr}");
    assert!(!stderr.contains("sk-secret"), "the key is not repeated: {stderr}");
}

async fn status_with(gateway: &Gateway, key: &str) -> u16 {
    gateway
        .client
        .get(gateway.url("/conversations"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn sighup_rereads_the_keys_file_and_a_bad_one_keeps_the_old_keys() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys");
    std::fs::write(&file, "alice:sk-old-key\n").unwrap();
    let mock = MockLlm::start("127.0.0.1:0").unwrap();
    let flags = ["--api-keys-file", file.to_str().unwrap()];
    let gateway = Gateway::start(&dir.path().join("c.db"), &mock, &flags).await;
    assert_eq!(status_with(&gateway, "sk-old-key").await, 200);
    assert_eq!(status_with(&gateway, "sk-new-key").await, 401);

    std::fs::write(&file, "# rotated\nalice:sk-new-key\n").unwrap();
    gateway.signal("HUP");
    let reloaded = wait_for(|| async { status_with(&gateway, "sk-new-key").await == 200 }).await;
    assert!(reloaded, "the new key is taken after SIGHUP; log:\n{}", gateway.log());
    assert_eq!(status_with(&gateway, "sk-old-key").await, 401);

    std::fs::write(&file, "alice:sk-new-key\nbroken line\n").unwrap();
    gateway.signal("HUP");
    let logged = wait_for(|| async { gateway.log().contains("not reloaded") }).await;
    assert!(logged, "log:\n{}", gateway.log());
    assert!(gateway.log().contains("line 2"), "{}", gateway.log());
    assert_eq!(status_with(&gateway, "sk-new-key").await, 200, "the old keys stay");
}

async fn wait_for<F, Fut>(check: F) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

#[tokio::test]
async fn a_key_never_reaches_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mock = MockLlm::start("127.0.0.1:0").unwrap();
    let secret = "sk-never-logged-3f9a7c";
    let keys = format!("alice:{secret}");
    let db = dir.path().join("c.db");
    let gateway = Gateway::start_logging(&db, &mock, &["--api-keys", &keys], "debug").await;
    let turn = gateway
        .client
        .post(gateway.url("/conv"))
        .bearer_auth(secret)
        .json(&json!({"content": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(turn.status(), 200);
    let stream = read_stream(turn).await;
    let conversation = stream.conversation_id();
    for query in [
        format!("?api_key={secret}"),
        format!("?message_id=nope&api_key={secret}"),
        format!("?api_key={secret}x"),
    ] {
        gateway
            .client
            .get(gateway.url(&format!("/conv/{conversation}/stream{query}")))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
    }
    gateway
        .client
        .get(gateway.url(&format!("/nowhere?api_key={secret}")))
        .send()
        .await
        .unwrap();
    let log = gateway.log();
    assert!(log.contains("DEBUG") || log.contains("INFO"), "the log was read: {log}");
    assert!(!log.contains(secret), "{log}");
    assert!(!log.contains("sk-never"), "{log}");
}
