use std::process::ExitCode;

use crate::config::Settings;
use crate::db::Db;

pub async fn run(settings: &Settings) -> anyhow::Result<ExitCode> {
    Db::connect_lazy(&settings.database)?.migrate().await?;
    println!("migrations applied");
    Ok(ExitCode::SUCCESS)
}
