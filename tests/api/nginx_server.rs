//! A real nginx for the tests, run with the shipped `deploy/nginx.conf`: its two upstream
//! servers become the replicas' test addresses and it listens on a free loopback port; the
//! rest of the file is used as it is. A watchdog shell stops it once the test process has
//! gone, and dropping the handle stops it at once.
//!
//! The binary comes from Debian's `nginx` package (`.ci/run` installs it), or is the one in
//! `CHATGATE_TEST_NGINX`.

use crate::watched;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub struct Nginx {
    pub port: u16,
    dir: PathBuf,
}

fn binary() -> PathBuf {
    watched::binary(
        "CHATGATE_TEST_NGINX",
        "/usr/sbin/nginx",
        "the nginx tests need nginx: install Debian's `nginx` package (.ci/run does)",
    )
}

impl Nginx {
    /// nginx in front of the replicas on `ports`, taking requests when this returns.
    pub async fn start(replicas: [u16; 2]) -> Self {
        let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/nginx.conf"))
            .expect("deploy/nginx.conf");
        let port = watched::free_port();
        let dir = watched::directory("chatgate-nginx-");
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
        watched::run(&nginx, &dir, "QUIT");
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
        watched::stop(&self.dir, "QUIT");
    }
}
