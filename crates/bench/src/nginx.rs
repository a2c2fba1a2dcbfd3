//! nginx in front of a column's replicas, run with the shipped `deploy/nginx.conf`: its
//! two upstream servers become the replicas' addresses (one replica: both lines name it)
//! and it listens on a free loopback port, with its files in the benchmark's directory.
//! The binary is Debian's (`/usr/sbin/nginx`) or the one in `CHATGATE_BENCH_NGINX`.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

pub struct Nginx {
    pub addr: SocketAddr,
    /// The master and its workers.
    pub pids: Vec<u32>,
    child: Child,
}

impl Nginx {
    /// nginx in front of `replicas` (one or two), its files under `dir`.
    pub async fn start(replicas: &[SocketAddr], dir: &Path) -> io::Result<Self> {
        let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/nginx.conf"))?;
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let (a, b) = match replicas {
            [a] => (a, a),
            [a, b] => (a, b),
            _ => return Err(io::Error::other("nginx is put in front of one or two replicas")),
        };
        std::fs::create_dir_all(dir)?;
        // its temporary files in `dir`, not the system's, and no access log
        let own: String = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
            .iter()
            .map(|kind| format!("\n    {kind}_temp_path {};", dir.join(kind).display()))
            .collect();
        let config = shipped
            .replace("server replica-a:8000", &format!("server {a}"))
            .replace("server replica-b:8000", &format!("server {b}"))
            .replace("listen 80;", &format!("listen {addr};"))
            .replace("http {", &format!("http {{\n    access_log off;{own}"));
        if config.contains("replica-a") || config.contains("replica-b") || !config.contains(&addr.to_string()) {
            return Err(io::Error::other(
                "deploy/nginx.conf no longer has the lines the benchmark replaces",
            ));
        }
        let file = dir.join("nginx.conf");
        std::fs::write(&file, config)?;
        let bin =
            std::env::var_os("CHATGATE_BENCH_NGINX").map_or_else(|| PathBuf::from("/usr/sbin/nginx"), PathBuf::from);
        let child = Command::new(bin)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&file)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-g")
            .arg(format!(
                "daemon off; user root; pid {};",
                dir.join("nginx.pid").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        let master = child.id().ok_or_else(|| io::Error::other("nginx exited at once"))?;
        let asked = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            if asked.elapsed() > Duration::from_secs(20) {
                let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
                return Err(io::Error::other(format!("nginx did not start on {addr}: {log}")));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // its port takes connections before the workers are forked: wait for one per core
        // (`worker_processes auto`)
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut workers = crate::gateway::children(master);
        while workers.len() < cores && asked.elapsed() < Duration::from_secs(20) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            workers = crate::gateway::children(master);
        }
        let mut pids = vec![master];
        pids.extend(workers);
        Ok(Self { addr, pids, child })
    }
}

impl Drop for Nginx {
    /// A graceful stop: the master takes its workers with it (killing the master alone
    /// would leave them running, which is why the child is not killed on drop).
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-QUIT", &pid.to_string()])
                .status();
        }
    }
}
