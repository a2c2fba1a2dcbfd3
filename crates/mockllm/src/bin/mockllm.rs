//! `mockllm --listen 127.0.0.1:0`: the mock upstream as a process, for the browser tests
//! and the benchmark. Prints `mockllm listening on http://ADDR` once it is serving.

use mockllm::MockLlm;

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut listen = "127.0.0.1:0".to_owned();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().unwrap_or(listen),
            other => {
                eprintln!("mockllm: unknown argument {other:?}; usage: mockllm [--listen ADDR]");
                std::process::exit(2);
            }
        }
    }
    let mock = MockLlm::start(&listen)?;
    println!("mockllm listening on http://127.0.0.1:{}", mock.port());
    tokio::signal::ctrl_c().await?;
    mock.stop().await;
    Ok(())
}
