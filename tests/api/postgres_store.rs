//! The gateway on `--store postgres://…`: two gateways on one database are one history
//! (a conversation written through one is read and continued through the other), and a
//! database that cannot be reached stops the start with a reason.

use crate::helpers::*;
use crate::postgres_server::fresh_database;
use chatgate::config::{PostgresUrl, Settings, StoreKind, UpstreamKind};
use chatgate::startup::Application;
use mockllm::MockLlm;
use serde_json::json;

async fn gateway_on(url: &str) -> TestApp {
    let mock = MockLlm::start("127.0.0.1:0").unwrap();
    let mut settings = Settings::for_tests();
    settings.upstream = UpstreamKind::OpenAi {
        base_url: mock.base_url(),
        key: Some(KEY.to_owned()),
    };
    settings.store = StoreKind::Postgres(PostgresUrl(url.to_owned()));
    start(settings, mock).await
}

#[tokio::test]
async fn two_gateways_on_one_postgres_database_read_and_continue_each_others_conversations() {
    let url = fresh_database().await;
    let a = gateway_on(&url).await;
    let b = gateway_on(&url).await;

    let first = a.ask("asked through a").await;
    first.assert_finished();
    let (status, list) = b.get_json("/conversations").await;
    assert_eq!(status, 200);
    assert_eq!(list["items"][0]["conversation_id"], first.conversation_id());
    assert_eq!(list["items"][0]["title"], "asked through a");
    let (status, conversation) = b.get_json(&format!("/conv/{}", first.conversation_id())).await;
    assert_eq!(status, 200);
    let answer = &conversation["mapping"][first.message_id()]["message"];
    assert_eq!(answer["content"]["parts"][0], first.text());
    assert_eq!(answer["status"], "finished_successfully");

    let second = b
        .turn(json!({"content": "continued through b", "conversation_id": first.conversation_id(), "parent_message_id": first.message_id()}))
        .await;
    second.assert_finished();
    // b's upstream got the history a wrote, then the new question.
    let sent: Vec<String> = sent_messages(&b.mock, 0).into_iter().map(|(_, c)| c).collect();
    assert_eq!(
        sent[sent.len() - 3..],
        [
            "asked through a".to_owned(),
            first.text(),
            "continued through b".to_owned()
        ]
    );
    let (_, conversation) = a.get_json(&format!("/conv/{}", first.conversation_id())).await;
    assert_eq!(conversation["current_node"], second.message_id());

    let deleted = a
        .client
        .delete(a.url(&format!("/conv/{}", first.conversation_id())))
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success());
    let (status, _) = b.get_json(&format!("/conv/{}", first.conversation_id())).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn an_unreachable_postgres_stops_the_start_naming_where_without_the_password() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut settings = Settings::for_tests();
    settings.store = StoreKind::Postgres(PostgresUrl(format!(
        "postgres://chatgate:hunter2-secret@127.0.0.1:{port}/chat"
    )));
    let refused = Application::build(settings).await.err().expect("the start fails");
    let message = refused.to_string();
    assert!(
        message.contains(&format!("postgres://chatgate@127.0.0.1:{port}/chat")),
        "{message}"
    );
    assert!(message.contains("cannot open the conversation store"), "{message}");
    assert!(message.contains("Connection refused"), "the reason is given: {message}");
    assert!(!message.contains("hunter2"), "{message}");
}
