use chatgate::config::{Cli, Settings};
use chatgate::startup::Application;
use clap::Parser;
use std::process::ExitCode;

#[actix_web::main]
async fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    // clap takes a key from its flag or from its variable: a key the environment does not
    // hold came from the command line, where `ps` shows it to every user.
    for (key, flag, variable, instead) in [
        (
            &cli.upstream_key,
            "--upstream-key",
            "OPENAI_API_KEY",
            "OPENAI_API_KEY or --upstream-key-file",
        ),
        (
            &cli.anthropic_key,
            "--anthropic-key",
            "ANTHROPIC_API_KEY",
            "ANTHROPIC_API_KEY",
        ),
    ] {
        if let Some(key) = key
            && !key.trim().is_empty()
            && std::env::var(variable).ok().as_deref() != Some(key.as_str())
        {
            log::warn!(
                "the upstream key was given with {flag}, which shows in the process list (ps): use {instead} instead"
            );
        }
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
