//! The measurements. Every scenario that compares runs the direct baseline and the targets
//! in the same run, interleaved, so that a noisy moment hurts both alike.

use crate::client::{Answer, Conn, Target};
use crate::gateway;
use crate::mock::{Mock, Shape};
use crate::stats::Samples;
use std::time::{Duration, Instant};

/// How the clients of [`ttft`] ask: `workers` clients at once, each asking `rounds` times of
/// every target in turn (numbered from `first_round`, which sets where each starts in the
/// rotation), each waiting `pause` after every answer.
#[derive(Debug, Clone, Copy)]
pub struct Asking {
    pub workers: usize,
    pub rounds: usize,
    pub first_round: usize,
    pub pause: Duration,
}

impl Asking {
    /// Back-to-back rounds that bring every path in (connection pools, the allocator, the
    /// page cache) before anything is measured.
    pub fn warm_up(workers: usize) -> Self {
        Self {
            workers,
            rounds: 20,
            first_round: 0,
            pause: Duration::ZERO,
        }
    }
}

/// Time to first token, in µs, for each target, asked as `asking` says, on connections kept
/// from one call to the next (`conns`: one set per client; new ones when it is empty).
pub async fn ttft(mock: &Mock, targets: &[Target], conns: &mut Vec<Vec<Conn>>, asking: Asking) -> Vec<Samples> {
    let Asking {
        workers,
        rounds,
        first_round,
        pause,
    } = asking;
    mock.set(Shape {
        chunks: 4,
        ..Shape::default()
    });
    while conns.len() < workers {
        conns.push(targets.iter().map(Conn::new).collect());
    }
    let tasks: Vec<_> = conns
        .drain(..)
        .enumerate()
        .map(|(w, mut conns)| {
            let n = targets.len();
            tokio::spawn(async move {
                let mut out = vec![Vec::new(); n];
                for round in first_round..first_round + rounds {
                    for k in 0..n {
                        let t = (k + round + w) % n;
                        if let Ok(answer) = conns[t].ask().await
                            && let Some(ns) = answer.ttft_ns()
                        {
                            out[t].push(ns as f64 / 1000.0);
                        }
                        if !pause.is_zero() {
                            tokio::time::sleep(pause).await;
                        }
                    }
                }
                (conns, out)
            })
        })
        .collect();
    let mut all = vec![Vec::new(); targets.len()];
    for task in tasks {
        if let Ok((back, out)) = task.await {
            conns.push(back);
            for (t, samples) in out.into_iter().enumerate() {
                all[t].extend(samples);
            }
        }
    }
    all.into_iter().map(Samples::new).collect()
}

/// Per-chunk latency (mock wrote it → client read it), in µs, per target; and whether
/// every stream through each target was faithful (one frame per chunk, in order).
pub struct Relay {
    pub latency: Vec<Samples>,
    /// Time between consecutive chunks' arrivals, in µs, per target.
    pub gaps: Vec<Samples>,
    /// Per target: (faithful, coalesced, all) streams.
    pub faithful: Vec<(usize, usize, usize)>,
    pub chunks: Vec<usize>,
    pub cpu_ms: Vec<f64>,
}

impl Relay {
    /// Adds a later round of the same scenario.
    pub fn merge(&mut self, other: Relay) {
        for (t, (latency, gaps)) in other.latency.into_iter().zip(other.gaps).enumerate() {
            self.latency[t].merge(latency);
            self.gaps[t].merge(gaps);
            self.faithful[t].0 += other.faithful[t].0;
            self.faithful[t].1 += other.faithful[t].1;
            self.faithful[t].2 += other.faithful[t].2;
            self.chunks[t] += other.chunks[t];
            self.cpu_ms[t] += other.cpu_ms[t];
        }
    }
}

/// Connections for [`relay`], kept from one round to the next.
pub fn relay_conns(targets: &[Target], streams: usize) -> Vec<Vec<Conn>> {
    targets
        .iter()
        .map(|t| (0..streams).map(|_| Conn::new(t)).collect())
        .collect()
}

/// One round: `streams` answers of `shape` through each target in turn (starting with the
/// target `round` places on), their starts spread over `spread`.
pub async fn relay(
    mock: &Mock,
    targets: &[Target],
    pids: &[Option<u32>],
    conns: &mut [Vec<Conn>],
    shape: Shape,
    round: usize,
    spread: Duration,
) -> Relay {
    mock.set(shape);
    let streams = conns.first().map(Vec::len).unwrap_or(0);
    let mut latency = vec![Vec::new(); targets.len()];
    let mut gaps = vec![Vec::new(); targets.len()];
    let mut faithful = vec![(0, 0, 0); targets.len()];
    let mut chunks = vec![0; targets.len()];
    let mut cpu_ms = vec![0.0; targets.len()];
    for k in 0..targets.len() {
        let t = (k + round) % targets.len();
        let cpu_before = pids[t].map(gateway::cpu_ms);
        let answers = run_spread(std::mem::take(&mut conns[t]), spread).await;
        if let (Some(pid), Some(before)) = (pids[t], cpu_before) {
            cpu_ms[t] += gateway::cpu_ms(pid) - before;
        }
        let mut back = Vec::with_capacity(streams);
        for (conn, answer) in answers {
            back.push(conn);
            let Ok(answer) = answer else {
                faithful[t].2 += 1;
                continue;
            };
            faithful[t].2 += 1;
            if answer.faithful && !answer.coalesced && answer.chunks.len() == shape.chunks {
                faithful[t].0 += 1;
            } else if answer.faithful && answer.coalesced {
                faithful[t].1 += 1;
            }
            chunks[t] += answer.chunks.len();
            latency[t].extend(
                answer
                    .chunks
                    .iter()
                    .map(|(_, sent, arrived)| (arrived - sent) as f64 / 1000.0),
            );
            gaps[t].extend(
                answer
                    .chunks
                    .windows(2)
                    .filter(|w| w[1].0 == w[0].0 + 1)
                    .map(|w| (w[1].2 - w[0].2) as f64 / 1000.0),
            );
        }
        conns[t] = back;
    }
    Relay {
        latency: latency.into_iter().map(Samples::new).collect(),
        gaps: gaps.into_iter().map(Samples::new).collect(),
        faithful,
        chunks,
        cpu_ms,
    }
}

/// Runs one answer on every connection at once.
pub async fn run_all(conns: Vec<Conn>) -> Vec<(Conn, std::io::Result<Answer>)> {
    run_spread(conns, Duration::ZERO).await
}

/// Runs one answer on every connection, the starts spread evenly over `over`.
pub async fn run_spread(conns: Vec<Conn>, over: Duration) -> Vec<(Conn, std::io::Result<Answer>)> {
    let n = conns.len().max(1) as u32;
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, mut conn)| {
            let wait = over * i as u32 / n;
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                let answer = conn.ask().await;
                (conn, answer)
            })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        if let Ok(pair) = task.await {
            out.push(pair);
        }
    }
    out
}

/// One step of the concurrency ramp.
pub struct Step {
    pub ok: usize,
    pub worst_latency_ms: f64,
    /// 99.9% of chunks arrived within this.
    pub p999_latency_ms: f64,
    pub frames_per_s: f64,
    pub stalled: bool,
}

const PACE: Duration = Duration::from_millis(250);

/// Opens `streams` paced answers (a chunk every 250 ms) through `target` (half of them
/// through its second replica, if it has one), `open_per_second` of them a second, as
/// clients arriving; a stream lasts until the last one has opened and five seconds more,
/// so that all are open together. A stream stalls when one of its chunks arrives more
/// than `stall` after the mock wrote it.
pub async fn paced(
    mock: &Mock,
    target: &Target,
    conns: &mut Vec<Conn>,
    streams: usize,
    open_per_second: usize,
    stall: Duration,
) -> Step {
    let opening = Duration::from_secs_f64(streams as f64 / open_per_second.max(1) as f64);
    let shape = Shape {
        chunks: ((opening + Duration::from_secs(5)).as_millis() / PACE.as_millis()) as usize,
        delay: PACE,
        ..Shape::default()
    };
    mock.set(shape);
    while conns.len() < streams {
        // A target with a second replica has every other stream there: a balancer's share.
        let at = match (target.follow_at, conns.len() % 2) {
            (Some(other), 1) => Target {
                addr: other,
                ..target.clone()
            },
            _ => target.clone(),
        };
        conns.push(Conn::new(&at));
    }
    let batch: Vec<Conn> = conns.drain(..streams).collect();
    let started = Instant::now();
    // The ramp measures holding streams, not a thousand turns set up in one instant.
    let answers = run_spread(batch, opening).await;
    let elapsed = started.elapsed().as_secs_f64();
    let mut step = Step {
        ok: 0,
        worst_latency_ms: 0.0,
        p999_latency_ms: 0.0,
        frames_per_s: 0.0,
        stalled: false,
    };
    let mut frames = 0;
    let mut latencies = Vec::new();
    for (conn, answer) in answers {
        conns.push(conn);
        let Ok(answer) = answer else { continue };
        if answer.status == 200 && answer.chunks.len() == shape.chunks {
            step.ok += 1;
        }
        frames += answer.frames;
        latencies.extend(
            answer
                .chunks
                .iter()
                .map(|(_, sent, arrived)| (arrived - sent) as f64 / 1e6),
        );
    }
    let latencies = Samples::new(latencies);
    step.worst_latency_ms = latencies.p(100.0);
    step.p999_latency_ms = latencies.p(99.9);
    step.frames_per_s = frames as f64 / elapsed;
    step.stalled = step.ok < streams || step.worst_latency_ms > stall.as_secs_f64() * 1000.0;
    step
}

/// Gateway RSS with `held` streams open, each having received two chunks.
pub async fn rss_with_open_streams(mock: &Mock, target: &Target, pid: u32, held: usize) -> f64 {
    mock.set(Shape {
        chunks: 4,
        hold_after: Some(2),
        ..Shape::default()
    });
    let written = mock.written();
    let conns: Vec<Conn> = (0..held).map(|_| Conn::new(target)).collect();
    let running = tokio::spawn(run_all(conns));
    // give every stream time to open and take its first chunks
    tokio::time::sleep(Duration::from_millis(1500 + held as u64 / 2)).await;
    // and wait for any that have not (a connection whose first SYN was dropped is retried
    // a second or more later)
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        while mock.written() < written + 2 * held {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let rss = gateway::rss_kib(pid);
    mock.release();
    let _ = running.await;
    rss
}

/// Bytes of response body for one long answer.
pub async fn long_answer_bytes(mock: &Mock, target: &Target, chunks: usize) -> (usize, usize) {
    mock.set(Shape {
        chunks,
        ..Shape::default()
    });
    match Conn::new(target).ask().await {
        Ok(answer) => (answer.bytes, answer.chunks.len()),
        Err(_) => (0, 0),
    }
}
