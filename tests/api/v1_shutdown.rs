//! SIGTERM while `/v1` streams, on the real binary: a `/v1` answer gets the shutdown grace as
//! a generation does, then ends with an in-band `gateway_stopping` error, and the process
//! exits 0.

use crate::helpers::{Event, Live, upstream_cancelled};
use crate::shutdown::Gateway;
use mockllm::MockLlm;
use serde_json::{Value, json};
use std::time::Duration;

async fn v1_stream(gateway: &Gateway, content: &str) -> Live {
    let response = gateway
        .client
        .post(gateway.url("/v1/chat/completions"))
        .json(&json!({"messages": [{"role": "user", "content": content}], "stream": true}))
        .send()
        .await
        .expect("the gateway answers");
    assert_eq!(response.status(), 200);
    Live::new(response)
}

/// The chunk objects among `events` (not comments, not `[DONE]`).
fn chunks(events: &[Event]) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e.comment.is_none() && e.data != "[DONE]")
        .map(|e| serde_json::from_str(&e.data).expect("JSON"))
        .collect()
}

fn text(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

#[tokio::test]
async fn sigterm_lets_a_short_v1_answer_in_flight_finish_with_done() {
    let mock = MockLlm::start("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut gateway = Gateway::start(&dir.path().join("chatgate.db"), &mock, &[]).await;
    let mut sse = v1_stream(&gateway, "count [mock:words=8] [mock:delay=100]").await;
    sse.next().await.expect("the role chunk");
    sse.next().await.expect("a first word");
    gateway.signal("TERM");

    let stream = sse.rest(Duration::from_secs(10)).await;
    assert_eq!(stream.events.last().unwrap().data, "[DONE]");
    assert_eq!(text(&chunks(&stream.events)), "Echo: count w1 w2 w3 w4 w5 w6 w7 w8");
    let status = gateway.exits_within(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{status}");
    assert_eq!(mock.stats().completed, 1);
}

#[tokio::test]
async fn after_the_shutdown_grace_a_v1_answer_ends_with_an_in_band_gateway_stopping_error() {
    let mock = MockLlm::start("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut gateway = Gateway::start(&dir.path().join("chatgate.db"), &mock, &["--shutdown-grace", "1"]).await;
    let mut sse = v1_stream(&gateway, "tell me a long story [mock:words=1000] [mock:delay=50]").await;
    for _ in 0..3 {
        sse.next().await.expect("the answer streams");
    }
    let at_signal = text(&chunks(&sse.seen));
    gateway.signal("TERM");

    let stream = sse.rest(Duration::from_secs(15)).await;
    let chunks = chunks(&stream.events);
    let (last, before) = chunks.split_last().unwrap();
    assert_eq!(last["error"]["code"], "gateway_stopping", "{last}");
    let text = text(before);
    assert!(
        text.len() > at_signal.len() && text.starts_with(&at_signal),
        "the answer went on during the grace: {text:?}"
    );
    assert!(stream.events.iter().all(|e| e.data != "[DONE]"));
    let status = gateway.exits_within(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{status}");
    let stats = upstream_cancelled(&mock, Duration::from_secs(5), "the upstream request is dropped").await;
    assert_eq!(stats.completed, 0, "{stats:?}");
}
