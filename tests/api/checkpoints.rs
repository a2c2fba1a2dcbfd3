//! A running answer's text reaches the SQLite file within a second, and a write the store
//! refuses never leaves an answer in progress while the gateway runs.

use crate::helpers::*;
use mockllm::MockLlm;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn stored_row(db: &std::path::Path, message: &str) -> (String, String) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row("SELECT status, content FROM messages WHERE id = ?1", [message], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })
    .unwrap()
}

#[tokio::test]
async fn a_running_answers_text_is_on_disk_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chatgate.db");
    let app = spawn_app_on(&db, MockLlm::start("127.0.0.1:0").unwrap()).await;
    let response = app
        .post_conv(json!({"content": "checkpoint me [mock:words=400] [mock:delay=20]"}))
        .await;
    let mut live = Live::new(response);
    let frame = live.until_id(10).await;
    let message = frame["message"]["id"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        let frame = live.until_id(live.seen.len() as u64 + 5).await;
        let seen_at = Instant::now();
        tokio::time::sleep(Duration::from_millis(1100).saturating_sub(seen_at.elapsed())).await;
        let (status, content) = stored_row(&db, &message);
        assert_eq!(status, "in_progress");
        assert!(
            content.starts_with(text_of(&frame)),
            "a second after a frame, the file holds its text: {} bytes stored, {} seen",
            content.len(),
            text_of(&frame).len()
        );
    }
    let stream = live.finish().await;
    stream.assert_finished();
    assert_eq!(
        stored_row(&db, &message),
        ("finished_successfully".into(), stream.text())
    );
}

#[tokio::test]
async fn a_failed_final_write_reaches_readers_as_store_failed_and_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chatgate.db");
    let app = spawn_app_on(&db, MockLlm::start("127.0.0.1:0").unwrap()).await;
    let accepted = app
        .background(json!({"content": "locked out [mock:words=30] [mock:delay=20]"}))
        .await;
    let conversation = accepted["conversation_id"].as_str().unwrap().to_owned();
    let message = accepted["message_id"].as_str().unwrap().to_owned();
    let mut reader = Live::new(app.get_stream(&conversation, "", None).await);
    reader.until_id(1).await;
    // The turn itself is written as the answer starts: let that write land first.
    while app.get_json(&format!("/conv/{conversation}")).await.0 != 200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Another process takes the database's write lock and keeps it past the gateway's
    // busy timeout: every write fails while it holds it.
    let lock = WriteLock::take(&db);

    let stream = reader.finish().await;
    stream.assert_closed_properly();
    let last = stream.last();
    assert_eq!(last["message"]["status"], "error");
    assert_eq!(last["error"]["code"], "store_failed", "{last}");
    assert_eq!(text_of(&last), echo("locked out", 30), "the text is still all there");

    // The metrics count the failed write.
    let m = app.metrics().await;
    let end = [("store", "sqlite"), ("write", "end")];
    assert!(
        m.exactly("chatgate_store_write_errors_total", &end) >= 1.0,
        "{}",
        m.text
    );
    let turn = [("store", "sqlite"), ("write", "turn")];
    assert_eq!(m.exactly("chatgate_store_write_errors_total", &turn), 0.0);

    // While the store refuses, the answer is not shown in progress.
    let (status, tree) = app.get_json(&format!("/conv/{conversation}")).await;
    assert_eq!(status, 200);
    let shown: &Value = &tree["mapping"][&message]["message"];
    assert_eq!(shown["status"], "finished_successfully");
    assert_eq!(shown["content"]["parts"][0], echo("locked out", 30));
    assert_eq!(
        stored_row(&db, &message).0,
        "in_progress",
        "the file has not taken it yet"
    );

    lock.release();
    let deadline = Instant::now() + Duration::from_secs(30);
    while stored_row(&db, &message).0 == "in_progress" && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        stored_row(&db, &message),
        ("finished_successfully".into(), echo("locked out", 30)),
        "a retry stored the answer once the lock was gone"
    );
}
