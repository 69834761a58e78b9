use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use crate::app::{self, Role};
use crate::config::Settings;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Which parts to run in this process, so they can scale apart.
    #[arg(long, value_enum, default_value = "all")]
    role: Role,
}

pub async fn run(settings: &Settings, args: Args) -> anyhow::Result<ExitCode> {
    settings.check_serve()?;
    let shutdown = CancellationToken::new();
    app::cancel_on_signals(shutdown.clone());
    let running = app::start(settings, args.role, shutdown).await?;
    running.wait().await;
    Ok(ExitCode::SUCCESS)
}
