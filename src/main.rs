use chatgate::config::{Cli, Settings};
use chatgate::startup::Application;
use clap::Parser;
use std::process::ExitCode;

#[actix_web::main]
async fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let settings = match Settings::from_cli(Cli::parse()) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("chatgate: {e}");
            return ExitCode::from(2);
        }
    };
    let app = match Application::build(settings).await {
        Ok(app) => app,
        Err(e) => {
            eprintln!("chatgate: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("chatgate listening on http://{}", app.address());
    match app.run_until_stopped().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chatgate: {e}");
            ExitCode::FAILURE
        }
    }
}
