//! The gateway under test as a child process, and what /proc says about it.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A process under test, started as a child of the benchmark.
pub struct Gateway {
    pub addr: SocketAddr,
    pub pid: u32,
    _child: Child,
    /// Dropped after the child, which is killed as it drops.
    _cpu: Option<crate::cpu_limit::CpuLimit>,
}

impl Gateway {
    /// Starts the chatgate binary `bin` on a free port against the mock on `mock_port`;
    /// with `keys`, every request needs the client key the load client sends; `workers`:
    /// its `--workers` (else its default, one per CPU).
    pub async fn start(
        bin: &Path,
        mock_port: u16,
        store: &str,
        bus: Option<&str>,
        keys: bool,
        workers: Option<u32>,
    ) -> io::Result<Self> {
        let mut command = Command::new(bin);
        command
            .args(["--listen", "127.0.0.1:0"])
            .args(["--upstream-url", &format!("http://127.0.0.1:{mock_port}/v1")])
            .args(["--store", store])
            .args(["--upstream-idle-timeout", "600"])
            // In the environment, as the gateway asks (a key given as a flag shows in `ps`,
            // and the gateway warns of it).
            .env("OPENAI_API_KEY", "bench-key")
            .env("RUST_LOG", "warn");
        if let Some(bus) = bus {
            command.args(["--bus", bus]);
        }
        if keys {
            command.args(["--api-keys", "bench:bench-client-key"]);
        }
        if let Some(workers) = workers {
            command.args(["--workers", &workers.to_string()]);
        }
        let mut gateway = Self::spawn(command, "chatgate listening on http://").await?;
        gateway._cpu = crate::cpu_limit::CpuLimit::apply(gateway.pid)?;
        Ok(gateway)
    }

    /// Starts this benchmark's own TCP pump (see `pump`) in front of the mock.
    pub async fn start_pump(mock_port: u16) -> io::Result<Self> {
        let mut command = Command::new(std::env::current_exe()?);
        command.args(["--pump-to", &format!("127.0.0.1:{mock_port}")]);
        Self::spawn(command, crate::pump::READY).await
    }

    /// Runs `command` and waits for the line `ready` followed by the address it serves on.
    async fn spawn(mut command: Command, ready: &str) -> io::Result<Self> {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let pid = child
            .id()
            .ok_or_else(|| io::Error::other("the process exited at once"))?;
        let stdout = child.stdout.take().ok_or_else(|| io::Error::other("no stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        while let Some(line) = lines.next_line().await? {
            if let Some(addr) = line.strip_prefix(ready) {
                let addr = addr.trim().parse().map_err(io::Error::other)?;
                // keep draining stdout so the child never blocks on a full pipe
                tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
                return Ok(Self {
                    addr,
                    pid,
                    _child: child,
                    _cpu: None,
                });
            }
        }
        Err(io::Error::other("the process never said where it listens"))
    }
}

/// Processes that count with another in every figure (CPU time, memory): a column of two
/// replicas, or of replicas behind nginx, is measured as one deployment under its first
/// replica's pid.
static COMPANIONS: std::sync::Mutex<Vec<(u32, Vec<u32>)>> = std::sync::Mutex::new(Vec::new());

/// From now on, the CPU time and memory of `pid` include those of `others`.
pub fn count_with(pid: u32, others: &[u32]) {
    let mut companions = COMPANIONS.lock().unwrap_or_else(|e| e.into_inner());
    match companions.iter_mut().find(|(p, _)| *p == pid) {
        Some((_, known)) => known.extend_from_slice(others),
        None => companions.push((pid, others.to_vec())),
    }
}

/// `pid` and the processes that count with it.
fn group(pid: u32) -> Vec<u32> {
    let companions = COMPANIONS.lock().unwrap_or_else(|e| e.into_inner());
    let mut all = vec![pid];
    if let Some((_, others)) = companions.iter().find(|(p, _)| *p == pid) {
        all.extend_from_slice(others);
    }
    all
}

/// The processes on the machine for which `keep` is true of their pid.
fn processes_where(keep: impl Fn(u32) -> bool) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| keep(pid))
        .collect()
}

/// The processes whose parent is `pid` (nginx's workers).
pub fn children(pid: u32) -> Vec<u32> {
    processes_where(|child| {
        std::fs::read_to_string(format!("/proc/{child}/stat"))
            .ok()
            .and_then(|stat| {
                let after = stat.rsplit_once(')')?.1.to_owned();
                after.split_whitespace().nth(1)?.parse::<u32>().ok()
            })
            == Some(pid)
    })
}

/// User + system CPU time of process `pid` (and the processes that count with it) so far,
/// in milliseconds.
pub fn cpu_ms(pid: u32) -> f64 {
    group(pid).into_iter().map(own_cpu_ms).sum()
}

fn own_cpu_ms(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // fields after the parenthesised command name; utime and stime are the 14th and 15th
    let Some(after) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
        return f64::NAN;
    };
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN)
        + fields.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
    ticks * 1000.0 / clock_ticks()
}

/// CPU time of every thread of process `pid` so far, in nanoseconds (the scheduler's own
/// count, `/proc/PID/task/*/schedstat`): exact where [`cpu_ms`] counts in clock ticks, for
/// windows too short for ticks. Threads that ended meanwhile are not counted. With the
/// processes that count with `pid`.
pub fn cpu_ns(pid: u32) -> f64 {
    group(pid).into_iter().map(own_cpu_ns).sum()
}

fn own_cpu_ns(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return f64::NAN;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// Busy CPU time of the whole machine so far, all cores, in milliseconds (`/proc/stat`).
pub fn machine_busy_ms() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return f64::NAN;
    };
    let Some(line) = stat.lines().next() else {
        return f64::NAN;
    };
    // user nice system idle iowait irq softirq steal: without IRQ time accounting (the
    // kernels this ran on) interrupts are charged to the process they interrupted, so
    // they count on both sides; time stolen by the hypervisor counts as others' too
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 8 {
        return f64::NAN;
    }
    let busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    busy * 1000.0 / clock_ticks()
}

/// What the processes outside the benchmark did to the machine: a snapshot to compare.
pub struct Others {
    at: std::time::Instant,
    busy: f64,
    ours: f64,
}

/// The processes the run counts as its own: `pids` (with their companions), and every
/// process named one of `servers` (the PostgreSQL and Redis its columns run on, which
/// work for its load; their processes come and go, so they are looked up each time).
pub struct Ours {
    pub pids: Vec<u32>,
    pub servers: Vec<&'static str>,
}

impl Ours {
    fn cpu_ms(&self) -> f64 {
        let servers: f64 = pids_named(&self.servers).into_iter().map(own_cpu_ms).sum();
        self.pids.iter().map(|&p| cpu_ms(p)).sum::<f64>() + servers
    }
}

/// The processes whose command name is one of `names`.
fn pids_named(names: &[&str]) -> Vec<u32> {
    if names.is_empty() {
        return Vec::new();
    }
    processes_where(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| names.contains(&comm.trim()))
    })
}

impl Others {
    pub fn now(ours: &Ours) -> Self {
        Self {
            at: std::time::Instant::now(),
            busy: machine_busy_ms(),
            ours: ours.cpu_ms(),
        }
    }

    pub fn elapsed(&self) -> std::time::Duration {
        self.at.elapsed()
    }

    /// Percent of one core that other processes used since `self`.
    pub fn percent_since(&self, ours: &Ours) -> f64 {
        let now = Self::now(ours);
        let others = (now.busy - self.busy) - (now.ours - self.ours);
        others.max(0.0) / self.at.elapsed().as_secs_f64() / 10.0
    }
}

fn clock_ticks() -> f64 {
    // asked once: `getconf` is a process of its own
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Resident memory of `pid` and the processes that count with it, in KiB.
pub fn rss_kib(pid: u32) -> f64 {
    group(pid).into_iter().map(own_rss_kib).sum()
}

fn own_rss_kib(pid: u32) -> f64 {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return f64::NAN;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(f64::NAN)
}

/// The text of `GET /metrics` at `addr`.
pub async fn metrics(addr: SocketAddr) -> io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response)
}
