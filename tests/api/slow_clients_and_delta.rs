//! A client that reads slower than tokens arrive gets fewer, fuller frames and loses
//! nothing; delta mode sends only new text.

use crate::helpers::*;
use serde_json::{Value, json};
use std::time::Duration;

/// `POST /conv` for an answer of `words` words that the mock sends as fast as it can;
/// the answer has started (200).
async fn fast_answer(app: &TestApp, question: &str, words: usize) -> reqwest::Response {
    let response = app
        .post_conv(json!({"content": format!("{question} [mock:words={words}] [mock:delay=0]")}))
        .await;
    assert_eq!(response.status(), 200);
    response
}

#[tokio::test]
async fn a_slow_reader_gets_coalesced_frames_that_lose_nothing() {
    let app = spawn_app().await;
    let words = 4000;
    let response = fast_answer(&app, "flood", words).await;
    // Read nothing while the whole answer arrives upstream, so the socket fills up.
    app.mock
        .wait_for_stats(Duration::from_secs(10), |s| s.completed == 1)
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stream = read_stream(response).await;

    stream.assert_finished();
    let expected: String = std::iter::once("Echo: flood".to_owned())
        .chain((1..=words).map(|i| format!(" w{i}")))
        .collect();
    assert_eq!(stream.text(), expected, "the last frame has the whole answer");
    let frames = stream.frames();
    let chunks = words + 2;
    assert!(
        frames.len() < chunks,
        "{} frames for {chunks} chunks: nothing was coalesced",
        frames.len()
    );
    let mut last_id = 0;
    let mut last_len = 0;
    for (event, frame) in stream.events.iter().filter(|e| e.id.is_some()).zip(&frames) {
        let id: u64 = event.id.as_ref().unwrap().parse().unwrap();
        assert!(id > last_id, "ids rise");
        last_id = id;
        let text = frame["message"]["content"]["parts"][0].as_str().unwrap();
        assert!(
            expected.starts_with(text) && text.len() >= last_len,
            "every frame is a longer prefix"
        );
        last_len = text.len();
    }
    assert_eq!(
        last_id,
        chunks as u64 + 1,
        "the last frame's id counts every delta, plus itself"
    );
}

#[tokio::test]
async fn delta_mode_frames_carry_only_new_text() {
    let app = spawn_app().await;
    let stream = app
        .turn(json!({"content": "deltas please [mock:words=50]", "delta": true}))
        .await;
    stream.assert_finished();
    let frames = stream.frames();
    let parts: Vec<&str> = frames
        .iter()
        .map(|f| f["message"]["content"]["parts"][0].as_str().unwrap())
        .collect();
    assert_eq!(parts[0], "Echo:");
    // The `s` could be the start of the upstream key (`sk-…`), but a tail that short is not
    // held back: each chunk is its frame.
    assert_eq!(parts[1], " deltas");
    let whole: String = parts.concat();
    let expected: String = std::iter::once("Echo: deltas please".to_owned())
        .chain((1..=50).map(|i| format!(" w{i}")))
        .collect();
    assert_eq!(whole, expected, "appending every frame's text gives the answer");
    assert_eq!(
        *parts.last().unwrap(),
        "",
        "the last frame adds nothing that was already sent"
    );
    assert_eq!(stream.last()["message"]["status"], "finished_successfully");
    // the stored answer is whole all the same
    let stored = app
        .stored_message(&stream.conversation_id(), &stream.message_id())
        .await;
    assert_eq!(stored["content"]["parts"][0], expected);
}

#[tokio::test]
async fn delta_mode_bytes_grow_linearly_with_the_answer() {
    let app = spawn_app().await;
    let bytes = |stream: &Stream| stream.events.iter().map(|e| e.data.len()).sum::<usize>();
    // Paced, so that the reader keeps up and gets a frame for every chunk: a reader
    // behind the upstream gets chunks that came together in one frame.
    let short = app
        .turn(json!({"content": "x [mock:words=200] [mock:delay=1]", "delta": true}))
        .await;
    let long = app
        .turn(json!({"content": "x [mock:words=2000] [mock:delay=1]", "delta": true}))
        .await;
    let full = app.turn(json!({"content": "x [mock:words=2000] [mock:delay=1]"})).await;
    let ratio = bytes(&long) as f64 / bytes(&short) as f64;
    assert!(ratio < 13.0, "10× the words cost {ratio:.1}× the bytes in delta mode");
    assert!(
        bytes(&full) > 5 * bytes(&long),
        "full frames cost far more: {} vs {}",
        bytes(&full),
        bytes(&long)
    );
    let texts: Vec<Value> = long
        .frames()
        .iter()
        .map(|f| f["message"]["content"]["parts"][0].clone())
        .collect();
    assert!(
        texts.iter().all(|t| t.as_str().unwrap().len() < 40),
        "no frame repeats earlier text"
    );
}

#[tokio::test]
async fn a_first_reader_that_stops_reading_holds_up_neither_the_answer_nor_another_reader() {
    let app = spawn_app().await;
    let words = 3000;
    let response = fast_answer(&app, "hold on", words).await;
    // The request that asked reads its first frame, then nothing while the answer streams.
    let mut first = Live::new(response);
    let opening = first.next_frame().await;
    let conversation = opening["conversation_id"].as_str().unwrap().to_owned();

    let watcher = read_stream(app.get_stream(&conversation, "", None).await).await;
    watcher.assert_finished();
    assert_eq!(watcher.text(), echo("hold on", words));
    app.mock
        .wait_for_stats(Duration::from_secs(10), |s| s.completed == 1)
        .await;

    let rest = first.rest(Duration::from_secs(30)).await;
    rest.assert_closed_properly();
    assert_eq!(
        text_of(&rest.last()),
        echo("hold on", words),
        "nothing lost for the slow one"
    );
}
