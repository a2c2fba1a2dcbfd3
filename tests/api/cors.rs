//! Browsers on localhost origins may call the gateway; other origins may not.

use crate::helpers::*;

async fn preflight(app: &TestApp, origin: &str) -> reqwest::Response {
    app.client
        .request(reqwest::Method::OPTIONS, app.url("/conv"))
        .header("Origin", origin)
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "content-type")
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_localhost_origin_on_any_port_is_allowed() {
    let app = spawn_app().await;
    for origin in ["http://localhost:5173", "http://127.0.0.1:3000"] {
        let response = preflight(&app, origin).await;
        assert!(response.status().is_success(), "{origin}: {}", response.status());
        assert_eq!(response.headers()["access-control-allow-origin"], origin);
    }
    let response = app
        .client
        .get(app.url("/conversations"))
        .header("Origin", "http://localhost:5173")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "http://localhost:5173"
    );
}

#[tokio::test]
async fn another_origin_is_refused() {
    let app = spawn_app().await;
    let response = preflight(&app, "https://evil.example").await;
    assert!(response.headers().get("access-control-allow-origin").is_none());
    let response = app
        .client
        .get(app.url("/conversations"))
        .header("Origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(response.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn configured_origins_replace_the_localhost_default() {
    let app =
        spawn_app_with(|s| s.cors = chatgate::config::CorsOrigins::List(vec!["https://chat.example".into()])).await;
    let response = preflight(&app, "https://chat.example").await;
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://chat.example"
    );
    let response = preflight(&app, "http://localhost:5173").await;
    assert!(response.headers().get("access-control-allow-origin").is_none());
}
