//! `api`: the ANB Rising Stars REST API server.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Serves the ANB Rising Stars REST API.
///
/// Settings come from the built-in defaults (config/default.toml), then each --config
/// file in order, then APP__SECTION__KEY environment variables (DATABASE_URL works too).
/// Stops gracefully on SIGTERM or Ctrl-C: in-flight requests finish first.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Configuration file to layer over the defaults (repeatable, e.g. config/local.toml).
    #[arg(
        long = "config",
        value_name = "FILE",
        env = "APP_CONFIG",
        value_delimiter = ','
    )]
    config: Vec<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match backends::settings::Settings::load(&cli.config) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("api: {e}");
            return ExitCode::FAILURE;
        }
    };
    backends::init_tracing(&settings.log);
    let result = async {
        api::Application::build(settings)
            .await?
            .run_until_stopped()
            .await
            .map_err(Into::into)
    };
    match result.await {
        Ok(()) => {
            tracing::info!("API stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            let e: anyhow::Error = e;
            tracing::error!(error = format!("{e:#}"), "API failed");
            eprintln!("api: {e:#}");
            ExitCode::FAILURE
        }
    }
}
