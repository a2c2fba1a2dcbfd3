//! How the gateway reaches a plain-HTTP upstream: one kept-alive connection for answers in
//! a row, a new one when the upstream closed it, a connection dropped before the answer
//! tried again, an idle connection the upstream closed let go, a proxy from the environment
//! honoured, and an answer out of HTTP's shape ended with the reason.

use crate::helpers::{KEY, assert_error};
use crate::shutdown::Gateway;
use crate::upstream_errors::{app_against, assert_nothing_stored};
use mockllm::MockLlm;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the raw upstream does with its connections.
#[derive(Clone, Copy, PartialEq)]
enum Connections {
    /// Keeps each open for the next request.
    KeptAlive,
    /// Closes each after its answer.
    ClosedAfterEach,
    /// Reads the first connection's request and closes it without an answer (as a
    /// server that restarts would); keeps the others open.
    FirstDropped,
    /// Closes each a moment after its answer, as a server whose keep-alive timeout is
    /// short, and then waits for the gateway to close its end.
    ClosedWhileIdle,
}

/// An OpenAI-compatible upstream on raw sockets that counts the connections made to it
/// and answers every request with "one two".
async fn upstream(connections: Connections) -> (String, Arc<AtomicUsize>) {
    let (url, accepted, _) = upstream_counting_let_go(connections).await;
    (url, accepted)
}

/// As [`upstream`], and also counts the connections it closed while idle whose other end
/// the gateway then closed too.
async fn upstream_counting_let_go(connections: Connections) -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let let_go = Arc::new(AtomicUsize::new(0));
    let (count, gone) = (Arc::clone(&accepted), Arc::clone(&let_go));
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let first = count.fetch_add(1, Ordering::SeqCst) == 0;
            let drop_it = first && connections == Connections::FirstDropped;
            let gone = Arc::clone(&gone);
            tokio::spawn(async move {
                let mut socket = socket;
                serve(&mut socket, connections, drop_it).await;
                if connections == Connections::ClosedWhileIdle {
                    let _ = socket.shutdown().await;
                    // Anything but the gateway closing its end is a failure of the test.
                    let mut rest = [0u8; 64];
                    if let Ok(0) = socket.read(&mut rest).await {
                        gone.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
    });
    (url, accepted, let_go)
}

/// Answers the requests on `socket` until the client closes it, or until `connections`
/// says to stop.
async fn serve(socket: &mut TcpStream, connections: Connections, drop_unanswered: bool) {
    let close_after_each = connections == Connections::ClosedAfterEach;
    let mut buf = Vec::new();
    loop {
        if !read_request(socket, &mut buf).await {
            return;
        }
        if drop_unanswered {
            return;
        }
        let content =
            |text: &str| json!({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]});
        let finish = json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
        let mut response =
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        for data in [content("one"), content(" two"), finish] {
            push_event(&mut response, &data.to_string());
        }
        push_event(&mut response, "[DONE]");
        response.extend_from_slice(b"0\r\n\r\n");
        if socket.write_all(&response).await.is_err() || close_after_each {
            return;
        }
        if connections == Connections::ClosedWhileIdle {
            // Long enough for the gateway to keep the connection for its next answer.
            tokio::time::sleep(Duration::from_millis(300)).await;
            return;
        }
    }
}

/// Reads one request from `socket` (its head, then Content-Length bytes of body) and takes
/// it from `buf`, which holds what was read and not yet taken; false once the client has
/// closed.
async fn read_request(socket: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if !read_more(socket, buf).await {
            return false;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        if !read_more(socket, buf).await {
            return false;
        }
    }
    buf.drain(..head_end + length);
    true
}

async fn read_more(socket: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    match socket.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// `data: …` as one chunk of a chunked body.
fn push_event(response: &mut Vec<u8>, data: &str) {
    let event = format!("data: {data}\n\n");
    response.extend_from_slice(format!("{:x}\r\n{event}\r\n", event.len()).as_bytes());
}

/// Three answers in a row through the gateway, from an upstream that treats its
/// connections as `connections` says: how many connections it took.
async fn connections_for_three_answers(connections: Connections) -> usize {
    let (url, accepted) = upstream(connections).await;
    let app = app_against(url).await;
    for turn in 0..3 {
        let stream = app.turn(json!({"content": "hi"})).await;
        assert_eq!(stream.text(), "one two", "turn {turn}");
        assert_eq!(
            stream.last()["message"]["status"],
            "finished_successfully",
            "turn {turn}"
        );
    }
    accepted.load(Ordering::SeqCst)
}

#[tokio::test]
async fn answers_in_a_row_share_one_kept_alive_upstream_connection() {
    assert_eq!(connections_for_three_answers(Connections::KeptAlive).await, 1);
}

#[tokio::test]
async fn a_connection_the_upstream_closed_is_not_used_again() {
    // Each answer still comes whole, on a new connection.
    assert_eq!(connections_for_three_answers(Connections::ClosedAfterEach).await, 3);
}

#[tokio::test]
async fn a_connection_dropped_before_the_answer_is_tried_again_unseen() {
    // The first try fails before any byte of an answer: it is retried (on a new
    // connection), and the client sees only the answer; the rest share that connection.
    assert_eq!(connections_for_three_answers(Connections::FirstDropped).await, 2);
}

#[tokio::test]
async fn an_idle_connection_the_upstream_closed_is_let_go() {
    // The gateway closes its end too, with no new answer asked for (a socket left in
    // CLOSE_WAIT holds a file descriptor), and the next answer comes on a new connection.
    let (url, accepted, let_go) = upstream_counting_let_go(Connections::ClosedWhileIdle).await;
    let app = app_against(url).await;
    assert_eq!(app.turn(json!({"content": "hi"})).await.text(), "one two");
    let waited = tokio::time::timeout(Duration::from_secs(30), async {
        while let_go.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "the gateway kept a connection the upstream had closed");
    assert_eq!(app.turn(json!({"content": "hi"})).await.text(), "one two");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_proxy_set_in_the_environment_carries_plain_http_requests() {
    // The upstream's name resolves nowhere: only the proxy (a mock, which answers whatever
    // URL a request names) can answer.
    let proxy = MockLlm::start("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let proxy_url = format!("http://127.0.0.1:{}", proxy.port());
    let gateway = Gateway::start_with_env(
        &dir.path().join("chatgate.db"),
        &["--upstream-url", "http://upstream.invalid/v1", "--model", "mock-model"],
        &[("OPENAI_API_KEY", KEY), ("HTTP_PROXY", &proxy_url)],
    )
    .await;
    let answer = gateway
        .client
        .post(gateway.url("/v1/chat/completions"))
        .json(&json!({"model": "mock-model", "messages": [{"role": "user", "content": "hello proxy"}]}))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    let status = answer.status();
    let body: Value = answer.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    let text = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.contains("hello proxy"), "{text}");
    assert_eq!(proxy.stats().requests, 1);
}

/// An upstream that reads each request and answers with `answer`, then closes; returns
/// its base URL.
async fn raw_upstream(answer: &'static [u8]) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                if read_request(&mut socket, &mut Vec::new()).await {
                    let _ = socket.write_all(answer).await;
                    let _ = socket.shutdown().await;
                }
            });
        }
    });
    url
}

#[tokio::test]
async fn an_upstream_whose_chunked_body_breaks_its_framing_ends_the_answer_with_the_reason() {
    let first = br#"data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"so far"},"finish_reason":null}]}"#;
    let answer: &'static [u8] = Box::leak(
        [
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n".as_slice(),
            format!("{:x}\r\n", first.len() + 2).as_bytes(),
            first,
            b"\n\n\r\n",
            // not a chunk size
            b"zz\r\n",
        ]
        .concat()
        .into_boxed_slice(),
    );
    let app = app_against(raw_upstream(answer).await).await;
    let stream = app.ask("go").await;
    let last = stream.last();
    assert_eq!(last["message"]["status"], "error");
    assert_eq!(last["message"]["content"]["parts"][0], "so far");
    assert_eq!(last["error"]["code"], "upstream_disconnected");
    let message = last["error"]["message"].as_str().unwrap();
    assert!(message.contains("chunked body is malformed"), "{message}");
    stream.assert_closed_properly();
}

#[tokio::test]
async fn an_upstream_that_does_not_answer_in_http_is_a_502_with_the_reason() {
    let app = app_against(raw_upstream(b"SSH-2.0-OpenSSH_9.2\r\n\r\n").await).await;
    let response = app.post_conv(json!({"content": "anyone?"})).await;
    let body = assert_error(response, 502, "upstream_unreachable").await;
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("not HTTP/1.1"), "{message}");
    assert_nothing_stored(&app).await;
}
