//! The floor: a TCP pump that forwards bytes between each client and the mock, one read
//! and one write per chunk, with no HTTP at all. Run as a child process of its own (so its
//! CPU and memory can be read from /proc), on a single-threaded runtime.

use std::io;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// What the pump prints once it listens, followed by its address.
pub const READY: &str = "pump listening on ";

/// Serves forever: every connection gets its own connection to `upstream`.
pub fn run(upstream: String) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        println!("{READY}{}", listener.local_addr()?);
        loop {
            // a failed accept (out of file descriptors, say) ends one connection, not the pump
            let Ok((mut client, _)) = listener.accept().await else {
                // out of file descriptors, say: try again soon rather than spin
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                continue;
            };
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(&upstream).await else {
                    let _ = client.shutdown().await;
                    return;
                };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    })
}
