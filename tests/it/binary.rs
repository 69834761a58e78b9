//! The real binary: `serve` comes up from a config file, `send-test` gets a 2xx and the
//! event lands in Postgres, SIGTERM stops it cleanly, and at debug level its whole log
//! output never contains a secret.

use crate::common;

use std::{
    io::Read,
    process::{Command, Stdio},
    time::Duration,
};

use common::{TestConfig, eventually};
use subsync::{config::Settings, db::Db};

const BIN: &str = env!("CARGO_BIN_EXE_subsync");
const SOURCE_SECRET: &str = "whsec_bG9nLWxlYWstY2FuYXJ5LXNpZ25pbmcta2V5"; // "log-leak-canary-signing-key"
const ENV_SECRET: &str = "whsec_ZW52LWNhbmFyeS1zZWNyZXQtdmFsdWUtOTk="; // "env-canary-secret-value-99"
const ADMIN_TOKEN: &str = "canary-admin-token-4242424242";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn serve_send_test_sigterm_and_no_secret_in_logs() {
    let mut config = TestConfig::new().await;
    config.extra = format!(
        r#"
[[sources]]
id = "canary"
provider = "standard"
secrets = ["{SOURCE_SECRET}", "env:SUBSYNC_CANARY_SECRET"]
"#
    );
    let (ingress, admin) = (free_port(), free_port());
    let toml = config
        .toml()
        .replace(
            "ingress_addr = \"127.0.0.1:0\"",
            &format!("ingress_addr = \"127.0.0.1:{ingress}\""),
        )
        .replace(
            "admin_addr = \"127.0.0.1:0\"",
            &format!("admin_addr = \"127.0.0.1:{admin}\""),
        )
        .replace("test-admin-token-0123456789", ADMIN_TOKEN);
    let path = std::env::temp_dir().join(format!("{}-bin.toml", config.prefix));
    std::fs::write(&path, toml).unwrap();

    let mut child = Command::new(BIN)
        .args(["serve", "--role", "all"])
        .env("SUBSYNC_CONFIG", &path)
        .env("SUBSYNC_CANARY_SECRET", ENV_SECRET)
        .env("RUST_LOG", "debug")
        .env("SUBSYNC__LOG__FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut out = String::new();
        stderr.read_to_string(&mut out).unwrap();
        out
    });

    let http = reqwest::Client::new();
    let ready = eventually(Duration::from_secs(30), || {
        let http = http.clone();
        async move {
            let r = http
                .get(format!("http://127.0.0.1:{admin}/readyz"))
                .send()
                .await;
            r.is_ok_and(|r| r.status() == 200)
        }
    })
    .await;
    assert!(ready, "service became ready");

    // The newcomer's one-liner: sign a sample and post it.
    for source in ["demo", "canary"] {
        let out = Command::new(BIN)
            .args(["send-test", "--source", source])
            .env("SUBSYNC_CONFIG", &path)
            .env("SUBSYNC_CANARY_SECRET", ENV_SECRET)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "send-test {source}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("202"), "{stdout}");
    }
    // Rejections and auth failures, which are the log lines most tempted to say too much.
    let bad = http
        .post(format!("http://127.0.0.1:{ingress}/webhooks/canary"))
        .header("webhook-id", "msg_bad")
        .header(
            "webhook-timestamp",
            chrono::Utc::now().timestamp().to_string(),
        )
        .header(
            "webhook-signature",
            "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        )
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    let admin_url = format!("http://127.0.0.1:{admin}/admin/events");
    assert_eq!(
        http.get(&admin_url)
            .bearer_auth("wrong-token-wrong-token")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let events = http
        .get(&admin_url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);

    // SAFETY: this test binary has one test, and nothing else reads the environment now.
    unsafe { std::env::set_var("SUBSYNC_CANARY_SECRET", ENV_SECRET) };
    let settings = Settings::load(&path).unwrap();
    let db = Db::connect_lazy(&settings.database).unwrap();
    let archived = eventually(Duration::from_secs(20), || async {
        db.events(&Default::default())
            .await
            .map(|e| e.len() == 2)
            .unwrap_or(false)
    })
    .await;
    assert!(archived, "both send-test events are in Postgres");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "graceful exit on SIGTERM: {exit:?}");
    let log = log.join().unwrap();
    assert!(
        log.contains("webhook rejected"),
        "the log was captured at debug level"
    );
    assert!(log.contains("subsync stopped"), "shutdown completed");
    // SUBSYNC__LOG__FORMAT=json overrode the file's "pretty": every line is a JSON object.
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let parsed: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(parsed.get("level").is_some(), "{line}");
    }
    for secret in [
        SOURCE_SECRET,
        ENV_SECRET,
        ADMIN_TOKEN,
        "wrong-token-wrong-token",
        "log-leak-canary",
        "env-canary-secret",
    ] {
        assert!(
            !log.contains(secret),
            "secret {secret:?} leaked into the log"
        );
    }

    let cleaner = subsync::queue::Broker::start(&settings.amqp, Default::default());
    if cleaner.wait_connected(Duration::from_secs(10)).await {
        let _ = cleaner.delete_topology().await;
    }
}

#[tokio::test]
async fn dlq_purge_without_yes_refuses_and_touches_nothing() {
    let config = TestConfig::new().await;
    let path = config.write();
    let out = Command::new(BIN)
        .args(["dlq", "purge", "--source", "demo"])
        .env("SUBSYNC_CONFIG", &path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to purge without confirmation"),
        "{stderr}"
    );
}
