//! A real nginx for the tests, run with the shipped `deploy/nginx.conf`: its two upstream
//! servers become the replicas' test addresses and it listens on a free loopback port; the
//! rest of the file is used as it is. A watchdog shell stops it once the test process has
//! gone, and dropping the handle stops it at once.
//!
//! The binary comes from Debian's `nginx` package (`.ci/run` installs it), or is the one in
//! `CHATGATE_TEST_NGINX`.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct Nginx {
    pub port: u16,
    dir: PathBuf,
}

fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("CHATGATE_TEST_NGINX") {
        return PathBuf::from(path);
    }
    let path = PathBuf::from("/usr/sbin/nginx");
    assert!(
        path.is_file(),
        "the nginx tests need nginx: install Debian's `nginx` package (.ci/run does), or set CHATGATE_TEST_NGINX to its binary"
    );
    path
}

impl Nginx {
    /// nginx in front of the replicas on `ports`, taking requests when this returns.
    pub async fn start(replicas: [u16; 2]) -> Self {
        let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/nginx.conf"))
            .expect("deploy/nginx.conf");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = tempfile::Builder::new()
            .prefix("chatgate-nginx-")
            .tempdir()
            .expect("a temporary directory")
            .keep();
        let config = shipped
            .replace("server replica-a:8000", &format!("server 127.0.0.1:{}", replicas[0]))
            .replace("server replica-b:8000", &format!("server 127.0.0.1:{}", replicas[1]))
            .replace("listen 80;", &format!("listen 127.0.0.1:{port};"))
            .replace("worker_processes auto;", "worker_processes 1;")
            .replace("worker_connections 16384;", "worker_connections 512;")
            // Its own files, not the system's.
            .replace(
                "http {",
                &format!(
                    "http {{\n    access_log off;\n    client_body_temp_path {d}/body;\n    proxy_temp_path {d}/proxy;\n    \
                     fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;",
                    d = dir.display()
                ),
            );
        for (from, to) in [("replica-a", replicas[0]), ("replica-b", replicas[1])] {
            assert!(!config.contains(from), "{from} was replaced by port {to}");
        }
        let file = dir.join("nginx.conf");
        std::fs::write(&file, config).expect("the config is written");
        let nginx = format!(
            "{} -p {d} -c {file} -e {d}/error.log -g 'daemon off; pid {d}/nginx.pid; user root;'",
            binary().display(),
            d = dir.display(),
            file = file.display(),
        );
        let watchdog = format!(
            "{nginx} >{d}/out.log 2>&1 & n=$!; echo $n >{d}/watched.pid; \
             while [ -d /proc/{me} ] && kill -0 $n 2>/dev/null; do sleep 0.2; done; \
             kill -QUIT $n 2>/dev/null; wait $n; rm -rf {d}",
            d = dir.display(),
            me = std::process::id(),
        );
        let mut watchdog = Command::new("sh")
            .args(["-c", &watchdog])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx starts");
        std::thread::spawn(move || watchdog.wait());
        let nginx = Self { port, dir };
        let asked = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            let log = std::fs::read_to_string(nginx.dir.join("error.log")).unwrap_or_default();
            assert!(
                asked.elapsed() < Duration::from_secs(20),
                "nginx did not start on port {port}: {log}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        nginx
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("watched.pid")) {
            let _ = Command::new("kill").args(["-QUIT", pid.trim()]).status();
        }
    }
}
