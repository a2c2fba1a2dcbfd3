//! The scenarios of answers that run in the gateway as *generations*: many readers on one
//! answer (`GET /conv/{id}/stream`), and a reader that drops its connection and resumes
//! with `Last-Event-ID`. A gateway without that endpoint (an older chatgate, a peer) gets
//! `None` and an empty cell.

use crate::client::{Protocol, Target};
use crate::follow::{self, Event, Response, json_field};
use crate::gateway;
use crate::mock::{Mock, Shape, find, last_marker};
use crate::stats::Samples;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

fn delta_of(target: &Target) -> Option<bool> {
    match target.protocol {
        Protocol::Conv { delta } => Some(delta),
        Protocol::OpenAi => None,
    }
}

/// The text of a chatgate frame (what comes before its status).
fn frame_text(data: &str) -> Option<&str> {
    find(data.as_bytes(), br#""]},"status":""#).map(|end| &data[..end])
}

/// Every `[seq:nanos]` marker of a text, in order.
fn markers(text: &str) -> Vec<usize> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        rest = &rest[open..];
        let Some(close) = rest.find(']') else { break };
        if let Some((seq, _)) = last_marker(&rest.as_bytes()[..=close]) {
            out.push(seq);
        }
        rest = &rest[close + 1..];
    }
    out
}

/// Starts one answer with `"background": true`: (conversation id, message id), or `None`
/// when the gateway has no background answers (an older chatgate streams instead).
async fn start_background(target: &Target) -> Option<(String, String)> {
    let body = format!(r#"{{"content":"bench","model":"{}","background":true}}"#, target.model);
    let started = follow::request(target.addr, "POST", &target.path, &[], &body)
        .await
        .ok()?;
    if started.status != 202 {
        return None;
    }
    let json = started.text();
    Some((json_field(&json, "conversation_id")?, json_field(&json, "message_id")?))
}

/// What one reader of a generation saw: (read to the end, chunks in the text, frames).
type Seen = (bool, Vec<usize>, usize);

/// Attaches a reader with `GET /conv/{id}/stream`; `opened` counts it in once its first
/// frame has arrived, and `all_open` is told when `opened` reaches `expect`.
fn attach(
    target: &Target,
    path: &str,
    opened: &Arc<AtomicUsize>,
    all_open: &Arc<Notify>,
    expect: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<Seen> {
    let delta = delta_of(target) == Some(true);
    let (addr, path) = (target.follow_at.unwrap_or(target.addr), path.to_owned());
    let (opened, all_open) = (Arc::clone(opened), Arc::clone(all_open));
    tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut frames = 0;
        let mut first = true;
        let count_in = |first: &mut bool| {
            if std::mem::take(first) && opened.fetch_add(1, Ordering::SeqCst) + 1 >= expect.load(Ordering::SeqCst) {
                all_open.notify_one();
            }
        };
        let outcome = async {
            let mut stream = follow::request(addr, "GET", &path, &[], "").await?;
            while let Some(event) = stream.next().await? {
                count_in(&mut first);
                let Some(text) = frame_text(&event.data) else { continue };
                frames += 1;
                let found = markers(text);
                if delta {
                    seen.extend(found);
                } else {
                    seen = found;
                }
            }
            Ok::<_, std::io::Error>(())
        }
        .await;
        count_in(&mut first);
        (outcome.is_ok(), seen, frames)
    })
}

fn stream_path(target: &Target, conversation: &str, message: &str) -> String {
    let delta = delta_of(target) == Some(true);
    format!(
        "/conv/{conversation}/stream?message_id={message}{}",
        if delta { "&delta=true" } else { "" }
    )
}

/// Gateway RSS (KiB) with `steps[i]` readers on one held answer, for each step: the answer
/// sends its first chunk and waits; readers join until each step is reached. `None`: the
/// gateway has no background answers.
pub async fn reader_memory(mock: &Mock, target: &Target, pid: u32, steps: &[usize]) -> Option<Vec<f64>> {
    delta_of(target)?;
    mock.set(Shape {
        chunks: 4,
        hold_after: Some(1),
        ..Shape::default()
    });
    let Some((conversation, message)) = start_background(target).await else {
        mock.release();
        return None;
    };
    let path = stream_path(target, &conversation, &message);
    let opened = Arc::new(AtomicUsize::new(0));
    let all_open = Arc::new(Notify::new());
    let expect = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    let mut rss = Vec::new();
    for &step in steps {
        expect.store(step, Ordering::SeqCst);
        while tasks.len() < step {
            tasks.push(attach(target, &path, &opened, &all_open, Arc::clone(&expect)));
        }
        if opened.load(Ordering::SeqCst) < step {
            let _ = tokio::time::timeout(Duration::from_secs(10), all_open.notified()).await;
        }
        // let the first frames go out and the allocator settle
        tokio::time::sleep(Duration::from_millis(500)).await;
        rss.push(gateway::rss_kib(pid));
    }
    mock.release();
    for task in tasks {
        let _ = task.await;
    }
    Some(rss)
}

/// One paced answer read by many readers.
pub struct Fanout {
    /// Gateway CPU per chunk, summed over the readers, in µs (a window of the answer that
    /// leaves out its start and its end).
    pub cpu_per_chunk_us: f64,
    /// Readers that got every chunk, in order, one frame each.
    pub faithful: usize,
    /// Readers that got the whole answer, some chunks merged into later frames.
    pub coalesced: usize,
}

/// Starts one paced answer with `"background": true`, attaches `readers` followers with
/// `GET /conv/{id}/stream` while it waits after its first chunk, then lets it run and
/// measures the CPU of the gateway's processes (`pids`: with readers on another replica,
/// both). For an OpenAI-compatible target (the pump) there is no
/// fan-out: `readers` answers of the same shape run side by side, one per reader.
pub async fn fanout(
    mock: &Mock,
    target: &Target,
    pids: &[u32],
    readers: usize,
    chunks: usize,
    pace: Duration,
) -> Option<Fanout> {
    mock.set(Shape {
        chunks,
        delay: pace,
        // the first chunk, then wait until every reader is in
        hold_after: Some(1),
        ..Shape::default()
    });
    let written = mock.written();
    let opened = Arc::new(AtomicUsize::new(0));
    let all_open = Arc::new(Notify::new());
    let expect = Arc::new(AtomicUsize::new(readers));
    let tasks: Vec<_> = match delta_of(target) {
        Some(_) => {
            let Some((conversation, message)) = start_background(target).await else {
                mock.release();
                return None;
            };
            let path = stream_path(target, &conversation, &message);
            (0..readers)
                .map(|_| attach(target, &path, &opened, &all_open, Arc::clone(&expect)))
                .collect()
        }
        None => (0..readers)
            .map(|_| {
                let target = target.clone();
                let (opened, all_open) = (Arc::clone(&opened), Arc::clone(&all_open));
                tokio::spawn(async move {
                    let answer = crate::client::Conn::new(&target).ask().await;
                    if opened.fetch_add(1, Ordering::SeqCst) + 1 >= readers {
                        all_open.notify_one();
                    }
                    match answer {
                        Ok(a) => (true, a.chunks.iter().map(|c| c.0).collect(), a.chunks.len()),
                        Err(_) => (false, Vec::new(), 0),
                    }
                })
            })
            .collect(),
    };
    // The pump's streams count in only at their end: wait for their first chunks instead.
    let first_chunks = written + if delta_of(target).is_some() { 1 } else { readers };
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        if delta_of(target).is_some() {
            all_open.notified().await;
        }
        while mock.written() < first_chunks {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let answers = if delta_of(target).is_some() { 1 } else { readers };
    let written = mock.written();
    mock.release();
    // a window from the 20th chunk to 20 before the end: steady relaying, no start or end
    let margin = 20.min(chunks / 4) * answers;
    let last = written + (chunks - 1) * answers - margin;
    let window = async {
        while mock.written() < written + margin {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let cpu = || pids.iter().map(|&pid| gateway::cpu_ns(pid)).sum::<f64>();
        let (cpu0, n0) = (cpu(), mock.written());
        while mock.written() < last {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // the chunks written by now have reached the gateway, not yet every reader
        tokio::time::sleep(pace / 2).await;
        (cpu() - cpu0, mock.written() - n0)
    };
    let (cpu_ns, window_chunks) = tokio::time::timeout(Duration::from_secs(60), window)
        .await
        .unwrap_or((f64::NAN, 1));
    let mut out = Fanout {
        // chunks written in the window, each relayed to every reader
        cpu_per_chunk_us: cpu_ns / 1000.0 / (window_chunks.max(1) * (readers / answers)) as f64,
        faithful: 0,
        coalesced: 0,
    };
    for task in tasks {
        let Ok((ok, seen, frames)) = task.await else { continue };
        let whole = seen.iter().copied().eq(0..chunks);
        let final_frame = usize::from(delta_of(target).is_some());
        if ok && whole && frames >= chunks + final_frame {
            out.faithful += 1;
        } else if ok && whole {
            out.coalesced += 1;
        }
    }
    Some(out)
}

/// Resume latency: per target, the time from a new connection's request to the first
/// frame of the answer it resumes, in µs; and (resumed correctly, trials) per target.
pub struct Resume {
    pub latency: Vec<Samples>,
    pub correct: Vec<(usize, usize)>,
}

impl Resume {
    /// Adds a later block of trials.
    pub fn merge(&mut self, other: Resume) {
        for (t, latency) in other.latency.into_iter().enumerate() {
            self.latency[t].merge(latency);
            self.correct[t].0 += other.correct[t].0;
            self.correct[t].1 += other.correct[t].1;
        }
    }
}

/// Frames a reader takes before it drops its connection.
const BEFORE_DROP: usize = 5;

/// `trials` times for each target, interleaved: a chatgate reader asks a question, takes
/// a few frames, drops its connection, waits `pause` (the answer runs on), and reconnects
/// with `Last-Event-ID`. For an OpenAI-compatible target (the direct baseline, the pump)
/// a trial is a new connection's request to its first event: what a fresh request costs
/// there. The answer is `chunks` chunks, one every `pace`.
pub async fn resume(
    mock: &Mock,
    targets: &[Target],
    trials: usize,
    chunks: usize,
    pace: Duration,
    pause: Duration,
) -> Resume {
    mock.set(Shape {
        chunks,
        delay: pace,
        ..Shape::default()
    });
    let mut latency = vec![Vec::new(); targets.len()];
    let mut correct = vec![(0, 0); targets.len()];
    let mut unsupported = vec![false; targets.len()];
    for trial in 0..trials {
        for k in 0..targets.len() {
            let t = (k + trial) % targets.len();
            if unsupported[t] {
                continue;
            }
            let target = &targets[t];
            let outcome = match delta_of(target) {
                None => fresh_request(target).await.map(|ns| (ns, true)),
                Some(delta) => resume_once(target, delta, chunks, pause).await,
            };
            match outcome {
                Some((ns, ok)) => {
                    latency[t].push(ns as f64 / 1000.0);
                    correct[t].1 += 1;
                    if ok {
                        correct[t].0 += 1;
                    }
                }
                None => unsupported[t] = true,
            }
        }
    }
    Resume {
        latency: latency.into_iter().map(Samples::new).collect(),
        correct,
    }
}

async fn fresh_request(target: &Target) -> Option<u64> {
    let body = format!(
        r#"{{"model":"{}","messages":[{{"role":"user","content":"bench"}}],"stream":true}}"#,
        target.model
    );
    let start = crate::clock::now_ns();
    let mut response = follow::request(
        target.addr,
        "POST",
        &target.path,
        &["authorization: Bearer bench".into()],
        &body,
    )
    .await
    .ok()?;
    let first = response.next().await.ok()??;
    Some(first.arrived_ns - start)
}

/// One drop and resume: (reconnect → first frame in ns, the resumed stream was whole).
/// `None`: the target cannot resume (no such endpoint).
async fn resume_once(target: &Target, delta: bool, chunks: usize, pause: Duration) -> Option<(u64, bool)> {
    let body = format!(r#"{{"content":"bench","model":"{}","delta":{delta}}}"#, target.model);
    let mut first = follow::request(target.addr, "POST", &target.path, &[], &body)
        .await
        .ok()?;
    let mut last: Option<Event> = None;
    let mut taken = 0;
    while taken < BEFORE_DROP {
        let event = first.next().await.ok()??;
        if frame_text(&event.data).is_some() {
            taken += 1;
            last = Some(event);
        }
    }
    let last = last?;
    let id = last.id?;
    let frame: serde_json::Value = serde_json::from_str(&last.data).ok()?;
    let conversation = frame["conversation_id"].as_str()?.to_owned();
    let message = frame["message"]["id"].as_str()?.to_owned();
    // the reader leaves: its connection closes
    drop(first);
    tokio::time::sleep(pause).await;

    let path = format!(
        "/conv/{conversation}/stream?message_id={message}{}",
        if delta { "&delta=true" } else { "" }
    );
    let start = crate::clock::now_ns();
    let at = target.follow_at.unwrap_or(target.addr);
    let mut resumed: Response = follow::request(at, "GET", &path, &[format!("last-event-id: {id}")], "")
        .await
        .ok()?;
    if resumed.status != 200 {
        return None;
    }
    let mut ns = None;
    let mut seen: Vec<usize> = Vec::new();
    let mut fine = true;
    while let Ok(Some(event)) = resumed.next().await {
        let Some(text) = frame_text(&event.data) else { continue };
        if ns.is_none() {
            ns = Some(event.arrived_ns - start);
            // the first frame carries everything after the resume point, nothing before
            let found = markers(text);
            fine &= if delta {
                found.first() == Some(&(id as usize))
            } else {
                found.iter().copied().eq(0..found.len()) && found.len() > id as usize
            };
        }
        let found = markers(text);
        if delta {
            seen.extend(found);
        } else {
            seen = found;
        }
    }
    let whole = if delta {
        seen.iter().copied().eq(id as usize..chunks)
    } else {
        seen.iter().copied().eq(0..chunks)
    };
    Some((ns?, fine && whole))
}
