//! SIGTERM and SIGINT, on the real `chatgate` binary run as a child process on a SQLite
//! file: new connections are refused at once, running answers get the shutdown grace to
//! finish, then end with a last frame (code `gateway_stopping`) after their text is stored,
//! and the process exits 0.
//!
//! The process harness here ([`Gateway`]) is shared with `restart.rs`.

use crate::helpers::{KEY, Live, text_of};
use mockllm::MockLlm;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Removes the developer's own settings from `command`'s environment: every setting a
/// test gives is its own.
fn without_own_settings(command: &mut Command) {
    for (key, _) in std::env::vars() {
        if key.starts_with("OPENAI_") || key.starts_with("CHATGATE_") || key.starts_with("ANTHROPIC_") {
            command.env_remove(key);
        }
    }
}

/// The `chatgate` binary, to run in `dir` logging at `level`, with none of this process's
/// own settings in its environment and its output piped.
fn command_in(dir: &Path, level: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_chatgate"));
    command
        .env("RUST_LOG", level)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    without_own_settings(&mut command);
    command
}

fn directory_of(db: &Path) -> &Path {
    db.parent().expect("the database is in a directory")
}

/// The `chatgate` binary running as a child process. Dropping it kills the process (a
/// failing test leaves nothing behind) and, when the test is failing, prints its log.
pub struct Gateway {
    child: Child,
    exited: Option<ExitStatus>,
    pub address: String,
    pub port: u16,
    pub client: reqwest::Client,
    log: Arc<Mutex<String>>,
}

impl Gateway {
    /// Starts `chatgate` on the SQLite file `db`, against `mock`, with `extra` flags, and
    /// waits for the address it prints.
    pub async fn start(db: &Path, mock: &MockLlm, extra: &[&str]) -> Self {
        Self::start_logging(db, mock, extra, "info").await
    }

    /// Like [`Gateway::start`], logging at `level` (`RUST_LOG`).
    pub async fn start_logging(db: &Path, mock: &MockLlm, extra: &[&str], level: &str) -> Self {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut command = command_in(directory_of(db), level);
        command
            .args(["--listen", "127.0.0.1:0"])
            .args(["--upstream-url", &mock.base_url()])
            .args(["--model", "mock-model"])
            .arg("--store")
            .arg(format!("sqlite://{}", db.display()))
            .arg("--prompts-dir")
            .arg(manifest.join("prompts"))
            .args(extra);
        // The key as operators should give it: not on the command line, where `ps` shows it.
        if !extra.iter().any(|a| a.starts_with("--upstream-key")) {
            command.env("OPENAI_API_KEY", KEY);
        }
        Self::spawn(command).await
    }

    /// Starts `chatgate` on the SQLite file `db` with only `args` and `env` as its
    /// settings (no upstream unless they name one).
    pub async fn start_with_env(db: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = command_in(directory_of(db), "info");
        command
            .args(["--listen", "127.0.0.1:0"])
            .arg("--store")
            .arg(format!("sqlite://{}", db.display()))
            .args(args)
            .envs(env.iter().copied());
        Self::spawn(command).await
    }

    /// Starts `chatgate` in `dir` with `env` as its only settings: no flag at all.
    pub async fn start_on_env(dir: &Path, env: &[(String, String)]) -> Self {
        let mut command = command_in(dir, "info");
        command.envs(env.iter().map(|(k, v)| (k, v)));
        Self::spawn(command).await
    }

    /// Starts `chatgate` as one of several replicas: on `store` and `bus`, against `mock`,
    /// in the directory `dir`, with `extra` flags.
    pub async fn start_replica(store: &str, bus: &str, mock: &MockLlm, dir: &Path, extra: &[&str]) -> Self {
        let mut command = command_in(dir, "info");
        command
            .args(["--listen", "127.0.0.1:0"])
            .args(["--upstream-url", &mock.base_url()])
            .args(["--model", "mock-model"])
            .args(extra)
            // As operators should give them: not on the command line, where `ps` shows them.
            .env("CHATGATE_STORE", store)
            .env("CHATGATE_BUS", bus)
            .env("OPENAI_API_KEY", KEY);
        Self::spawn(command).await
    }

    /// Runs `command` and waits for the address it prints.
    async fn spawn(mut command: Command) -> Self {
        let mut child = command.spawn().expect("chatgate starts");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let into = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = into.lock().unwrap_or_else(|p| p.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });
        let stdout = child.stdout.take().unwrap();
        let (found, listening) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut found = Some(found);
            // Read to the end, so that the process never blocks on a full pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(address) = line.strip_prefix("chatgate listening on ")
                    && let Some(found) = found.take()
                {
                    let _ = found.send(address.trim().to_owned());
                }
            }
        });
        let mut gateway = Self {
            child,
            exited: None,
            address: String::new(),
            port: 0,
            client: reqwest::Client::new(),
            log,
        };
        let address = tokio::time::timeout(Duration::from_secs(30), listening)
            .await
            .expect("chatgate says where it listens within 30 s")
            .expect("chatgate says where it listens before it exits");
        gateway.port = address
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse().ok())
            .unwrap_or_else(|| panic!("a port in {address:?}"));
        gateway.address = address;
        gateway
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Sends `signal` (`TERM`, `INT`) with `kill`.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} failed: {status}");
    }

    /// SIGKILL, and waits for the process to be gone.
    pub fn sigkill(&mut self) {
        self.child.kill().expect("SIGKILL is sent");
        self.exited = Some(self.child.wait().expect("the killed process is reaped"));
    }

    /// Waits for the process to exit, at most `within`.
    pub async fn exits_within(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("the process can be waited for") {
                self.exited = Some(status);
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "chatgate did not exit within {within:?}; its log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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

    /// A streaming `POST /conv`, read as it arrives.
    pub async fn stream(&self, content: &str) -> Live {
        let response = self.post_conv(json!({"content": content})).await;
        assert_eq!(response.status(), 200);
        Live::new(response)
    }

    /// `POST /conv` with `"background": true`: (conversation id, message id).
    pub async fn background(&self, content: &str) -> (String, String) {
        let response = self.post_conv(json!({"content": content, "background": true})).await;
        assert_eq!(response.status(), 202);
        let accepted: Value = response.json().await.expect("a JSON body");
        (
            accepted["conversation_id"].as_str().unwrap().to_owned(),
            accepted["message_id"].as_str().unwrap().to_owned(),
        )
    }

    /// `GET /conv/{conversation}/stream{query}`, with `Last-Event-ID` when given.
    pub async fn get_stream(&self, conversation: &str, query: &str, last_event_id: Option<&str>) -> Live {
        let mut request = self
            .client
            .get(self.url(&format!("/conv/{conversation}/stream{query}")))
            .header("Accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.send().await.expect("the gateway answers");
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Live::new(response)
    }

    /// The stored message `message` of `conversation`, as `GET /conv/{id}` shows it.
    pub async fn stored(&self, conversation: &str, message: &str) -> Value {
        let response = self
            .client
            .get(self.url(&format!("/conv/{conversation}")))
            .send()
            .await
            .expect("the gateway answers");
        assert_eq!(response.status(), 200);
        let conversation: Value = response.json().await.expect("a JSON body");
        let stored = conversation["mapping"][message]["message"].clone();
        assert!(stored.is_object(), "no message {message} in {conversation}");
        stored
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if self.exited.is_none() && matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- chatgate's log ---\n{}--- end of log ---", self.log());
        }
    }
}

/// The text of a stored message (`mapping[id].message` of `GET /conv/{id}`).
pub fn stored_text(message: &Value) -> &str {
    message["content"]["parts"][0].as_str().expect("parts[0]")
}

/// A long answer: enough words, slowly enough, that it is still running when the test ends.
const LONG: &str = "tell me a long story [mock:words=1000] [mock:delay=50]";

/// A short answer in flight: a few words at ~100 ms each; the signal comes after its
/// first frame, the rest arrives after the signal.
async fn a_short_answer_in_flight_finishes_through(signal: &str) {
    let mock = MockLlm::start("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut gateway = Gateway::start(&dir.path().join("chatgate.db"), &mock, &[]).await;

    let mut sse = gateway.stream("count [mock:words=8] [mock:delay=100]").await;
    let first = sse.next_frame().await;
    assert_eq!(first["message"]["status"], "in_progress");
    let expected = "Echo: count w1 w2 w3 w4 w5 w6 w7 w8";
    assert_ne!(text_of(&first), expected, "the answer is still in flight at the signal");
    gateway.signal(signal);

    let stream = sse.rest(Duration::from_secs(10)).await;
    stream.assert_finished();
    assert_eq!(stream.text(), expected);
    assert_eq!(stream.last()["message"]["metadata"]["finish_details"]["type"], "stop");
    let status = gateway.exits_within(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{status}");
    let stats = mock.stats();
    assert_eq!((stats.completed, stats.cancelled), (1, 0), "{stats:?}");
}

#[tokio::test]
async fn sigterm_lets_a_short_answer_in_flight_finish_normally_and_exits_zero() {
    a_short_answer_in_flight_finishes_through("TERM").await;
}

#[tokio::test]
async fn sigint_behaves_like_sigterm() {
    a_short_answer_in_flight_finishes_through("INT").await;
}

#[tokio::test]
async fn sigterm_refuses_new_connections_at_once() {
    let mock = MockLlm::start("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&dir.path().join("chatgate.db"), &mock, &[]).await;
    let mut sse = gateway.stream(LONG).await;
    sse.next_frame().await;

    gateway.signal("TERM");
    let signalled = Instant::now();
    loop {
        match tokio::net::TcpStream::connect(("127.0.0.1", gateway.port)).await {
            // Refused, or reset when it reached the listen queue just as the socket closed.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                break;
            }
            Err(e) => panic!("a connect fails only as refused, not {e}"),
            Ok(_) => {
                assert!(
                    signalled.elapsed() < Duration::from_secs(3),
                    "new connections were still accepted 3 s after SIGTERM"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    // A new client (no pooled connection) cannot even connect.
    let fresh = reqwest::Client::new()
        .post(gateway.url("/conv"))
        .json(&json!({"content": "hello"}))
        .send()
        .await;
    assert!(
        fresh.as_ref().is_err_and(reqwest::Error::is_connect),
        "a new POST after SIGTERM: {fresh:?}"
    );

    // The running answer goes on.
    let before = text_of(&sse.next_frame().await).to_owned();
    for _ in 0..3 {
        let frame = sse.next_frame().await;
        assert_eq!(frame["message"]["status"], "in_progress", "{frame}");
        let text = text_of(&frame);
        assert!(text.len() > before.len() && text.starts_with(&before), "{text:?} grows");
    }
}

#[tokio::test]
async fn after_the_shutdown_grace_running_answers_end_with_gateway_stopping_and_their_text_is_stored() {
    let mock = MockLlm::start("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chatgate.db");
    let mut gateway = Gateway::start(&db, &mock, &["--shutdown-grace", "1"]).await;
    let mut sse = gateway.stream(LONG).await;
    let first = sse.next_frame().await;
    let streamed = (
        first["conversation_id"].as_str().unwrap().to_owned(),
        first["message"]["id"].as_str().unwrap().to_owned(),
    );
    let background = gateway.background(LONG).await;
    let stats = mock.wait_for_stats(Duration::from_secs(5), |s| s.active == 2).await;
    assert_eq!(stats.active, 2, "{stats:?}");
    let mut at_signal = first;
    for _ in 0..3 {
        at_signal = sse.next_frame().await;
    }

    gateway.signal("TERM");
    let stream = sse.rest(Duration::from_secs(15)).await;
    let last = stream.last();
    assert_eq!(last["message"]["status"], "error", "{last}");
    assert_eq!(last["error"]["code"], "gateway_stopping", "{last}");
    let last_text = text_of(&last).to_owned();
    assert!(last_text.starts_with("Echo: tell me a long story w1"), "{last_text:?}");
    assert!(
        last_text.len() > text_of(&at_signal).len() && last_text.starts_with(text_of(&at_signal)),
        "the answer went on during the grace: {last_text:?}"
    );
    stream.assert_closed_properly();
    let status = gateway.exits_within(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{status}");
    let stats = mock.wait_for_stats(Duration::from_secs(5), |s| s.cancelled == 2).await;
    assert_eq!(
        (stats.requests, stats.cancelled, stats.completed),
        (2, 2, 0),
        "{stats:?}"
    );
    drop(gateway);

    let gateway = Gateway::start(&db, &mock, &[]).await;
    let stored = gateway.stored(&streamed.0, &streamed.1).await;
    assert_eq!(stored["status"], "error", "{stored}");
    assert_eq!(stored["metadata"]["error"]["code"], "gateway_stopping", "{stored}");
    assert_eq!(stored_text(&stored), last_text, "the stored text is the last frame's");
    let stored = gateway.stored(&background.0, &background.1).await;
    assert_eq!(stored["status"], "error", "{stored}");
    assert_eq!(stored["metadata"]["error"]["code"], "gateway_stopping", "{stored}");
    assert!(
        stored_text(&stored).starts_with("Echo: tell me a long story w1"),
        "the background answer's partial text is stored: {stored}"
    );
}

#[tokio::test]
async fn sigterm_during_a_resume_ends_the_resumed_stream_with_a_last_frame() {
    let mock = MockLlm::start("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut gateway = Gateway::start(&dir.path().join("chatgate.db"), &mock, &["--shutdown-grace", "1"]).await;
    let (conversation, message) = gateway.background(LONG).await;
    // Wait (by reading) until the answer has more than two chunks.
    let mut first = gateway.get_stream(&conversation, "", None).await;
    while first.next_frame().await["message"]["content"]["parts"][0]
        .as_str()
        .is_some_and(|t| t.split(' ').count() < 8)
    {}
    drop(first);

    let mut resumed = gateway
        .get_stream(&conversation, &format!("?message_id={message}"), Some("2"))
        .await;
    let frame = resumed.next_frame().await;
    assert_eq!(frame["message"]["id"], message.as_str());
    assert_eq!(frame["message"]["status"], "in_progress");
    let id: u64 = resumed.seen.last().unwrap().id.as_deref().unwrap().parse().unwrap();
    assert!(id > 2, "the first frame after Last-Event-ID 2 has id {id}");
    let seen_text = text_of(&frame).to_owned();

    gateway.signal("TERM");
    let stream = resumed.rest(Duration::from_secs(15)).await;
    assert_eq!(stream.events[0].retry.as_deref(), Some("1000"));
    let last = stream.last();
    assert_eq!(last["message"]["status"], "error", "{last}");
    assert_eq!(last["error"]["code"], "gateway_stopping", "{last}");
    assert!(text_of(&last).starts_with(&seen_text), "{last}");
    stream.assert_closed_properly();
    let status = gateway.exits_within(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{status}");
}

/// A background answer has no connection: the server's own graceful stop does not wait for
/// it, but the shutdown grace is for every running answer.
#[tokio::test]
async fn sigterm_lets_a_background_answer_with_no_reader_finish_within_the_grace() {
    let mock = MockLlm::start("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chatgate.db");
    let mut gateway = Gateway::start(&db, &mock, &[]).await;
    let (conversation, message) = gateway.background("count [mock:words=8] [mock:delay=100]").await;
    let stats = mock.wait_for_stats(Duration::from_secs(5), |s| s.active == 1).await;
    assert_eq!(stats.active, 1, "{stats:?}");

    gateway.signal("TERM");
    let status = gateway.exits_within(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{status}");
    let stats = mock.stats();
    assert_eq!(
        (stats.completed, stats.cancelled),
        (1, 0),
        "the upstream ran to its end: {stats:?}"
    );
    drop(gateway);

    let gateway = Gateway::start(&db, &mock, &[]).await;
    let stored = gateway.stored(&conversation, &message).await;
    assert_eq!(stored["status"], "finished_successfully", "{stored}");
    assert_eq!(stored_text(&stored), "Echo: count w1 w2 w3 w4 w5 w6 w7 w8");
}

/// How many of the process's threads are actix's workers: each is an arbiter of the actix
/// system, named `actix-rt|system:0|arbiter:N` (the kernel keeps the first 15 bytes); the
/// main thread is `chatgate`, the thread that accepts connections `actix-server acceptor`.
fn worker_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the process's threads are listed")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("actix-rt|system"))
        .count()
}

#[tokio::test]
async fn workers_sets_how_many_worker_threads_serve_and_each_serves_answers() {
    let mock = MockLlm::start("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    for workers in [1, 3] {
        let db = dir.path().join(format!("{workers}.db"));
        let gateway = Gateway::start(&db, &mock, &["--workers", &workers.to_string()]).await;
        let answer = gateway.stream("hello").await.rest(Duration::from_secs(10)).await;
        answer.assert_finished();
        // Connections are accepted only once every worker has started: after an answer,
        // all of them run.
        assert_eq!(worker_threads(gateway.child.id()), workers);
    }
}
