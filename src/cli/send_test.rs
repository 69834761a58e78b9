use std::{path::PathBuf, process::ExitCode, time::SystemTime};

use anyhow::Context;

use crate::config::Settings;
use crate::providers::Source;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The configured source to sign for.
    #[arg(long)]
    source: String,
    /// Payload to send instead of the provider's sample.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Ingress base URL (default: from `http.ingress_addr`).
    #[arg(long)]
    url: Option<String>,
}

pub async fn run(settings: &Settings, args: Args) -> anyhow::Result<ExitCode> {
    let source_settings = settings
        .source(&args.source)
        .with_context(|| format!("source {:?} is not configured", args.source))?;
    let source = Source::new(source_settings, &crate::providers::http::http_client()?)?;
    let now = SystemTime::now();
    let event_id = format!("msg_test_{}", uuid::Uuid::new_v4().simple());
    let body = match &args.file {
        Some(path) => std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        None => source.sample_body(&event_id, now),
    };
    let base = args.url.unwrap_or_else(|| {
        let mut addr = settings.http.ingress_addr;
        if addr.ip().is_unspecified() {
            addr.set_ip([127, 0, 0, 1].into());
        }
        format!("http://{addr}")
    });
    let url = format!("{}/webhooks/{}", base.trim_end_matches('/'), source.id());
    let mut request = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/json");
    for (name, value) in source.sign(&event_id, &body, now) {
        request = request.header(name, value);
    }
    let response = request
        .body(body)
        .send()
        .await
        .with_context(|| format!("posting to {url}"))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    println!("POST {url} (event {event_id}) -> {status} {text}");
    Ok(if status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
