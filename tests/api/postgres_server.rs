//! A real PostgreSQL server for the tests: one per test process, in a temporary directory,
//! made with the machine's `initdb` and started with its `postgres` on a free port of the
//! loopback. A watchdog shell stops it and removes the directory once the test process has
//! gone. Each test gets a database of its own.
//!
//! The binaries come from Debian's `postgresql` package (`.ci/run` installs it), or from
//! the directory in `CHATGATE_TEST_PG_BIN`. PostgreSQL refuses to run as root: as root, the
//! server runs as the `postgres` user that package creates.

use crate::watched;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

struct Server {
    port: u16,
}

static SERVER: OnceLock<Server> = OnceLock::new();

/// The URL of a new, empty database on the test server (started on first use).
pub async fn fresh_database() -> String {
    let server = SERVER.get_or_init(start);
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    // The port opens a moment before the server takes queries.
    let asked = Instant::now();
    let (client, connection) = loop {
        match tokio_postgres::connect(&server.url("postgres"), tokio_postgres::NoTls).await {
            Ok(connected) => break connected,
            Err(e) if asked.elapsed() > Duration::from_secs(30) => panic!("the test PostgreSQL server: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("a test database is created");
    server.url(&name)
}

impl Server {
    fn url(&self, database: &str) -> String {
        format!("postgres://chatgate@127.0.0.1:{}/{database}", self.port)
    }
}

fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CHATGATE_TEST_PG_BIN") {
        return PathBuf::from(dir);
    }
    // Debian keeps each major version's server binaries apart; take the newest.
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| entries.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    versions.retain(|dir| dir.join("initdb").is_file());
    versions.sort_by_key(|dir| {
        let version = dir.parent().and_then(Path::file_name).and_then(|v| v.to_str());
        version.and_then(|v| v.parse::<u32>().ok()).unwrap_or(0)
    });
    versions.pop().unwrap_or_else(|| {
        panic!(
            "the PostgreSQL tests need a PostgreSQL server's binaries (initdb, postgres): install Debian's \
             `postgresql` package (.ci/run does), or set CHATGATE_TEST_PG_BIN to their directory"
        )
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0")
}

fn start() -> Server {
    let bin = bin_dir();
    let dir = watched::directory("chatgate-pg-");
    // As root, the server's files and process belong to `postgres`.
    let as_server_user: Vec<String> = match is_root() {
        true => {
            let owned = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                owned,
                "running as root, the PostgreSQL tests need the `postgres` user (Debian's `postgresql` package makes it)"
            );
            ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]
                .map(String::from)
                .to_vec()
        }
        false => Vec::new(),
    };
    let data = dir.join("data");
    let mut initdb = Command::new(as_server_user.first().map_or(bin.join("initdb"), PathBuf::from));
    initdb
        .args(as_server_user.iter().skip(1))
        .args(as_server_user.first().map(|_| bin.join("initdb")))
        .arg("-D")
        .arg(&data)
        .args(["-U", "chatgate", "-A", "trust", "-E", "UTF8", "--no-sync"])
        .stdout(Stdio::null());
    let out = initdb.output().expect("initdb runs");
    assert!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let port = watched::free_port();
    let postgres = format!(
        "{} {} -D {} -p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
         -c full_page_writes=off -c max_connections=200",
        as_server_user.join(" "),
        bin.join("postgres").display(),
        data.display(),
        dir.display(),
    );
    watched::run(&postgres, &dir, "INT");

    let ready = Instant::now();
    let server = Server { port };
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if ready.elapsed() > Duration::from_secs(30) {
            panic!(
                "the test PostgreSQL server did not open port {port} within 30 s; its log:\n{}",
                watched::log(&dir)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}
