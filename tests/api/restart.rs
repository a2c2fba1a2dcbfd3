//! A process killed outright (SIGKILL: no shutdown at all) and started again on the same
//! SQLite file: the answer it was running is found `status:"error"`, code
//! `gateway_stopped`, with the text of its last checkpoint, and a stream request replays it.

use crate::helpers::{is_frame, text_of};
use crate::shutdown::{Gateway, stored_text};
use mockllm::MockLlm;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

/// Checkpoints are at most a second apart while text arrives (the contract); a frame seen
/// this long before the kill is on disk.
const CHECKPOINTED: Duration = Duration::from_millis(1500);

/// Streams `content` (a long paced answer) for 2.5 s, then SIGKILLs the gateway:
/// (conversation id, message id, the last frame seen at least [`CHECKPOINTED`] before the
/// kill, which must be on disk).
pub async fn kill_mid_stream(gateway: &mut Gateway, content: &str) -> (String, String, Value) {
    let mut sse = gateway.stream(content).await;
    let first = sse.next_frame().await;
    let conversation = first["conversation_id"].as_str().unwrap().to_owned();
    let message = first["message"]["id"].as_str().unwrap().to_owned();
    let reading = Instant::now();
    while reading.elapsed() < Duration::from_millis(2500) {
        sse.next_frame().await;
    }
    let killed = Instant::now();
    gateway.sigkill();
    let remembered = sse
        .seen
        .iter()
        .zip(&sse.arrived)
        .rev()
        .find(|(e, at)| is_frame(e) && killed.duration_since(**at) >= CHECKPOINTED)
        .map(|(e, _)| serde_json::from_str::<Value>(&e.data).unwrap())
        .expect("a frame seen well before the kill");
    (conversation, message, remembered)
}

/// A long paced answer streamed for a while, then SIGKILL: (conversation id, message id,
/// the text of the last frame seen at least [`CHECKPOINTED`] before the kill).
async fn an_answer_killed_mid_stream(db: &Path, mock: &MockLlm) -> (String, String, String) {
    let mut gateway = Gateway::start(db, mock, &[]).await;
    let (conversation, message, remembered) =
        kill_mid_stream(&mut gateway, "tell me a long story [mock:words=300] [mock:delay=30]").await;
    let remembered = text_of(&remembered).to_owned();
    assert!(
        remembered.starts_with("Echo: tell me a long story w1"),
        "{remembered:?}"
    );
    (conversation, message, remembered)
}

#[tokio::test]
async fn an_answer_cut_off_by_sigkill_comes_back_as_gateway_stopped_with_its_checkpointed_text() {
    let mock = MockLlm::start("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chatgate.db");
    let (conversation, message, remembered) = an_answer_killed_mid_stream(&db, &mock).await;

    let gateway = Gateway::start(&db, &mock, &[]).await;
    let stored = gateway.stored(&conversation, &message).await;
    assert_eq!(stored["status"], "error", "{stored}");
    assert_eq!(stored["metadata"]["error"]["code"], "gateway_stopped", "{stored}");
    let text = stored_text(&stored).to_owned();
    assert!(
        !text.is_empty() && text.starts_with(&remembered),
        "the stored text {text:?} holds at least what was checkpointed, {remembered:?}"
    );
    assert!(!text.contains("w300"), "the answer was cut short: {text:?}");

    let replay = gateway
        .get_stream(&conversation, "", None)
        .await
        .rest(Duration::from_secs(10))
        .await;
    assert_eq!(
        replay.events.len(),
        4,
        "retry, one frame, [DONE], close: {:?}",
        replay.events
    );
    assert_eq!(replay.events[0].retry.as_deref(), Some("1000"));
    let frames = replay.frames();
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0]["message"]["id"], message.as_str());
    assert_eq!(frames[0]["message"]["status"], "error");
    assert_eq!(frames[0]["error"]["code"], "gateway_stopped", "{}", frames[0]);
    assert_eq!(text_of(&frames[0]), text);
    replay.assert_closed_properly();
}

#[tokio::test]
async fn a_resume_after_a_restart_with_a_frame_id_past_the_checkpoint_ends_at_once() {
    let mock = MockLlm::start("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chatgate.db");
    let (conversation, message, _) = an_answer_killed_mid_stream(&db, &mock).await;

    let gateway = Gateway::start(&db, &mock, &[]).await;
    let resumed = gateway
        .get_stream(&conversation, "?delta=true", Some("1000000"))
        .await
        .rest(Duration::from_secs(10))
        .await;
    assert_eq!(resumed.events[0].retry.as_deref(), Some("1000"));
    let frames = resumed.frames();
    assert_eq!(frames.len(), 1, "{frames:?}");
    let last = &frames[0];
    assert_eq!(last["message"]["id"], message.as_str());
    assert_eq!(last["message"]["status"], "error", "{last}");
    assert_eq!(last["error"]["code"], "gateway_stopped", "{last}");
    assert_eq!(text_of(last), "", "nothing follows a point past the end: {last}");
    resumed.assert_closed_properly();
}
