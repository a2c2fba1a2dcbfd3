//! A real Redis server for the tests: one per test that asks (a test may restart its own),
//! started with the machine's `redis-server` on a free port of the loopback, in a temporary
//! directory, without persistence. A watchdog shell stops it and removes the directory once
//! the test process has gone, and dropping the handle stops it at once.
//!
//! The binary comes from Debian's `redis-server` package (`.ci/run` installs it), or is the
//! one in `CHATGATE_TEST_REDIS_SERVER`.

use crate::watched;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
}

fn binary() -> PathBuf {
    watched::binary(
        "CHATGATE_TEST_REDIS_SERVER",
        "/usr/bin/redis-server",
        "the bus tests need a Redis server: install Debian's `redis-server` package (.ci/run does)",
    )
}

impl RedisServer {
    /// A new server on a free port, taking commands when this returns.
    pub async fn start() -> Self {
        let server = Self::start_on(watched::free_port());
        server.wait_until_up().await;
        server
    }

    fn start_on(port: u16) -> Self {
        let dir = watched::directory("chatgate-redis-");
        let redis = format!(
            "{} --port {port} --bind 127.0.0.1 --save '' --appendonly no --dir {} --pidfile {}",
            binary().display(),
            dir.display(),
            dir.join("redis.pid").display(),
        );
        watched::run(&redis, &dir, "TERM");
        Self { port, dir }
    }

    async fn wait_until_up(&self) {
        let asked = Instant::now();
        loop {
            if let Ok(client) = redis::Client::open(self.url())
                && let Ok(mut conn) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok()
            {
                return;
            }
            assert!(
                asked.elapsed() < Duration::from_secs(20),
                "the test Redis server did not start on port {}: {}",
                self.port,
                watched::log(&self.dir)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// A connection of the test's own, to look at what the replicas keep.
    pub async fn connect(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("a Redis URL")
            .get_multiplexed_async_connection()
            .await
            .expect("the test Redis server takes connections")
    }

    /// Stops the server (its data is gone) and starts an empty one on the same port.
    pub async fn restart(&mut self) {
        self.stop();
        let gone = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(
                gone.elapsed() < Duration::from_secs(10),
                "the Redis server did not stop"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let started = Self::start_on(self.port);
        self.dir = started.dir.clone();
        std::mem::forget(started);
        self.wait_until_up().await;
    }

    fn stop(&self) {
        watched::stop(&self.dir, "TERM");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
