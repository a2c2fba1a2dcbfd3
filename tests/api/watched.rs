//! What the tests' real servers (PostgreSQL, Redis, nginx) have in common: a free loopback
//! port, a temporary directory of their own, and a watchdog shell that runs the server in
//! the background and, once the test process has gone or the server stopped, stops it and
//! removes the directory, so that nothing outlives the tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The server binary in the environment variable `env`, or else `default`, which must be
/// there (`missing` says how to get it).
pub fn binary(env: &str, default: &str, missing: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env) {
        return PathBuf::from(path);
    }
    let path = PathBuf::from(default);
    assert!(path.is_file(), "{missing}, or set {env} to its binary");
    path
}

/// A free port on the loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A new temporary directory, left for the watchdog to remove after its server stopped.
pub fn directory(prefix: &str) -> PathBuf {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("a temporary directory")
        .keep()
}

/// Runs the shell command `server` in the background, its output in `dir/server.log`,
/// watched: once this test process is gone, or the server has ended, the watchdog sends it
/// `signal` (`TERM`, or what the server takes as "stop now"), waits for it and removes
/// `dir`. [`stop`] stops it sooner.
pub fn run(server: &str, dir: &Path, signal: &str) {
    let watchdog = format!(
        "{server} >{dir}/server.log 2>&1 & s=$!; echo $s >{dir}/watched.pid; \
         while [ -d /proc/{me} ] && kill -0 $s 2>/dev/null; do sleep 0.2; done; \
         kill -{signal} $s 2>/dev/null; wait $s; rm -rf {dir}",
        dir = dir.display(),
        me = std::process::id(),
    );
    let mut watchdog = Command::new("sh")
        .args(["-c", &watchdog])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the watchdog shell starts");
    // Reaped if it ends while the tests run; it outlives this process otherwise.
    std::thread::spawn(move || watchdog.wait());
}

/// The server's log so far, for a failed start.
pub fn log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
}

/// Sends `signal` to the server [`run`] started in `dir`, if it runs.
pub fn stop(dir: &Path, signal: &str) {
    if let Ok(pid) = std::fs::read_to_string(dir.join("watched.pid")) {
        let _ = Command::new("kill").arg(format!("-{signal}")).arg(pid.trim()).status();
    }
}
