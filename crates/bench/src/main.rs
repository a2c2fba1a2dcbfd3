//! `cargo run --release -p chatgate-bench`: measures chatgate (and optionally a peer
//! gateway) against a direct-to-mock baseline on loopback, and prints a table.

mod client;
mod clock;
mod gateway;
mod mock;
mod pump;
mod scenarios;
mod stats;

use clap::Parser;
use client::{Protocol, Target};
use mock::{Mock, Shape};
use stats::Samples;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(about = "chatgate's streaming benchmark: gateway vs a direct-to-mock baseline, on loopback")]
struct Args {
    /// The chatgate binary to start (build it with `cargo build --release` first).
    #[arg(long, default_value = "target/release/chatgate")]
    gateway_bin: PathBuf,
    /// Where the gateway keeps conversations: `sqlite://PATH` or `memory` [default: a fresh SQLite file].
    #[arg(long)]
    store: Option<String>,
    /// Port for the mock upstream (fixed, so a peer gateway can be configured to use it; 0 = any).
    #[arg(long, default_value_t = 0)]
    mock_port: u16,
    /// A peer OpenAI-compatible gateway to measure too, e.g. http://127.0.0.1:4000/v1, pointed at the mock.
    #[arg(long)]
    peer: Option<String>,
    /// The peer's name in the table.
    #[arg(long, default_value = "peer")]
    peer_name: String,
    /// The model name to ask the peer for (its route to the mock).
    #[arg(long, default_value = "bench")]
    peer_model: String,
    /// The peer's process id, for its CPU and memory.
    #[arg(long)]
    peer_pid: Option<u32>,
    /// Largest step of the concurrency ramp.
    #[arg(long, default_value_t = 9000)]
    max_streams: usize,
    /// Fewer rounds and a shorter ramp: a quick look, not numbers to publish.
    #[arg(long)]
    quick: bool,
    /// Run only these parts (for profiling one path): memory, ttft, chunks, bytes, ramp.
    #[arg(long, value_delimiter = ',')]
    only: Vec<Part>,
    /// Leave out the TCP pump (the floor column).
    #[arg(long)]
    no_pump: bool,
    /// Internal: run as the TCP pump in front of this address (the benchmark starts it).
    #[arg(long, hide = true)]
    pump_to: Option<String>,
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum Part {
    Memory,
    Ttft,
    Chunks,
    Bytes,
    Ramp,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if let Some(upstream) = args.pump_to {
        return Ok(pump::run(upstream)?);
    }
    tokio::runtime::Runtime::new()?.block_on(bench(args))
}

async fn bench(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    clock::now_ns();
    let mock = Mock::start(args.mock_port).await?;
    eprintln!("mock upstream on http://127.0.0.1:{}/v1", mock.port);

    let dir = std::env::temp_dir().join(format!("chatgate-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let store = args
        .store
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", dir.join("bench.db").display()));
    let gw = gateway::Gateway::start(&args.gateway_bin, mock.port, &store).await?;
    eprintln!("chatgate on http://{} (pid {}, store {store})", gw.addr, gw.pid);

    let direct = Target {
        name: "direct".into(),
        addr: SocketAddr::from(([127, 0, 0, 1], mock.port)),
        path: "/v1/chat/completions".into(),
        protocol: Protocol::OpenAi,
        model: "bench".into(),
    };
    let chatgate = Target {
        name: "chatgate".into(),
        addr: gw.addr,
        path: "/conv".into(),
        protocol: Protocol::Conv { delta: false },
        model: "bench".into(),
    };
    // The same gateway asked for delta frames: the gateway's own cost, without the
    // whole-text frames that grow with the answer.
    let chatgate_delta = Target {
        name: "chatgate delta".into(),
        protocol: Protocol::Conv { delta: true },
        ..chatgate.clone()
    };
    let mut targets = vec![direct.clone(), chatgate.clone(), chatgate_delta];
    let mut pids = vec![None, Some(gw.pid), Some(gw.pid)];
    if let Some(peer) = &args.peer {
        let (addr, path) = parse_base(peer)?;
        targets.push(Target {
            name: args.peer_name.clone(),
            addr,
            path: format!("{path}/chat/completions"),
            protocol: Protocol::OpenAi,
            model: args.peer_model.clone(),
        });
        pids.push(args.peer_pid);
    }
    // The floor: what one read and one write per chunk cost, with no HTTP in between.
    let pump = match args.no_pump {
        true => None,
        false => Some(gateway::Gateway::start_pump(mock.port).await?),
    };
    if let Some(pump) = &pump {
        targets.push(Target {
            name: "tcp pump (floor)".into(),
            addr: pump.addr,
            ..direct.clone()
        });
        pids.push(Some(pump.pid));
    }
    let gateways = &targets[1..];
    let q = |full: usize, quick: usize| if args.quick { quick } else { full };
    let run = |part: Part| args.only.is_empty() || args.only.contains(&part);

    // warm up every path (connection pools, the allocator, the page cache)
    scenarios::ttft(&mock, &targets, 4, 20).await;
    let mut table = Table::new(gateways);

    // Memory first: later scenarios leave freed memory resident, which would hide growth.
    // Measured for each process once (the delta column is chatgate's process again).
    let mut measured = Vec::new();
    let mut idle = Vec::new();
    let mut per_stream = Vec::new();
    for (target, pid) in gateways.iter().zip(&pids[1..]) {
        let pid = pid.filter(|p| !measured.contains(p) && run(Part::Memory));
        let Some(pid) = pid else {
            idle.push(String::new());
            per_stream.push(String::new());
            continue;
        };
        measured.push(pid);
        eprintln!("memory per open stream, {}…", target.name);
        let mut points = Vec::new();
        for held in [0, q(1000, 200), q(2000, 400), q(4000, 800)] {
            let rss = scenarios::rss_with_open_streams(&mock, target, pid, held).await;
            points.push((held as f64, rss));
        }
        // with nothing open, after every start-up load (chatgate's tokenizer) is done
        idle.push(fmt(points[0].1 / 1024.0, "MiB"));
        per_stream.push(fmt(slope(&points), "KiB"));
    }
    if run(Part::Memory) {
        table.row("RSS idle", idle, "");
        table.row("RSS per open stream", per_stream, "≤ 8 KiB");
    }

    let ttft_runs = match run(Part::Ttft) {
        true => vec![(1, q(2000, 200)), (100, q(20, 5))],
        false => vec![],
    };
    for (workers, rounds) in ttft_runs {
        eprintln!("time to first token, {workers} stream(s)…");
        let cpu_before = gateway::cpu_ms(gw.pid);
        let s = scenarios::ttft(&mock, &targets, workers, rounds).await;
        if workers == 1 {
            // both chatgate columns are turns of the same process
            let turns = s[1].len() + s[2].len();
            let per_turn = (gateway::cpu_ms(gw.pid) - cpu_before) * 1000.0 / turns.max(1) as f64;
            table.row("gateway CPU per turn (4 chunks, stored)", vec![fmt(per_turn, "µs")], "");
        }
        let goal = if workers == 1 { "≤ 150 µs" } else { "" };
        table.added(&format!("added TTFT p50, {workers} stream(s)"), &s, 50.0, "µs", "");
        table.added(&format!("added TTFT p99, {workers} stream(s)"), &s, 99.0, "µs", goal);
    }

    let mut cpu_per_k = vec![f64::NAN; gateways.len()];
    // The 1,000 streams open over a second and then run together for another, so that the
    // steady state is measured rather than a thousand turns set up in one instant.
    let chunk_runs = match run(Part::Chunks) {
        true => vec![
            (1, q(2000, 300), 2, 0),
            (100, q(400, 100), 1, 0),
            (1000, q(100, 60), 20, 1000),
        ],
        false => vec![],
    };
    for (streams, chunks, delay, spread_ms) in chunk_runs {
        eprintln!("per-chunk latency, {streams} stream(s)…");
        let shape = Shape {
            chunks,
            delay: Duration::from_millis(delay),
            ..Shape::default()
        };
        let spread = Duration::from_millis(spread_ms);
        let r = scenarios::relay(&mock, &targets, &pids, streams, shape, 2, spread).await;
        let goal = if streams == 1000 { "≤ 50 µs" } else { "" };
        table.added(
            &format!("added inter-chunk gap p50, {streams} stream(s)"),
            &r.gaps,
            50.0,
            "µs",
            "",
        );
        table.added(
            &format!("added inter-chunk gap p99, {streams} stream(s)"),
            &r.gaps,
            99.0,
            "µs",
            goal,
        );
        table.added(
            &format!("added chunk latency p50, {streams} stream(s)"),
            &r.latency,
            50.0,
            "µs",
            "",
        );
        table.added(
            &format!("added chunk latency p99, {streams} stream(s)"),
            &r.latency,
            99.0,
            "µs",
            "",
        );
        let faithful = r.faithful[1..]
            .iter()
            .map(|(ok, coalesced, all)| match coalesced {
                0 => format!("{ok}/{all}"),
                c => format!("{ok}/{all} ({c} coalesced)"),
            })
            .collect();
        table.row(
            &format!("faithful streams, {streams} stream(s)"),
            faithful,
            "every chunk one frame",
        );
        if streams == 100 {
            // long answers, so that the setup of a turn hardly counts
            for (g, cpu) in r.cpu_ms[1..].iter().enumerate() {
                cpu_per_k[g] = cpu / (r.chunks[g + 1] as f64 / 1000.0);
            }
        }
    }
    if run(Part::Chunks) {
        let cpu = cpu_per_k.iter().map(|c| fmt(*c, "ms")).collect();
        table.row("CPU per 1,000 relayed chunks (100 streams × 400)", cpu, "≤ 5 ms");
    }
    if run(Part::Bytes) {
        long_answers(&mock, &chatgate, &direct, &mut table).await;
    }
    if run(Part::Ramp) {
        ramp(&mock, &chatgate, gw.pid, &args, &mut table).await;
    }

    table.print();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

async fn long_answers(mock: &Mock, chatgate: &Target, direct: &Target, table: &mut Table) {
    eprintln!("long answers…");
    let chunks = 2000;
    let (full, _) = scenarios::long_answer_bytes(mock, chatgate, chunks).await;
    let delta_target = Target {
        protocol: Protocol::Conv { delta: true },
        ..chatgate.clone()
    };
    let (delta, _) = scenarios::long_answer_bytes(mock, &delta_target, chunks).await;
    let (direct_bytes, _) = scenarios::long_answer_bytes(mock, direct, chunks).await;
    table.row(
        &format!(
            "bytes for a {chunks}-chunk answer (direct: {} KiB)",
            direct_bytes / 1024
        ),
        vec![format!("{} KiB full, {} KiB delta", full / 1024, delta / 1024)],
        "linear in delta mode",
    );
}

async fn ramp(mock: &Mock, chatgate: &Target, pid: u32, args: &Args, table: &mut Table) {
    eprintln!("concurrency ramp…");
    let mut conns = Vec::new();
    let mut held = (0, 0.0, 0.0);
    let mut steps = vec![1000, 2000, 4000, 8000];
    steps.push(args.max_streams);
    steps.retain(|&n| n <= args.max_streams);
    steps.dedup();
    if args.quick {
        steps = vec![500, 1000];
    }
    for n in steps {
        let me = std::process::id();
        let (cpu_before, own_before) = (gateway::cpu_ms(pid), gateway::cpu_ms(me));
        let started = std::time::Instant::now();
        let step = scenarios::paced(mock, chatgate, &mut conns, n, Duration::from_millis(500)).await;
        // percent of one core over the step
        let percent = |ms: f64| ms / started.elapsed().as_secs_f64() / 10.0;
        let (busy, own) = (
            percent(gateway::cpu_ms(pid) - cpu_before),
            percent(gateway::cpu_ms(me) - own_before),
        );
        eprintln!(
            "  {n} streams: {} ok, worst chunk latency {:.1} ms (99.9% within {:.1} ms), {:.0} frames/s; \
             CPU: gateway {busy:.0}%, load tool and mock {own:.0}% of a core{}",
            step.ok,
            step.worst_latency_ms,
            step.p999_latency_ms,
            step.frames_per_s,
            if step.stalled { " — stalled" } else { "" }
        );
        if step.stalled {
            break;
        }
        held = (n, step.frames_per_s, step.worst_latency_ms);
    }
    drop(conns);
    table.row(
        "paced streams held without stalls",
        vec![format!(
            "{} ({:.0} frames/s, worst chunk {:.0} ms)",
            held.0, held.1, held.2
        )],
        "≥ 8,000",
    );
}

fn parse_base(url: &str) -> Result<(SocketAddr, String), Box<dyn std::error::Error>> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("the peer URL must start with http://")?;
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, String::new()));
    let host = host.replace("localhost", "127.0.0.1");
    Ok((host.parse()?, path.trim_end_matches('/').to_owned()))
}

/// Least-squares slope of RSS (KiB) over open streams.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let (sx, sy) = points.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let num: f64 = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let den: f64 = points.iter().map(|(x, _)| (x - mx).powi(2)).sum();
    num / den
}

fn fmt(value: f64, unit: &str) -> String {
    if value.is_nan() {
        "n/a".into()
    } else if value.abs() >= 100.0 {
        format!("{value:.0} {unit}")
    } else {
        format!("{value:.1} {unit}")
    }
}

struct Table {
    names: Vec<String>,
    rows: Vec<(String, Vec<String>, String)>,
}

impl Table {
    fn new(gateways: &[Target]) -> Self {
        Self {
            names: gateways.iter().map(|t| t.name.clone()).collect(),
            rows: Vec::new(),
        }
    }

    /// A gateway-minus-direct row from per-target samples (index 0 is direct).
    fn added(&mut self, label: &str, samples: &[Samples], p: f64, unit: &str, goal: &str) {
        let base = samples[0].p(p);
        let cells = samples[1..].iter().map(|s| fmt(s.p(p) - base, unit)).collect();
        self.row(&format!("{label} (direct {})", fmt(base, unit)), cells, goal);
    }

    fn row(&mut self, label: &str, cells: Vec<String>, goal: &str) {
        self.rows.push((label.to_owned(), cells, goal.to_owned()));
    }

    fn print(&self) {
        let width = self.rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(10);
        let mut header = format!("| {:width$} |", "measure");
        for name in &self.names {
            header.push_str(&format!(" {name:>24} |"));
        }
        header.push_str(" target |");
        println!("{header}");
        let mut rule = format!("|{}|", "-".repeat(width + 2));
        for _ in &self.names {
            rule.push_str(&format!("{}|", "-".repeat(26)));
        }
        println!("{rule}--------|");
        for (label, cells, goal) in &self.rows {
            let mut line = format!("| {label:width$} |");
            for i in 0..self.names.len() {
                line.push_str(&format!(" {:>24} |", cells.get(i).map(String::as_str).unwrap_or("")));
            }
            line.push_str(&format!(" {goal} |"));
            println!("{line}");
        }
    }
}
