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
}

impl Gateway {
    /// Starts the chatgate binary `bin` on a free port against the mock on `mock_port`.
    pub async fn start(bin: &Path, mock_port: u16, store: &str) -> io::Result<Self> {
        let mut command = Command::new(bin);
        command
            .args(["--listen", "127.0.0.1:0"])
            .args(["--upstream-url", &format!("http://127.0.0.1:{mock_port}/v1")])
            .args(["--upstream-key", "bench-key"])
            .args(["--store", store])
            .args(["--upstream-idle-timeout", "600"])
            .env("RUST_LOG", "warn");
        Self::spawn(command, "chatgate listening on http://").await
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
                });
            }
        }
        Err(io::Error::other("the process never said where it listens"))
    }
}

/// User + system CPU time of process `pid` so far, in milliseconds.
pub fn cpu_ms(pid: u32) -> f64 {
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

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

pub fn rss_kib(pid: u32) -> f64 {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return f64::NAN;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(f64::NAN)
}
