//! `cargo run --release -p chatgate-bench`: measures chatgate (and optionally a peer
//! gateway) against a direct-to-mock baseline on loopback, and prints a table.

mod client;
mod clock;
mod cpu_limit;
mod follow;
mod gateway;
mod generations;
mod mock;
mod nginx;
mod pump;
mod quiet;
mod scenarios;
mod stats;

use clap::Parser;
use client::{Protocol, Target};
use mock::{Mock, Shape};
use scenarios::Asking;
use stats::Samples;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(about = "chatgate's streaming benchmark: gateway vs a direct-to-mock baseline, on loopback")]
struct Args {
    /// The chatgate binary to start (build it with `scripts/build-release` first).
    #[arg(long, default_value = "target/chatgate")]
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
    /// Run only these parts (for profiling one path): memory, ttft, chunks, bytes, fanout,
    /// resume, ramp.
    #[arg(long, value_delimiter = ',')]
    only: Vec<Part>,
    /// Another chatgate to measure in the same run, interleaved with the first, as
    /// `NAME=BIN[,store=STORE][,bus=URL][,across][,nginx][,delta][,keys][,workers=N][,v1]`: an older
    /// build, or the same build with `store=memory`, on a bus (`bus=redis://…` with
    /// `store=postgres://…`: the bus's own figures are printed after the table; `across`: a
    /// second replica on the same store and bus, where readers follow and resume the
    /// answers the first generates, both processes' CPU and memory counted; `nginx`: every
    /// request of the column through nginx with `deploy/nginx.conf`, in front of its
    /// replica or its two, which then share the turns, readers and resumes as nginx
    /// balances them, nginx's CPU and memory counted too) or with client keys on
    /// (`keys`: `--api-keys`, which every request then passes), or on `workers=N` worker
    /// threads (`--workers`). Its store is a fresh SQLite file unless `store=` says otherwise;
    /// `delta` adds a column for its delta frames, `v1` one for its `/v1/chat/completions`
    /// (the first chatgate has both, and a `/v1` column on one worker thread: the pump's
    /// parallelism). Every column runs on a chatgate process of its own.
    /// May be given several times.
    #[arg(long = "also")]
    also: Vec<String>,
    /// Before each block of a scenario, wait until other processes on the machine have used
    /// less than this percentage of one core for two seconds, and measure a block again
    /// when they used more while it ran; 0: do not wait.
    #[arg(long, default_value_t = 20.0)]
    quiet_below: f64,
    /// Runs of the ramp for each chatgate, each run taking the gateways in another order.
    #[arg(long, default_value_t = 1)]
    ramp_runs: usize,
    /// The ramp's steps, in streams open together (`--max-streams` is added as the last).
    #[arg(long, value_delimiter = ',', default_value = "1000,2000,4000,8000")]
    ramp_steps: Vec<usize>,
    /// Streams the ramp opens per second, as clients arriving.
    #[arg(long, default_value_t = 1000)]
    ramp_open_per_second: usize,
    /// Runs every chatgate process (each replica; not nginx, the pump or the mock) in a
    /// cgroup of its own limited to this fraction of one core, as if each replica had a
    /// small host to itself: then the ramp shows what a second replica adds when what runs
    /// out is each replica's own CPU, not the machine's. Needs root and the cgroup `cpu`
    /// controller. Meant for `--only ramp`: every other figure is of a throttled process.
    #[arg(long)]
    replica_cpu: Option<f64>,
    /// Rounds of each per-chunk scenario (1, 100 and 1,000 streams), each round taking
    /// the targets in another order; their samples are pooled. More rounds interleave the
    /// targets more finely, so that a slow phase of the machine hurts each alike.
    #[arg(long, default_value_t = 2)]
    chunk_rounds: usize,
    /// Which per-chunk scenarios to run, by their number of streams (1, 100, 1000): with
    /// many `--chunk-rounds`, one scenario alone takes minutes rather than most of an hour.
    #[arg(long, value_delimiter = ',', default_value = "1,100,1000")]
    chunk_streams: Vec<usize>,
    /// Milliseconds each TTFT client waits after every answer before its next request: 0
    /// measures a path kept warm by back-to-back requests; a pause, requests spaced apart as
    /// people send them, where the caches have gone cold in between.
    #[arg(long, default_value_t = 0)]
    ttft_pause_ms: u64,
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
    Fanout,
    Resume,
    Ramp,
}

/// A chatgate under test: the first from `--gateway-bin`, others from `--also`.
struct Chatgate {
    name: String,
    bin: PathBuf,
    store_kind: Option<String>,
    bus: Option<String>,
    process: gateway::Gateway,
    /// The second replica, where readers follow (`across`).
    across: Option<gateway::Gateway>,
    /// In front of the replicas, taking every request of the column (`nginx`).
    nginx: Option<nginx::Nginx>,
    /// Measured in delta mode too, in a column of its own, on a process of its own.
    delta: Option<gateway::Gateway>,
    /// Started with a client key, which every request then carries.
    keys: bool,
    /// Its `--workers`, if set.
    workers: Option<u32>,
    /// Measured on its OpenAI-compatible endpoint too, in a column of its own, on a
    /// process of its own.
    v1: Option<gateway::Gateway>,
    /// The same on one worker thread, as the pump relays on one thread.
    v1_one_worker: Option<gateway::Gateway>,
}

/// One chatgate to measure, as `--also` gives it.
struct Spec {
    name: String,
    bin: PathBuf,
    store: Option<String>,
    bus: Option<String>,
    across: bool,
    nginx: bool,
    delta: bool,
    keys: bool,
    workers: Option<u32>,
    v1: bool,
    v1_one_worker: bool,
}

/// `NAME=BIN[,store=STORE][,bus=URL][,across][,nginx][,delta][,keys][,workers=N][,v1]`.
fn parse_also(spec: &str) -> Result<Spec, String> {
    let (name, rest) = spec.split_once('=').ok_or_else(|| {
        format!("--also {spec:?}: expected NAME=BIN[,store=STORE][,bus=URL][,across][,nginx][,delta][,keys][,workers=N][,v1]")
    })?;
    let mut parts = rest.split(',');
    let bin = PathBuf::from(parts.next().unwrap_or_default());
    let (mut store, mut bus, mut across, mut nginx) = (None, None, false, false);
    let (mut delta, mut keys, mut v1, mut workers) = (false, false, false, None);
    for part in parts {
        match part.split_once('=') {
            Some(("store", value)) => store = Some(value.to_owned()),
            Some(("bus", value)) => bus = Some(value.to_owned()),
            Some(("workers", value)) => {
                workers = Some(
                    value
                        .parse()
                        .map_err(|_| format!("--also {spec:?}: workers={value:?} is not a number"))?,
                )
            }
            None if part == "across" => across = true,
            None if part == "nginx" => nginx = true,
            None if part == "delta" => delta = true,
            None if part == "keys" => keys = true,
            None if part == "v1" => v1 = true,
            _ => return Err(format!("--also {spec:?}: unknown option {part:?}")),
        }
    }
    Ok(Spec {
        name: name.to_owned(),
        bin,
        store,
        bus,
        across,
        nginx,
        delta,
        keys,
        workers,
        v1,
        v1_one_worker: false,
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if let Some(upstream) = args.pump_to {
        return Ok(pump::run(upstream)?);
    }
    tokio::runtime::Runtime::new()?.block_on(async {
        // Stopped (Ctrl-C, `timeout`, `kill`), the run is dropped: the processes it started
        // are killed and its cgroups removed, rather than left running.
        tokio::select! {
            done = bench(args) => done,
            signal = stopped() => Err(format!("stopped by {signal}").into()),
        }
    })
}

/// Resolves with the signal's name when SIGINT or SIGTERM arrives.
async fn stopped() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut interrupt), Ok(mut terminate)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
    else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = interrupt.recv() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    }
}

async fn bench(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(n) = args.chunk_streams.iter().find(|n| ![1, 100, 1000].contains(*n)) {
        return Err(format!("--chunk-streams: no per-chunk scenario has {n} streams (1, 100 or 1000)").into());
    }
    if let Some(fraction) = args.replica_cpu {
        if !(fraction > 0.0 && fraction <= 64.0) {
            return Err(format!("--replica-cpu: a fraction of one core above 0, got {fraction}").into());
        }
        cpu_limit::limit_each(fraction);
    }
    clock::now_ns();
    let mock = Mock::start(args.mock_port).await?;
    eprintln!("mock upstream on http://127.0.0.1:{}/v1", mock.port);

    let scratch = Scratch(std::env::temp_dir().join(format!("chatgate-bench-{}", std::process::id())));
    let dir = &scratch.0;
    std::fs::create_dir_all(dir)?;
    let fresh = |name: &str| format!("sqlite://{}", dir.join(format!("{name}.db")).display());
    let mut specs = vec![Spec {
        name: "chatgate".to_owned(),
        bin: args.gateway_bin.clone(),
        store: args.store.clone(),
        bus: None,
        across: false,
        nginx: false,
        delta: true,
        keys: false,
        workers: None,
        v1: true,
        v1_one_worker: true,
    }];
    for spec in &args.also {
        specs.push(parse_also(spec)?);
    }
    let mut chatgates = Vec::new();
    for Spec {
        name,
        bin,
        store: store_kind,
        bus,
        across,
        nginx,
        delta,
        keys,
        workers,
        v1,
        v1_one_worker,
    } in specs
    {
        // Each column has a process of its own: a process that served several columns
        // would hold their connections and their answers' memory at once, and its columns
        // would read differently from the same build's in a column of its own.
        let start = |column: String, workers: Option<u32>| {
            let (bin, fresh, bus) = (&bin, &fresh, bus.as_deref());
            let store = store_kind.clone().unwrap_or_else(|| fresh(&column.replace(' ', "-")));
            async move {
                let process = gateway::Gateway::start(bin, mock.port, &store, bus, keys, workers).await?;
                eprintln!(
                    "{column}: {} on http://{} (pid {}, store {store})",
                    bin.display(),
                    process.addr,
                    process.pid
                );
                Ok::<_, std::io::Error>(process)
            }
        };
        let process = start(name.clone(), workers).await?;
        let across = match across {
            true => Some(start(format!("{name} replica B"), workers).await?),
            false => None,
        };
        let nginx = match nginx {
            true => {
                let replicas: Vec<SocketAddr> = [Some(&process), across.as_ref()]
                    .into_iter()
                    .flatten()
                    .map(|p| p.addr)
                    .collect();
                let nginx =
                    nginx::Nginx::start(&replicas, &dir.join(format!("nginx-{}", name.replace(' ', "-")))).await?;
                eprintln!("{name}: nginx on http://{} (pids {:?})", nginx.addr, nginx.pids);
                Some(nginx)
            }
            false => None,
        };
        // the column's figures are those of its replicas and its nginx together
        let companions: Vec<u32> = across
            .iter()
            .map(|b| b.pid)
            .chain(nginx.iter().flat_map(|n| n.pids.iter().copied()))
            .collect();
        gateway::count_with(process.pid, &companions);
        let delta = match delta {
            true => Some(start(format!("{name} delta"), workers).await?),
            false => None,
        };
        let v1 = match v1 {
            true => Some(start(format!("{name} v1"), workers).await?),
            false => None,
        };
        let v1_one_worker = match v1_one_worker {
            true => Some(start(format!("{name} v1 one worker"), Some(1)).await?),
            false => None,
        };
        chatgates.push(Chatgate {
            name,
            bin,
            store_kind,
            bus,
            process,
            across,
            nginx,
            delta,
            keys,
            workers,
            v1,
            v1_one_worker,
        });
    }

    let direct = Target {
        name: "direct".into(),
        addr: SocketAddr::from(([127, 0, 0, 1], mock.port)),
        path: "/v1/chat/completions".into(),
        protocol: Protocol::OpenAi,
        model: "bench".into(),
        follow_at: None,
    };
    let mut targets = vec![direct.clone()];
    let mut pids = vec![None];
    // How many replicas each target's figures count.
    let mut replicas = vec![0];
    for gw in &chatgates {
        let full = Target {
            name: gw.name.clone(),
            addr: gw.nginx.as_ref().map_or(gw.process.addr, |n| n.addr),
            path: "/conv".into(),
            protocol: Protocol::Conv { delta: false },
            model: "bench".into(),
            // behind nginx, nginx chooses
            follow_at: gw.across.as_ref().filter(|_| gw.nginx.is_none()).map(|b| b.addr),
        };
        targets.push(full.clone());
        pids.push(Some(gw.process.pid));
        replicas.push(1 + gw.across.iter().count());
        let full = Target {
            addr: gw.process.addr,
            follow_at: None,
            ..full
        };
        // The same build asked for delta frames: the gateway's own cost, without the
        // whole-text frames that grow with the answer.
        if let Some(process) = &gw.delta {
            targets.push(Target {
                name: format!("{} delta", gw.name),
                addr: process.addr,
                protocol: Protocol::Conv { delta: true },
                ..full.clone()
            });
            pids.push(Some(process.pid));
            replicas.push(1);
        }
        // The same build's OpenAI-compatible endpoint, as an SDK would use it.
        let v1 = [(&gw.v1, ""), (&gw.v1_one_worker, ", 1 worker")];
        for (process, which) in v1.into_iter().filter_map(|(p, which)| Some((p.as_ref()?, which))) {
            targets.push(Target {
                name: format!("{} /v1{which}", gw.name),
                addr: process.addr,
                path: "/v1/chat/completions".into(),
                protocol: Protocol::OpenAi,
                ..full.clone()
            });
            pids.push(Some(process.pid));
            replicas.push(1);
        }
    }
    if let Some(peer) = &args.peer {
        let (addr, path) = parse_base(peer)?;
        targets.push(Target {
            name: args.peer_name.clone(),
            addr,
            path: format!("{path}/chat/completions"),
            protocol: Protocol::OpenAi,
            model: args.peer_model.clone(),
            follow_at: None,
        });
        pids.push(args.peer_pid);
        replicas.push(1);
    }
    // The floor: what one read and one write per chunk cost, with no HTTP in between.
    let pump = match args.no_pump {
        true => None,
        false => Some(gateway::Gateway::start_pump(mock.port).await?),
    };
    let mut pump_column = None;
    if let Some(pump) = &pump {
        targets.push(Target {
            name: "tcp pump (floor)".into(),
            addr: pump.addr,
            ..direct.clone()
        });
        pids.push(Some(pump.pid));
        replicas.push(1);
        pump_column = Some(targets.len() - 2);
    }
    let gateways = &targets[1..];
    let columns = gateways.len();
    let is_chatgate = |t: &Target| matches!(t.protocol, Protocol::Conv { .. });
    let q = |full: usize, quick: usize| if args.quick { quick } else { full };
    let run = |part: Part| args.only.is_empty() || args.only.contains(&part);

    // warm up every path (connection pools, the allocator, the page cache)
    scenarios::ttft(&mock, &targets, &mut Vec::new(), Asking::warm_up(4)).await;
    // Other processes on the machine (a build, a test run) disturb every figure: measure
    // in blocks while they are quiet (see `quiet`).
    let mut ours: Vec<u32> = pids.iter().flatten().copied().collect();
    ours.push(std::process::id());
    ours.dedup();
    // PostgreSQL and Redis work for the columns that run on them: not a disturbance.
    let mut servers = Vec::new();
    if chatgates.iter().any(|c| c.bus.is_some()) {
        servers.push("redis-server");
    }
    if chatgates
        .iter()
        .any(|c| c.store_kind.as_deref().is_some_and(|s| s.starts_with("postgres")))
    {
        servers.push("postgres");
    }
    let ours = gateway::Ours { pids: ours, servers };
    let mut quiet = quiet::Quiet::new(ours, args.quiet_below);
    let mut table = Table::new(gateways);

    // Memory first: later scenarios leave freed memory resident, which would hide growth.
    // Measured for each process once (every column has its own, but a peer's pid may be
    // given twice).
    let mut measured = Vec::new();
    let mut idle = Vec::new();
    let mut per_stream = vec![f64::NAN; columns];
    let mut most = vec![String::new(); columns];
    let most_held = q(4000, 800);
    for (g, (target, pid)) in gateways.iter().zip(&pids[1..]).enumerate() {
        let pid = pid.filter(|p| !measured.contains(p) && run(Part::Memory));
        let Some(pid) = pid else {
            idle.push(String::new());
            continue;
        };
        measured.push(pid);
        eprintln!("memory per open stream, {}…", target.name);
        quiet.wait().await;
        let mut points = Vec::new();
        for held in [0, q(1000, 200), q(2000, 400), q(4000, 800)] {
            let rss = scenarios::rss_with_open_streams(&mock, target, pid, held).await;
            points.push((held as f64, rss));
        }
        // the gateway's kept upstream connections go before the next process is measured,
        // and before the next part: a request sent as the mock closes its connection would be
        // sent again, and measured with the retry
        mock.close_idle();
        tokio::time::sleep(Duration::from_millis(500)).await;
        // with nothing open, after every start-up load is done
        idle.push(fmt(points[0].1 / 1024.0, "MiB"));
        per_stream[g] = slope(&points);
        // The whole, not only the slope: a process whose idle figure holds freed memory
        // (a large start-up load) grows less per stream while holding as much.
        most[g] = fmt(points[points.len() - 1].1 / 1024.0, "MiB");
    }
    if run(Part::Memory) {
        table.row("RSS idle", idle, "");
        let cells = per_stream
            .iter()
            .map(|v| if v.is_nan() { String::new() } else { fmt(*v, "KiB") })
            .collect();
        table.row("RSS per open stream", cells, "≤ 8 KiB");
        table.row(&format!("RSS with {most_held} streams open"), most, "");
    }

    let ttft_runs = match run(Part::Ttft) {
        true => vec![(1, q(2000, 200)), (100, q(20, 5))],
        false => vec![],
    };
    for (workers, rounds) in ttft_runs {
        eprintln!("time to first token, {workers} stream(s)…");
        // in blocks, so that a block disturbed by other processes can be measured again
        let block = if workers == 1 { 100 } else { 5 };
        let mut conns = Vec::new();
        let mut s: Vec<Samples> = targets.iter().map(|_| Samples::new(Vec::new())).collect();
        let mut cpu = vec![0.0; targets.len()];
        for first in (0..rounds).step_by(block) {
            let mut tries = 0;
            let (samples, used) = loop {
                let before = quiet.begin().await;
                let cpu_before: Vec<f64> = pids
                    .iter()
                    .map(|p| p.map(gateway::cpu_ms).unwrap_or(f64::NAN))
                    .collect();
                let asking = Asking {
                    workers,
                    rounds: block.min(rounds - first),
                    first_round: first,
                    pause: Duration::from_millis(args.ttft_pause_ms),
                };
                let samples = scenarios::ttft(&mock, &targets, &mut conns, asking).await;
                let used: Vec<f64> = pids
                    .iter()
                    .zip(&cpu_before)
                    .map(|(p, b)| p.map(gateway::cpu_ms).unwrap_or(f64::NAN) - b)
                    .collect();
                if quiet.keep(before, &mut tries) {
                    break (samples, used);
                }
            };
            for (t, samples) in samples.into_iter().enumerate() {
                s[t].merge(samples);
                cpu[t] += used[t];
            }
        }
        if workers == 1 {
            // the CPU of each column's process over its turns, the pump's and a peer's too
            // (should columns ever share a process, its CPU goes in the first of them)
            let mut cells = vec![String::new(); columns];
            for t in 1..targets.len() {
                let Some(pid) = pids[t] else {
                    continue;
                };
                if pids[1..t].contains(&Some(pid)) {
                    continue;
                }
                let turns: usize = (0..targets.len())
                    .filter(|&u| pids[u] == Some(pid))
                    .map(|u| s[u].len())
                    .sum();
                let per_turn = cpu[t] * 1000.0 / turns.max(1) as f64;
                cells[t - 1] = fmt(per_turn, "µs");
            }
            table.row("CPU per turn, 1 stream (4 chunks; `/conv` stores it)", cells, "");
        }
        let goal = if workers == 1 { "≤ 150 µs" } else { "" };
        table.added(&format!("added TTFT p50, {workers} stream(s)"), &s, 50.0, "µs", "");
        table.added(&format!("added TTFT p99, {workers} stream(s)"), &s, 99.0, "µs", goal);
    }

    let mut cpu_per_k = vec![f64::NAN; columns];
    // The 1,000 streams open over a second and then run together for another, so that the
    // steady state is measured rather than a thousand turns set up in one instant.
    let chunk_runs = match run(Part::Chunks) {
        true => vec![
            (1, q(2000, 300), 2, 0),
            (100, q(400, 100), 1, 0),
            (1000, q(100, 60), 20, 1000),
        ]
        .into_iter()
        .filter(|run| args.chunk_streams.contains(&run.0))
        .collect(),
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
        let mut conns = scenarios::relay_conns(&targets, streams);
        let mut r: Option<scenarios::Relay> = None;
        // Each round's gap p99 per target, added to the direct path's in the same round.
        let mut round_p99 = vec![Vec::new(); targets.len()];
        // Each round's CPU per chunk per target, for its ratio to the pump's in that round.
        let mut round_cpu = vec![Vec::new(); targets.len()];
        for round in 0..args.chunk_rounds.max(1) {
            let mut tries = 0;
            let this = loop {
                let before = quiet.begin().await;
                let this = scenarios::relay(&mock, &targets, &pids, &mut conns, shape, round, spread).await;
                if quiet.keep(before, &mut tries) {
                    break this;
                }
            };
            let direct = this.gaps[0].p(99.0);
            for (t, gaps) in this.gaps.iter().enumerate() {
                round_p99[t].push(gaps.p(99.0) - direct);
                round_cpu[t].push(this.cpu_ms[t] / this.chunks[t] as f64);
            }
            match &mut r {
                Some(r) => r.merge(this),
                None => r = Some(this),
            }
        }
        let r = r.expect("at least one round");
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
        if args.chunk_rounds >= 3 {
            // A slow phase of the machine that falls on one target's round decides the
            // pooled p99; the median of the rounds' own p99s is not moved by one such round.
            let cells = round_p99[1..]
                .iter()
                .map(|p99s| fmt(Samples::new(p99s.clone()).p(50.0), "µs"))
                .collect();
            table.row(
                &format!(
                    "added inter-chunk gap p99, {streams} stream(s), median of {} rounds",
                    args.chunk_rounds
                ),
                cells,
                "",
            );
        }
        // Issue targets are ratios to the pump: each round's, the pump measured beside the
        // gateway in that round, and their median, which one slow phase does not move.
        if let Some(floor) = pump_column.map(|p| p + 1).filter(|_| args.chunk_rounds >= 3) {
            let rounds = args.chunk_rounds;
            table.row(
                &format!("added inter-chunk gap p99 ÷ the pump's, {streams} stream(s), median of {rounds} rounds"),
                ratios_to(&round_p99, floor),
                "",
            );
            if streams == 100 {
                table.row(
                    &format!("CPU per chunk ÷ the pump's, median of {rounds} rounds"),
                    ratios_to(&round_cpu, floor),
                    "/v1, 1 worker ≤ 1.3×",
                );
            }
        }
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
    if run(Part::Chunks) && args.chunk_streams.contains(&100) {
        let cpu = cpu_per_k.iter().map(|c| fmt(*c, "ms")).collect();
        table.row("CPU per 1,000 relayed chunks (100 streams × 400)", cpu, "≤ 5 ms");
    }
    if run(Part::Bytes) {
        long_answers(&mock, &targets, &mut table).await;
    }
    if run(Part::Fanout) {
        let readers = q(100, 20);
        let (chunks, pace) = (q(300, 100), Duration::from_millis(10));
        let mut memory = vec![String::new(); columns];
        let mut cpu = vec![String::new(); columns];
        let mut whole = vec![String::new(); columns];
        // Memory per reader on a fresh process of each chatgate: in the one measured so far,
        // the memory freed by earlier scenarios is still resident and would hide the growth.
        let steps = [1, 1 + readers, 1 + 2 * readers, 1 + 4 * readers];
        for (i, gw) in chatgates.iter().enumerate() {
            eprintln!("memory per reader of one generation, {}…", gw.name);
            let store = gw.store_kind.clone().unwrap_or_else(|| fresh(&format!("readers-{i}")));
            let process =
                gateway::Gateway::start(&gw.bin, mock.port, &store, gw.bus.as_deref(), gw.keys, gw.workers).await?;
            let mut columns_of = targets
                .iter()
                .enumerate()
                .skip(1)
                .filter(|(t, _)| pids[*t] == Some(gw.process.pid));
            let Some((t, target)) = columns_of.next() else { continue };
            let fresh_target = Target {
                addr: process.addr,
                follow_at: None,
                ..target.clone()
            };
            scenarios::ttft(
                &mock,
                std::slice::from_ref(&fresh_target),
                &mut Vec::new(),
                Asking::warm_up(1),
            )
            .await;
            let rss = generations::reader_memory(&mock, &fresh_target, process.pid, &steps).await;
            memory[t - 1] = match rss {
                Some(rss) => {
                    let points: Vec<(f64, f64)> = steps.iter().map(|&n| n as f64).zip(rss).collect();
                    fmt(slope(&points), "KiB")
                }
                None => "n/a".into(),
            };
        }
        for (g, target) in gateways.iter().enumerate() {
            let Some(pid) = pids[g + 1] else { continue };
            if !is_chatgate(target) && Some(g) != pump_column {
                continue;
            }
            eprintln!("{readers} readers on one generation, {}…", target.name);
            let mut measured = Vec::new();
            for n in [1, readers] {
                let mut tries = 0;
                measured.push(loop {
                    let before = quiet.begin().await;
                    let out = generations::fanout(&mock, target, &[pid], n, chunks, pace).await;
                    if quiet.keep(before, &mut tries) {
                        break out;
                    }
                });
            }
            let many = measured.pop().flatten();
            let one = measured.pop().flatten();
            let (Some(one), Some(many)) = (one, many) else {
                cpu[g] = "n/a".into();
                continue;
            };
            cpu[g] = format!(
                "{} → {}",
                fmt(one.cpu_per_chunk_us, "µs"),
                fmt(many.cpu_per_chunk_us, "µs")
            );
            whole[g] = match many.coalesced {
                0 => format!("{}/{readers}", many.faithful),
                c => format!("{}/{readers} ({c} coalesced)", many.faithful),
            };
        }
        // The pump cannot fan out: its cells are for as many streams as readers, each
        // relayed for itself, and its memory per open stream.
        if let Some(p) = pump_column
            && !per_stream[p].is_nan()
        {
            memory[p] = format!("{} per stream", fmt(per_stream[p], "KiB"));
        }
        table.row(
            &format!("one generation, {readers} readers: RSS per extra reader"),
            memory,
            "",
        );
        table.row(
            &format!(
                "one generation: CPU per chunk per reader, 1 → {readers} readers ({chunks} chunks, one every {} ms)",
                pace.as_millis()
            ),
            cpu,
            "",
        );
        table.row(
            &format!("one generation, {readers} readers: readers with every chunk one frame"),
            whole,
            "",
        );
    }
    if run(Part::Resume) {
        eprintln!("resume after a dropped connection…");
        let trials = q(200, 40);
        let block = 20;
        let mut r: Option<generations::Resume> = None;
        for _ in (0..trials).step_by(block) {
            let mut tries = 0;
            let this = loop {
                let before = quiet.begin().await;
                let this = generations::resume(
                    &mock,
                    &targets,
                    block,
                    40,
                    Duration::from_millis(2),
                    Duration::from_millis(10),
                )
                .await;
                if quiet.keep(before, &mut tries) {
                    break this;
                }
            };
            match &mut r {
                Some(r) => r.merge(this),
                None => r = Some(this),
            }
        }
        let r = r.expect("at least one block");
        let label = "resume latency (reconnect → first frame";
        for p in [50.0, 99.0] {
            let base = r.latency[0].p(p);
            let cells = r.latency[1..]
                .iter()
                .map(|s| if s.len() == 0 { "n/a".into() } else { fmt(s.p(p), "µs") })
                .collect();
            table.row(
                &format!("{label}) p{p:.0} (direct, a new request: {})", fmt(base, "µs")),
                cells,
                "",
            );
        }
        let cells = gateways
            .iter()
            .zip(&r.correct[1..])
            .map(|(t, (ok, all))| match (is_chatgate(t), all) {
                (true, 0) => "n/a".into(),
                (true, _) => format!("{ok}/{all}"),
                (false, _) => String::new(),
            })
            .collect();
        table.row(
            "resumed streams with every chunk after the resume point, once",
            cells,
            "all",
        );
    }
    if run(Part::Ramp) {
        ramp(&mock, &targets, &pids, &replicas, &args, &mut quiet, &mut table).await;
    }

    table.print();
    for gw in chatgates.iter().filter(|gw| gw.bus.is_some()) {
        println!("\n{}", bus_figures(gw).await);
    }
    for gw in &chatgates {
        if let Some(nginx) = &gw.nginx {
            let own: f64 = nginx.pids.iter().map(|&p| gateway::cpu_ms(p)).sum();
            println!(
                "\n{}: nginx used {:.1} s of CPU over the run, {:.0}% of the column's (its replicas' and nginx's)",
                gw.name,
                own / 1000.0,
                own * 100.0 / gateway::cpu_ms(gw.process.pid)
            );
        }
    }
    println!("\nOther processes on the machine: {}", quiet.summary());
    // The gateways go before their files.
    drop(chatgates);
    drop(scratch);
    Ok(())
}

/// The run's own directory (the gateways' SQLite files, nginx's), removed when the run
/// ends, however it ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Bytes of one long answer through each chatgate column, whole-text frames and deltas.
async fn long_answers(mock: &Mock, targets: &[Target], table: &mut Table) {
    eprintln!("long answers…");
    let chunks = 2000;
    let (direct_bytes, _) = scenarios::long_answer_bytes(mock, &targets[0], chunks).await;
    let mut cells = Vec::new();
    for target in &targets[1..] {
        cells.push(match target.protocol {
            Protocol::Conv { delta } => {
                let (bytes, _) = scenarios::long_answer_bytes(mock, target, chunks).await;
                format!("{} KiB {}", bytes / 1024, if delta { "delta" } else { "full" })
            }
            Protocol::OpenAi => String::new(),
        });
    }
    table.row(
        &format!(
            "bytes for a {chunks}-chunk answer (direct: {} KiB)",
            direct_bytes / 1024
        ),
        cells,
        "linear in delta mode",
    );
}

/// The ramp, for each chatgate's whole-text column; with several runs, each run takes the
/// gateways in another order.
async fn ramp(
    mock: &Mock,
    targets: &[Target],
    pids: &[Option<u32>],
    replicas: &[usize],
    args: &Args,
    quiet: &mut quiet::Quiet,
    table: &mut Table,
) {
    let columns: Vec<usize> = (1..targets.len())
        .filter(|&t| targets[t].protocol == Protocol::Conv { delta: false })
        .collect();
    let mut cells = vec![Vec::new(); targets.len() - 1];
    for r in 0..args.ramp_runs.max(1) {
        for k in 0..columns.len() {
            let t = columns[(k + r) % columns.len()];
            let Some(pid) = pids[t] else { continue };
            eprintln!("concurrency ramp, {}…", targets[t].name);
            let held = ramp_once(mock, &targets[t], pid, args, quiet).await;
            let per_replica = match replicas[t] {
                1 => String::new(),
                n => format!(", {} per replica", held.0 / n),
            };
            cells[t - 1].push(format!(
                "{} ({:.0} frames/s, worst chunk {:.0} ms{per_replica})",
                held.0, held.1, held.2
            ));
        }
    }
    table.row(
        "paced streams held without stalls",
        cells.into_iter().map(|c| c.join("; ")).collect(),
        "≥ 8,000",
    );
}

async fn ramp_once(
    mock: &Mock,
    chatgate: &Target,
    pid: u32,
    args: &Args,
    quiet: &mut quiet::Quiet,
) -> (usize, f64, f64) {
    let mut conns = Vec::new();
    let mut held = (0, 0.0, 0.0);
    let mut steps = args.ramp_steps.clone();
    steps.push(args.max_streams);
    steps.retain(|&n| n <= args.max_streams);
    steps.sort_unstable();
    steps.dedup();
    if args.quick {
        steps = vec![500, 1000];
    }
    for n in steps {
        let me = std::process::id();
        let mut tries = 0;
        let (step, busy, own) = loop {
            let before = quiet.begin().await;
            let (cpu_before, own_before) = (gateway::cpu_ms(pid), gateway::cpu_ms(me));
            let started = std::time::Instant::now();
            let step = scenarios::paced(
                mock,
                chatgate,
                &mut conns,
                n,
                args.ramp_open_per_second,
                Duration::from_millis(500),
            )
            .await;
            // percent of one core over the step
            let percent = |ms: f64| ms / started.elapsed().as_secs_f64() / 10.0;
            let (busy, own) = (
                percent(gateway::cpu_ms(pid) - cpu_before),
                percent(gateway::cpu_ms(me) - own_before),
            );
            if quiet.keep(before, &mut tries) {
                break (step, busy, own);
            }
        };
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
    // let the gateway close the dropped connections, and its kept upstream connections
    // go, before the next run
    tokio::time::sleep(Duration::from_secs(1)).await;
    mock.close_idle();
    tokio::time::sleep(Duration::from_secs(2)).await;
    held
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

/// Each gateway column's median over rounds of its figure divided by the `floor` target's
/// in the same round. A round whose floor figure is not above zero (an added gap can be,
/// when the pump evened out the mock's jitter) has no ratio.
fn ratios_to(rounds: &[Vec<f64>], floor: usize) -> Vec<String> {
    rounds[1..]
        .iter()
        .map(|own| {
            let ratios = own
                .iter()
                .zip(&rounds[floor])
                .filter(|(_, f)| **f > 0.0)
                .map(|(o, f)| o / f)
                .collect();
            match Samples::new(ratios).p(50.0) {
                r if r.is_finite() => format!("{r:.2}×"),
                _ => "n/a".into(),
            }
        })
        .collect()
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

/// What a chatgate on a bus says of its round trips to Redis, from its `/metrics` (a
/// column's two replicas together).
async fn bus_figures(gw: &Chatgate) -> String {
    let mut said = Vec::new();
    let conv: Vec<&gateway::Gateway> = [Some(&gw.process), gw.across.as_ref()].into_iter().flatten().collect();
    for processes in [conv, gw.delta.iter().collect(), gw.v1.iter().collect()] {
        if processes.is_empty() {
            continue;
        }
        let (mut trips, mut chunks, mut failed) = (0.0, 0.0, 0.0);
        for process in processes {
            let text = gateway::metrics(process.addr).await.unwrap_or_default();
            let value = |name: &str| {
                text.lines()
                    .find(|l| l.split_whitespace().next() == Some(name))
                    .and_then(|l| l.rsplit_once(' '))
                    .and_then(|(_, v)| v.parse::<f64>().ok())
                    .unwrap_or(f64::NAN)
            };
            trips += value("chatgate_bus_round_trips_total");
            chunks += value("chatgate_bus_chunks_total");
            failed += value("chatgate_bus_write_errors_total");
        }
        said.push(format!(
            "{chunks} chunks in {trips} round trips ({:.3} per chunk), {failed} failed",
            trips / chunks,
        ));
    }
    format!(
        "{} on the bus (per column: /conv on its replicas, delta, /v1): {}",
        gw.name,
        said.join("; ")
    )
}
