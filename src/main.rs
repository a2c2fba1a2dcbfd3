use chatgate::config::{Cli, Settings};
use chatgate::startup::Application;
use clap::Parser;
use std::process::ExitCode;

#[actix_web::main]
async fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    // clap takes the key from the flag or from OPENAI_API_KEY: a key the environment does
    // not hold came from the command line, where `ps` shows it to every user.
    if let Some(key) = &cli.upstream_key
        && !key.trim().is_empty()
        && std::env::var("OPENAI_API_KEY").ok().as_deref() != Some(key.as_str())
    {
        log::warn!(
            "the upstream key was given with --upstream-key, which shows in the process list (ps): \
             use OPENAI_API_KEY or --upstream-key-file instead"
        );
    }
    let settings = match Settings::from_cli(cli) {
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
