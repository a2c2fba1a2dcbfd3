//! `spawn_app()` and a small SSE reader for what a client sees.

use chatgate::config::{Settings, StoreKind, UpstreamKind};
use chatgate::startup::Application;
use futures::StreamExt;
use mockllm::MockLlm;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

pub const KEY: &str = "sk-test-abcdefghijklmnopqrstuvwxyz0123";

pub struct TestApp {
    pub address: String,
    pub mock: MockLlm,
    pub client: reqwest::Client,
    pub handle: actix_web::dev::ServerHandle,
    pub generations: std::sync::Arc<dyn chatgate::generation::Generations>,
}

/// The gateway on a free port, on the memory store, against a fresh mock upstream.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(adjust: impl FnOnce(&mut Settings)) -> TestApp {
    let mock = MockLlm::start("127.0.0.1:0").expect("the mock upstream starts");
    let mut settings = Settings::for_tests();
    settings.upstream = UpstreamKind::OpenAi {
        base_url: mock.base_url(),
        key: Some(KEY.to_owned()),
    };
    settings.model = "mock-model".into();
    settings.prompts_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("prompts");
    adjust(&mut settings);
    start(settings, mock).await
}

/// The gateway on a SQLite file.
pub async fn spawn_app_on(db: &Path, mock: MockLlm) -> TestApp {
    let mut settings = Settings::for_tests();
    settings.upstream = UpstreamKind::OpenAi {
        base_url: mock.base_url(),
        key: Some(KEY.to_owned()),
    };
    settings.store = StoreKind::Sqlite(db.to_owned());
    start(settings, mock).await
}

/// The gateway with `settings` as they are; `mock` is the one the test talks to.
pub async fn start(settings: Settings, mock: MockLlm) -> TestApp {
    let app = Application::build(settings).await.expect("the gateway builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let handle = app.handle();
    let generations = app.generations();
    tokio::spawn(app.run_until_stopped());
    TestApp {
        address,
        mock,
        client: reqwest::Client::new(),
        handle,
        generations,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn post_conv(&self, body: Value) -> reqwest::Response {
        self.client
            .post(self.url("/conv"))
            .header("Content-Type", "application/json")
            .header("Accept", "text/event-stream")
            .json(&body)
            .send()
            .await
            .expect("the gateway answers")
    }

    /// A whole turn that is expected to stream.
    pub async fn turn(&self, body: Value) -> Stream {
        let response = self.post_conv(body).await;
        assert_eq!(response.status(), 200, "body: {:?}", response.text().await);
        read_stream(response).await
    }

    /// A first turn with just `content`.
    pub async fn ask(&self, content: &str) -> Stream {
        self.turn(json!({"content": content})).await
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let response = self
            .client
            .get(self.url(path))
            .send()
            .await
            .expect("the gateway answers");
        let status = response.status().as_u16();
        (status, response.json().await.expect("a JSON body"))
    }

    /// `DELETE /conv/{conversation}`.
    pub async fn delete_conversation(&self, conversation: &str) -> reqwest::Response {
        self.client
            .delete(self.url(&format!("/conv/{conversation}")))
            .send()
            .await
            .expect("the gateway answers")
    }

    /// `POST /conv` with `"background": true`: the 202 body.
    pub async fn background(&self, mut body: Value) -> Value {
        body["background"] = json!(true);
        let response = self.post_conv(body).await;
        assert_eq!(response.status(), 202, "body: {:?}", response.text().await);
        response.json().await.expect("a JSON body")
    }

    /// `GET /conv/{conversation}/stream` with `query` (`""` or `?…`), and a `Last-Event-ID`.
    pub async fn get_stream(&self, conversation: &str, query: &str, last_event_id: Option<&str>) -> reqwest::Response {
        let mut request = self
            .client
            .get(self.url(&format!("/conv/{conversation}/stream{query}")))
            .header("Accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        request.send().await.expect("the gateway answers")
    }

    /// `POST /conv/{conversation}/stop`, with `body` if given: (status, JSON body).
    pub async fn stop(&self, conversation: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.client.post(self.url(&format!("/conv/{conversation}/stop")));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("the gateway answers");
        let status = response.status().as_u16();
        (status, response.json().await.expect("a JSON body"))
    }

    /// Waits until no generation is live any more.
    pub async fn registry_empties(&self) {
        tokio::time::timeout(Duration::from_secs(10), self.generations.drained())
            .await
            .expect("every generation ends and leaves the registry");
    }

    /// Waits until the stored answer `message_id` is no longer in progress.
    pub async fn stored_message(&self, conversation_id: &str, message_id: &str) -> Value {
        for _ in 0..200 {
            let (status, conv) = self.get_json(&format!("/conv/{conversation_id}")).await;
            if status == 200 {
                let message = conv["mapping"][message_id]["message"].clone();
                if message["status"] != "in_progress" && !message.is_null() {
                    return message;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("message {message_id} was never stored as ended");
    }
}

/// One event as a client sees it. A comment line is an event of its own here.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
    pub comment: Option<String>,
    pub retry: Option<String>,
}

/// Everything a streamed response carried.
#[derive(Debug)]
pub struct Stream {
    pub events: Vec<Event>,
}

/// A background answer of `words` extra words, one every `delay` ms: (conversation, message).
pub async fn long_answer(app: &TestApp, words: usize, delay: u64) -> (String, String) {
    let accepted = app
        .background(json!({"content": format!("tell me [mock:words={words}] [mock:delay={delay}]")}))
        .await;
    (
        accepted["conversation_id"].as_str().unwrap().to_owned(),
        accepted["message_id"].as_str().unwrap().to_owned(),
    )
}

/// The mock's echo of `prompt` (directives removed) with `words` extra words.
pub fn echo(prompt: &str, words: usize) -> String {
    std::iter::once(format!("Echo: {prompt}"))
        .chain((1..=words).map(|i| format!(" w{i}")))
        .collect()
}

/// A stream read event by event, as a live client reads it.
pub struct Live {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
    pub seen: Vec<Event>,
    /// When each event of `seen` arrived.
    pub arrived: Vec<std::time::Instant>,
}

impl Live {
    pub fn new(response: reqwest::Response) -> Self {
        Self {
            body: response.bytes_stream().boxed(),
            buffer: String::new(),
            seen: Vec::new(),
            arrived: Vec::new(),
        }
    }

    /// The next event, or `None` at the end of the stream.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let event = parse_events(&block).events.pop().expect("one event");
                self.seen.push(event.clone());
                self.arrived.push(std::time::Instant::now());
                return Some(event);
            }
            let chunk = tokio::time::timeout(Duration::from_secs(30), self.body.next())
                .await
                .expect("the stream moves within 30 s")?;
            self.buffer
                .push_str(std::str::from_utf8(&chunk.expect("the stream reads")).expect("UTF-8"));
        }
    }

    /// Reads until a frame with the id `id` or higher has arrived; returns that frame.
    pub async fn until_id(&mut self, id: u64) -> Value {
        loop {
            let event = self.next().await.expect("the stream goes on");
            if let Some(n) = &event.id
                && n.parse::<u64>().unwrap() >= id
            {
                return serde_json::from_str(&event.data).unwrap();
            }
        }
    }

    /// The next data frame (skipping `retry` and comments), as JSON.
    pub async fn next_frame(&mut self) -> Value {
        loop {
            let event = self.next().await.expect("the stream goes on");
            if is_frame(&event) {
                return serde_json::from_str(&event.data).expect("a frame is JSON");
            }
        }
    }

    /// Reads the rest of the stream.
    pub async fn finish(mut self) -> Stream {
        while self.next().await.is_some() {}
        Stream { events: self.seen }
    }

    /// Reads the rest of the stream, which must end within `within`.
    pub async fn rest(self, within: Duration) -> Stream {
        tokio::time::timeout(within, self.finish())
            .await
            .unwrap_or_else(|_| panic!("the stream ends within {within:?}"))
    }
}

/// Whether an event is a data frame (not `retry`, a comment, `[DONE]` or `close`).
pub fn is_frame(event: &Event) -> bool {
    event.comment.is_none() && event.retry.is_none() && event.event.is_none() && event.data != "[DONE]"
}

/// The text and id of a frame event.
pub fn text_of(frame: &Value) -> &str {
    frame["message"]["content"]["parts"][0].as_str().expect("parts[0]")
}

/// Reads a response to its end; a stream that never ends fails the test instead of hanging it.
pub async fn read_stream(response: reqwest::Response) -> Stream {
    let read = async {
        let mut body = Vec::new();
        let mut chunks = response.bytes_stream();
        while let Some(chunk) = chunks.next().await {
            body.extend_from_slice(&chunk.expect("the stream reads to its end"));
        }
        body
    };
    let body = tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("the stream ends within a minute");
    parse_events(std::str::from_utf8(&body).expect("UTF-8"))
}

pub fn parse_events(text: &str) -> Stream {
    let mut events = Vec::new();
    for block in text.split("\n\n").filter(|b| !b.is_empty()) {
        let mut event = Event {
            id: None,
            event: None,
            data: String::new(),
            comment: None,
            retry: None,
        };
        for line in block.lines() {
            if let Some(c) = line.strip_prefix(':') {
                event.comment = Some(c.trim().to_owned());
            } else if let Some(v) = line.strip_prefix("id: ") {
                event.id = Some(v.to_owned());
            } else if let Some(v) = line.strip_prefix("event: ") {
                event.event = Some(v.to_owned());
            } else if let Some(v) = line.strip_prefix("retry: ") {
                event.retry = Some(v.to_owned());
            } else if let Some(v) = line.strip_prefix("data: ") {
                event.data = v.to_owned();
            } else {
                panic!("unexpected line {line:?} in {block:?}");
            }
        }
        events.push(event);
    }
    Stream { events }
}

impl Stream {
    /// The JSON message frames, in order.
    pub fn frames(&self) -> Vec<Value> {
        self.events
            .iter()
            .filter(|e| is_frame(e))
            .map(|e| serde_json::from_str(&e.data).expect("a frame is JSON"))
            .collect()
    }

    pub fn last(&self) -> Value {
        self.frames().pop().expect("at least one frame")
    }

    pub fn text(&self) -> String {
        self.last()["message"]["content"]["parts"][0]
            .as_str()
            .expect("parts[0]")
            .to_owned()
    }

    pub fn conversation_id(&self) -> String {
        self.last()["conversation_id"]
            .as_str()
            .expect("conversation_id")
            .to_owned()
    }

    pub fn message_id(&self) -> String {
        self.last()["message"]["id"].as_str().expect("message.id").to_owned()
    }

    /// Asserts the contract's ending: `[DONE]`, then `event: close` / `data: close`.
    pub fn assert_closed_properly(&self) {
        let n = self.events.len();
        assert!(n >= 3, "too few events: {:?}", self.events);
        assert_eq!(self.events[n - 2].data, "[DONE]", "{:?}", self.events);
        assert_eq!(self.events[n - 1].event.as_deref(), Some("close"));
        assert_eq!(self.events[n - 1].data, "close");
    }

    pub fn assert_finished(&self) {
        let last = self.last();
        assert_eq!(last["message"]["status"], "finished_successfully", "{last}");
        assert_eq!(last["message"]["end_turn"], true);
        assert_eq!(last["error"], Value::Null);
        self.assert_closed_properly();
    }
}

/// The messages of the `n`th request the mock received, as (role, content) pairs.
pub fn sent_messages(mock: &MockLlm, n: usize) -> Vec<(String, String)> {
    let requests = mock.requests();
    requests[n]["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap().to_owned(),
                m["content"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Asserts a JSON error response with the contract's shape.
pub async fn assert_error(response: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status().as_u16(), status);
    let body: Value = response.json().await.expect("a JSON error body");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(body["error"]["type"].is_string(), "{body}");
    body
}

/// Drops the scripts `mock` still holds (and its counts): a try that failed on the way (a
/// pooled connection the mock had closed) and was retried leaves one behind.
pub async fn forget_scripts(mock: &MockLlm) {
    let url = format!("http://127.0.0.1:{}/_mock/reset", mock.port());
    let response = reqwest::Client::new().post(url).send().await.expect("the mock answers");
    assert_eq!(response.status(), 204);
}

/// Another process's write lock on a SQLite file, held past the gateway's busy timeout:
/// every write the gateway tries fails until [`WriteLock::release`].
pub struct WriteLock {
    release: std::sync::mpsc::Sender<()>,
    holder: std::thread::JoinHandle<()>,
}

impl WriteLock {
    /// Returns once the lock is held.
    pub fn take(db: &Path) -> Self {
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (locked, is_locked) = std::sync::mpsc::channel::<()>();
        let db = db.to_owned();
        let holder = std::thread::spawn(move || {
            let conn = rusqlite::Connection::open(&db).unwrap();
            conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
            locked.send(()).unwrap();
            let _ = released.recv();
            conn.execute_batch("COMMIT").unwrap();
        });
        is_locked.recv().expect("the lock is taken");
        Self { release, holder }
    }

    pub fn release(self) {
        self.release.send(()).unwrap();
        self.holder.join().unwrap();
    }
}

/// Waits up to `within` for the mock to see one upstream request cancelled (the gateway
/// dropped it), failing with `why` and the mock's counts if it does not; the counts.
pub async fn upstream_cancelled(mock: &MockLlm, within: Duration, why: &str) -> mockllm::Stats {
    let stats = mock.wait_for_stats(within, |s| s.cancelled == 1).await;
    assert_eq!(stats.cancelled, 1, "{why}: {stats:?}");
    stats
}
