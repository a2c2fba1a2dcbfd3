//! Many streams at once each get their own answer.

use crate::helpers::*;
use serde_json::json;
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_streams_each_get_their_own_answer() {
    let app = Arc::new(spawn_app().await);
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let app = Arc::clone(&app);
            tokio::spawn(async move {
                let stream = app
                    .turn(json!({"content": format!("stream {i} [mock:words=20] [mock:delay=5]")}))
                    .await;
                stream.assert_finished();
                assert_eq!(stream.frames().len(), 24);
                (i, stream.text(), stream.conversation_id())
            })
        })
        .collect();
    let mut conversations = std::collections::HashSet::new();
    for task in tasks {
        let (i, text, conversation) = task.await.unwrap();
        assert!(text.starts_with(&format!("Echo: stream {i} w1")), "{text}");
        assert!(text.ends_with(" w20"));
        conversations.insert(conversation);
    }
    assert_eq!(conversations.len(), 50);
    let (_, list) = app.get_json("/conversations").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 50);
    assert_eq!(app.mock.stats().completed, 50);
}
