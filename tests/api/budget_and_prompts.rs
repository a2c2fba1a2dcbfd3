//! Presets become the system message; long histories are cut to the context window.

use crate::helpers::*;
use serde_json::json;

#[tokio::test]
async fn a_named_preset_becomes_the_system_message() {
    let app = spawn_app().await;
    app.turn(json!({"content": "bonjour", "prompt": "translator"})).await;
    let sent = sent_messages(&app.mock, 0);
    assert_eq!(sent[0].0, "system");
    assert!(
        sent[0].1.starts_with("You are a professional translator."),
        "{}",
        sent[0].1
    );
    assert!(
        !sent[0].1.contains("# Translator"),
        "the title is not part of the prompt"
    );
}

#[tokio::test]
async fn a_model_named_in_the_request_goes_upstream() {
    let app = spawn_app().await;
    let stream = app.turn(json!({"content": "hi", "model": "gpt-4o"})).await;
    assert_eq!(app.mock.requests()[0]["model"], "gpt-4o");
    assert_eq!(stream.last()["message"]["metadata"]["model_slug"], "gpt-4o");
}

#[tokio::test]
async fn the_oldest_turns_are_dropped_to_fit_the_context_window() {
    let app = spawn_app_with(|s| {
        s.context_tokens = 400;
        s.answer_reserve_tokens = 100;
    })
    .await;
    // each turn is ~100 estimated tokens of question and as many of echoed answer
    let long = |tag: &str| format!("{tag} {}", "x".repeat(290));
    let mut turn = app.ask(&long("first")).await;
    for tag in ["second", "third"] {
        turn = app
            .turn(json!({"content": long(tag), "conversation_id": turn.conversation_id()}))
            .await;
    }
    let sent = sent_messages(&app.mock, 2);
    let roles: Vec<&str> = sent.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(roles[0], "system", "the system message stays");
    assert!(sent.last().unwrap().1.starts_with("third"), "the new turn stays");
    assert!(
        !sent.iter().any(|(_, c)| c.contains("first")),
        "the oldest turn went first: {roles:?}"
    );
    assert_eq!(roles[1], "user", "what remains starts with a question");
    assert!(sent.len() < 6);
}
