//! The gateway on `--store postgres://…`: two gateways on one database are one history
//! (a conversation written through one is read and continued through the other), and a
//! database that cannot be reached stops the start with a reason.

use crate::helpers::*;
use crate::postgres_server::fresh_database;
use chatgate::config::{PostgresUrl, Settings, StoreKind, UpstreamKind};
use chatgate::startup::Application;
use mockllm::MockLlm;
use serde_json::json;
use std::time::Duration;

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

    let deleted = a.delete_conversation(&first.conversation_id()).await;
    assert!(deleted.status().is_success());
    let (status, _) = b.get_json(&format!("/conv/{}", first.conversation_id())).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn an_unreachable_postgres_stops_the_start_naming_where_without_the_password() {
    // A port nothing listens on.
    let port = crate::watched::free_port();
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

/// A TCP relay to PostgreSQL that a test can cut (every connection closed, new ones
/// refused) and restore: the database becoming unreachable while the gateway runs.
struct Cuttable {
    port: u16,
    open: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
}

impl Cuttable {
    async fn to(target: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = std::sync::Arc::new(tokio::sync::watch::channel(true).0);
        let relay_open = std::sync::Arc::clone(&open);
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if !*relay_open.borrow() {
                    // Refused: closed at once.
                    continue;
                }
                let mut cut = relay_open.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.wait_for(|open| !open) => {}
                    }
                });
            }
        });
        Self { port, open }
    }

    fn cut(&self) {
        self.open.send_replace(false);
    }

    fn restore(&self) {
        self.open.send_replace(true);
    }
}

fn port_in(url: &str) -> u16 {
    let after_host = url.rsplit_once(':').unwrap().1;
    after_host.split('/').next().unwrap().parse().unwrap()
}

/// (status, content) of message `id`, read from the database itself.
async fn row(url: &str, id: &str) -> (String, String) {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let id = uuid::Uuid::parse_str(id).unwrap();
    let row = client
        .query_one("SELECT status, content FROM messages WHERE id = $1", &[&id])
        .await
        .unwrap();
    let content: Vec<u8> = row.get(1);
    (row.get(0), String::from_utf8(content).unwrap())
}

#[tokio::test]
async fn postgres_unreachable_mid_answer_ends_it_with_store_failed_and_a_retry_stores_it_when_back() {
    let url = fresh_database().await;
    let relay = Cuttable::to(port_in(&url)).await;
    let relayed = url.replace(&format!(":{}/", port_in(&url)), &format!(":{}/", relay.port));
    let app = gateway_on(&relayed).await;
    let accepted = app
        .background(json!({"content": "cut off [mock:words=60] [mock:delay=20]"}))
        .await;
    let conversation = accepted["conversation_id"].as_str().unwrap().to_owned();
    let message = accepted["message_id"].as_str().unwrap().to_owned();
    let mut reader = Live::new(app.get_stream(&conversation, "", None).await);
    reader.until_id(5).await;
    // The turn is stored while the answer streams: wait for it before the cut.
    while app.get_json(&format!("/conv/{conversation}")).await.0 != 200 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    relay.cut();
    let ended = reader.rest(Duration::from_secs(60)).await;
    ended.assert_closed_properly();
    let last = ended.last();
    assert_eq!(last["message"]["status"], "error", "{last}");
    assert_eq!(last["error"]["code"], "store_failed", "{last}");
    assert_eq!(text_of(&last), echo("cut off", 60), "the text is all there");
    assert_eq!(
        row(&url, &message).await.0,
        "in_progress",
        "the database has not taken the end"
    );
    app.registry_empties().await;

    relay.restore();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while row(&url, &message).await.0 == "in_progress" && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        row(&url, &message).await,
        ("finished_successfully".into(), echo("cut off", 60)),
        "a retry stored the answer once the database was back"
    );
}

#[tokio::test]
async fn an_answer_announced_is_read_listed_continued_and_deleted_at_once_on_postgresql() {
    let url = fresh_database().await;
    let app = gateway_on(&url).await;
    crate::lifecycle::announced_answers_are_read_continued_and_deleted_at_once(&app, &app).await;
    crate::lifecycle::new_conversations_are_listed_at_once(&app).await;
}
