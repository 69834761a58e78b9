//! Typed, layered configuration: a TOML file, then `SUBSYNC__SECTION__KEY` environment
//! overrides. Secrets stay wrapped in [`SecretString`] from parsing to use, so no `Debug`
//! or log line can print them; a secret written as `env:NAME` is read from that variable.

use std::{net::SocketAddr, path::Path, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

mod validate;

/// Default path of the configuration file, relative to the working directory.
pub const DEFAULT_PATH: &str = "config/default.toml";

/// The admin token `config/default.toml` ships for local development. Everyone can read
/// it, so `serve` refuses it unless the admin listener is on loopback.
pub const DEV_ADMIN_TOKEN: &str = "dev-admin-token-change-me";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot load configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub amqp: AmqpSettings,
    pub http: HttpSettings,
    pub admin: AdminSettings,
    #[serde(default)]
    pub worker: WorkerSettings,
    #[serde(default)]
    pub log: LogSettings,
    #[serde(default)]
    pub dunning: DunningSettings,
    #[serde(default)]
    pub lookups: LookupSettings,
    #[serde(default)]
    pub sources: Vec<SourceSettings>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    pub url: SecretString,
    #[serde(default = "defaults::db_max_connections")]
    pub max_connections: u32,
    #[serde(default = "defaults::db_acquire_timeout_ms")]
    pub acquire_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AmqpSettings {
    pub url: SecretString,
    /// Prefix of every exchange and queue name, so several deployments share one broker.
    #[serde(default = "defaults::amqp_prefix")]
    pub prefix: String,
    #[serde(default = "defaults::delivery_limit")]
    pub delivery_limit: u32,
    #[serde(default = "defaults::publish_channels")]
    pub publish_channels: usize,
    /// Most webhooks published together as one batch message (1: one message each).
    #[serde(default = "defaults::publish_batch_max")]
    pub publish_batch_max: usize,
    #[serde(default = "defaults::confirm_timeout_ms")]
    pub confirm_timeout_ms: u64,
    /// Optional bound on the work queue; past it publishes are refused (ingress 503).
    #[serde(default)]
    pub max_queue_length: Option<u64>,
    #[serde(default = "defaults::reconnect_max_delay_ms")]
    pub reconnect_max_delay_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HttpSettings {
    pub ingress_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    #[serde(default = "defaults::body_limit_bytes")]
    pub body_limit_bytes: usize,
    #[serde(default = "defaults::request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// A request head must be complete this long after its first byte (after the accept
    /// for a connection's first request).
    #[serde(default = "defaults::header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
    /// A keep-alive connection with no request for this long is closed.
    #[serde(default = "defaults::keep_alive_idle_ms")]
    pub keep_alive_idle_ms: u64,
    /// Open connections per listener; past it the longest-idle one is closed, or new ones wait.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AdminSettings {
    /// The operators' token (audited under the name `admin`).
    pub token: SecretString,
    /// More tokens, each audited under its own name (one per person or tool).
    #[serde(default)]
    pub tokens: Vec<NamedToken>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct NamedToken {
    pub name: String,
    pub token: SecretString,
}

impl AdminSettings {
    /// Every accepted token with the name it is audited under.
    pub fn named_tokens(&self) -> Vec<NamedToken> {
        let mut all = vec![NamedToken {
            name: "admin".to_owned(),
            token: self.token.clone(),
        }];
        all.extend(self.tokens.iter().cloned());
        all
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct WorkerSettings {
    #[serde(default = "defaults::consumers")]
    pub consumers: usize,
    #[serde(default = "defaults::prefetch")]
    pub prefetch: u16,
    #[serde(default = "defaults::batch_size")]
    pub batch_size: usize,
    #[serde(default = "defaults::batch_wait_ms")]
    pub batch_wait_ms: u64,
    /// How often the dead-letter index is checked against the queue (seconds).
    #[serde(default = "defaults::dead_letter_index_secs")]
    pub dead_letter_index_secs: u64,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            consumers: defaults::consumers(),
            prefetch: defaults::prefetch(),
            batch_size: defaults::batch_size(),
            batch_wait_ms: defaults::batch_wait_ms(),
            dead_letter_index_secs: defaults::dead_letter_index_secs(),
        }
    }
}

/// The retry scheduler.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct DunningSettings {
    /// How often the scheduler looks for due retries (ms).
    pub interval_ms: u64,
    /// A call with no recorded answer after this long (the process died between the call
    /// and its commit) is re-sent with the same idempotency key (seconds).
    pub in_flight_timeout_secs: u64,
    /// An accepted asynchronous retry (Appstle, Shopify) whose outcome never arrives is
    /// handed back to the policy after this long (seconds).
    pub accepted_timeout_secs: u64,
    /// A retry whose calls fail this many times in a row (no usable answer: transport
    /// error, 5xx, rate limit, a panicking client) is parked for an operator.
    pub park_after_failures: u32,
    /// Wait before a call that got no usable answer (5xx, timeout, an oversized answer, a
    /// panicking client) is sent again with the same key (seconds).
    pub failure_wait_secs: u64,
    /// Longest wait a provider's rate limit (`Retry-After`, Shopify's throttle) may impose
    /// on one retry; a longer one is clamped (seconds).
    pub max_rate_limit_wait_secs: u64,
}

impl Default for DunningSettings {
    fn default() -> Self {
        Self {
            interval_ms: 1000,
            in_flight_timeout_secs: 300,
            accepted_timeout_secs: 86_400,
            park_after_failures: 5,
            failure_wait_secs: 300,
            max_rate_limit_wait_secs: 3600,
        }
    }
}

/// The money lookups (`crate::lookups`): attempts whose events carried no amount or
/// currency, read from the provider's API.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct LookupSettings {
    /// How often due lookups are claimed (ms).
    pub interval_ms: u64,
    /// Wait after a failed lookup (5xx, timeout); doubled per consecutive failure
    /// (seconds).
    pub failure_wait_secs: u64,
    /// The longest wait after failed lookups (seconds).
    pub max_failure_wait_secs: u64,
    /// The longest wait a provider's rate limit may impose (seconds).
    pub max_rate_limit_wait_secs: u64,
}

impl Default for LookupSettings {
    fn default() -> Self {
        Self {
            interval_ms: 1000,
            failure_wait_secs: 60,
            max_failure_wait_secs: 3600,
            max_rate_limit_wait_secs: 3600,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    #[serde(default)]
    pub format: LogFormat,
    #[serde(default = "defaults::log_level")]
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::default(),
            level: defaults::log_level(),
        }
    }
}

/// Declares [`ProviderKind`], its configuration names and [`ProviderKind::ALL`] from one
/// list, so no kind can be left out of `ALL` (which the queue decodes kinds with).
macro_rules! provider_kinds {
    ($($(#[doc = $doc:literal])* $kind:ident => $name:literal,)+) => {
        /// Which verification scheme and payload shapes a source speaks.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
        pub enum ProviderKind {
            $($(#[doc = $doc])* #[serde(rename = $name)] $kind,)+
        }

        impl ProviderKind {
            /// Every kind, in declaration order.
            pub const ALL: [ProviderKind; [$($name),+].len()] = [$(ProviderKind::$kind),+];

            /// The kind's name in the configuration (`provider = "..."`).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ProviderKind::$kind => $name,)+
                }
            }
        }
    };
}

provider_kinds! {
    /// Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature`).
    Standard => "standard",
    /// Stripe (`Stripe-Signature: t=..,v1=..`).
    Stripe => "stripe",
    /// Shopify (`X-Shopify-Hmac-Sha256`).
    Shopify => "shopify",
    /// Appstle Subscriptions: Svix signatures.
    Appstle => "appstle",
    /// Polar.sh: Standard Webhooks keyed by the raw secret string.
    Polar => "polar",
    /// Svix (`svix-*`, falling back to `webhook-*`).
    Svix => "svix",
    /// PayNow (`PayNow-Signature`, `PayNow-Timestamp` in milliseconds).
    Paynow => "paynow",
    /// Rebilly: HTTP Basic credentials and an optional IP allowlist, no signature.
    Rebilly => "rebilly",
    /// Any HMAC-SHA256 scheme described by the source's `hmac` table.
    Hmac => "hmac",
}

impl ProviderKind {
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// HTTP Basic credentials a sender must present (Rebilly).
#[derive(Debug, Clone, Deserialize)]
pub struct BasicAuthSettings {
    pub username: String,
    pub password: SecretString,
}

/// How the generic `hmac` provider finds and checks a signature.
#[derive(Debug, Clone, Deserialize)]
pub struct HmacSettings {
    /// Header carrying the signature, e.g. `X-Signature`.
    pub signature_header: String,
    /// How the signature is encoded.
    pub encoding: HmacEncoding,
    /// Text before the encoded signature, e.g. `sha256=`.
    #[serde(default)]
    pub signature_prefix: Option<String>,
    /// Header with a unix-seconds timestamp; when set the signed content is `{ts}.{body}`.
    #[serde(default)]
    pub timestamp_header: Option<String>,
    /// Top-level field of the signed JSON body holding the event id (e.g. `id`). Preferred:
    /// the signature covers it.
    #[serde(default)]
    pub event_id_field: Option<String>,
    /// Header with the event id, when the sender puts it nowhere else. The signature does
    /// not cover a header: anyone holding one captured request can re-post its body under
    /// fresh ids, and each is a new event to the inbox (only the normalized records' own
    /// ids keep the ledger from counting it twice). With neither, the event id is the
    /// SHA-256 of the body, so a re-posted body is always a duplicate.
    #[serde(default)]
    pub event_id_header: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HmacEncoding {
    Hex,
    Base64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SourceSettings {
    /// URL segment: webhooks arrive at `POST /webhooks/{id}`.
    pub id: String,
    pub provider: ProviderKind,
    /// Several secrets are all accepted, for rotation. May be empty for `rebilly`.
    #[serde(default)]
    pub secrets: Vec<SecretString>,
    /// Allowed clock skew for signed timestamps; the provider's default when absent.
    #[serde(default)]
    pub tolerance_secs: Option<u64>,
    /// `rebilly`: the HTTP Basic credentials Rebilly sends.
    #[serde(default)]
    pub basic_auth: Option<BasicAuthSettings>,
    /// `rebilly`: sender addresses allowed (plain IPs or CIDR blocks); any when absent.
    #[serde(default)]
    pub allow_ips: Option<Vec<String>>,
    /// `hmac`: the generic scheme's description.
    #[serde(default)]
    pub hmac: Option<HmacSettings>,
    /// Dunning: when and how often failed payments of this source are retried.
    #[serde(default)]
    pub retry: RetryPolicySettings,
    /// The provider's API (payment retries, pull sync): base URL and credentials.
    #[serde(default)]
    pub api: Option<ApiSettings>,
    /// Pull sync from the provider's list API (needs `api`).
    #[serde(default)]
    pub sync: Option<SyncSettings>,
}

/// Pull sync of one source: how often, how far back, how fast.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct SyncSettings {
    /// Periodic sync inside `serve --role sync|all` every this many seconds; 0 = only by
    /// `subsync sync`.
    pub interval_secs: u64,
    /// Each incremental run re-reads this far before the watermark (late updates, clock
    /// skew between us and the provider).
    pub lookback_secs: u64,
    /// Records per page; each client caps it at its API's maximum.
    pub page_size: u32,
    /// At least this long between two page requests (the provider's documented rate
    /// limit); 0 = the client's default.
    pub min_interval_ms: u64,
    /// How many times one page is retried (429 waits and transient errors) before the
    /// run stops with an error.
    pub max_page_retries: u32,
    /// The most bytes of one list page read; past it the run stops with an error.
    pub max_page_bytes: usize,
    /// The most pages of one run; past it the run stops with an error (an endless listing).
    pub max_pages: u64,
}

impl Default for SyncSettings {
    fn default() -> Self {
        Self {
            interval_secs: 900,
            lookback_secs: 3600,
            page_size: 100,
            min_interval_ms: 0,
            max_page_retries: 8,
            max_page_bytes: 16 << 20,
            max_pages: 10_000,
        }
    }
}

/// What an exhausted retry leaves behind (recorded with the retry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinalAction {
    MarkUnpaid,
    Pause,
    Cancel,
    Leave,
}

impl FinalAction {
    pub fn as_str(self) -> &'static str {
        match self {
            FinalAction::MarkUnpaid => "mark_unpaid",
            FinalAction::Pause => "pause",
            FinalAction::Cancel => "cancel",
            FinalAction::Leave => "leave",
        }
    }

    pub fn parse(word: &str) -> Option<Self> {
        [Self::MarkUnpaid, Self::Pause, Self::Cancel, Self::Leave]
            .into_iter()
            .find(|action| action.as_str() == word)
    }
}

/// A retry policy as data; delays in seconds. Defaults: exponential from 6 h, factor 2,
/// capped at 4 days, with jitter; at most 8 retries within 14 days; then `mark_unpaid`;
/// the customer is awaited 7 days, a provider's own retries 30 days.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct RetryPolicySettings {
    pub base_secs: u64,
    pub factor: f32,
    pub cap_secs: u64,
    pub jitter: bool,
    pub max_attempts: u32,
    pub max_age_secs: u64,
    /// Explicit schedule instead of the backoff: retry n (0-based) happens this long after
    /// the first failure (Polar-like `[172800, 604800, 1209600, 1814400]` = +2d, +7d, +14d, +21d).
    pub schedule_secs: Option<Vec<u64>>,
    pub final_action: FinalAction,
    /// `provider_error` bucket: its own, shorter backoff.
    pub provider_error_base_secs: u64,
    pub provider_error_cap_secs: u64,
    /// `inventory` bucket: its own pace and limit.
    pub inventory_base_secs: u64,
    pub inventory_max_attempts: u32,
    /// Longest wait for the customer (new payment method, completed challenge) after the
    /// decline that asked for it; then the policy stops with `final_action`.
    pub awaiting_customer_secs: u64,
    /// Longest a failure the provider retries itself (PayNow, Rebilly) stays open after
    /// the first failure without the provider settling it; then `final_action`.
    pub provider_managed_secs: u64,
    /// `cancel` ends the subscription at the end of its current period instead of now.
    pub cancel_at_period_end: bool,
}

impl RetryPolicySettings {
    /// A policy file of its own (the fields of a source's `retry`, at the top level),
    /// checked as a source's policy is.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let raw = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .build()?;
        let policy: Self = raw.try_deserialize()?;
        validate::policy(&policy, "")?;
        Ok(policy)
    }
}

impl Default for RetryPolicySettings {
    fn default() -> Self {
        Self {
            base_secs: 6 * 3600,
            factor: 2.0,
            cap_secs: 4 * 86_400,
            jitter: true,
            max_attempts: 8,
            max_age_secs: 14 * 86_400,
            schedule_secs: None,
            final_action: FinalAction::MarkUnpaid,
            provider_error_base_secs: 15 * 60,
            provider_error_cap_secs: 6 * 3600,
            inventory_base_secs: 86_400,
            inventory_max_attempts: 3,
            awaiting_customer_secs: 7 * 86_400,
            provider_managed_secs: 30 * 86_400,
            cancel_at_period_end: false,
        }
    }
}

/// A provider API: where it is and how to authenticate. The token is the provider's: Stripe
/// secret key, Shopify Admin access token, Appstle `X-API-Key`, Polar organization access
/// token (it mints the customer sessions confirm-payment takes). `env:NAME` is allowed for
/// it.
#[derive(Debug, Clone, Deserialize)]
pub struct ApiSettings {
    pub base_url: String,
    pub token: SecretString,
    /// Shopify Admin API version (e.g. `2026-04`, the default).
    #[serde(default)]
    pub api_version: Option<String>,
    /// Polar: the saved payment method to retry with; without it, each order's customer's
    /// default payment method.
    #[serde(default)]
    pub payment_method_id: Option<String>,
    /// PayNow: the store whose subscriptions are synced (`/v1/stores/{store_id}/...`).
    #[serde(default)]
    pub store_id: Option<String>,
    /// Per-call timeout (ms), the answer's body included.
    #[serde(default = "defaults::api_timeout_ms")]
    pub timeout_ms: u64,
    /// The most bytes of a call's answer read (a retry); past it the outcome is unknown.
    #[serde(default = "defaults::api_max_answer_bytes")]
    pub max_answer_bytes: usize,
    /// The account's request budget, shared by every role and process calling it (see
    /// `budget`); default: the pace of the provider's list client.
    #[serde(default)]
    pub requests_per_second: Option<f64>,
}

impl Settings {
    /// Loads `path`, applies `SUBSYNC__*` overrides, resolves `env:NAME` secrets, validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let raw = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix("SUBSYNC")
                    .prefix_separator("__")
                    .separator("__"),
            )
            .build()?;
        let mut settings: Settings = raw.try_deserialize()?;
        settings.resolve_env_secrets()?;
        settings.validate()?;
        Ok(settings)
    }

    fn resolve_env_secrets(&mut self) -> Result<(), ConfigError> {
        resolve_secret(&mut self.database.url)?;
        resolve_secret(&mut self.amqp.url)?;
        resolve_secret(&mut self.admin.token)?;
        for named in &mut self.admin.tokens {
            resolve_secret(&mut named.token)?;
        }
        for source in &mut self.sources {
            for secret in &mut source.secrets {
                resolve_secret(secret)?;
            }
            if let Some(auth) = &mut source.basic_auth {
                resolve_secret(&mut auth.password)?;
            }
            if let Some(api) = &mut source.api {
                resolve_secret(&mut api.token)?;
            }
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        for named in self.admin.named_tokens() {
            if named.token.expose_secret().len() < 12 {
                return invalid(format!(
                    "admin token {:?} must be at least 12 characters",
                    named.name
                ));
            }
        }
        if self.worker.batch_size == 0 || self.worker.consumers == 0 {
            return invalid("worker.batch_size and worker.consumers must be positive".into());
        }
        if self.worker.dead_letter_index_secs == 0 {
            return invalid("worker.dead_letter_index_secs must be positive".into());
        }
        if usize::from(self.worker.prefetch) < self.worker.batch_size {
            return invalid("worker.prefetch must be at least worker.batch_size".into());
        }
        let http = &self.http;
        if http.header_read_timeout_ms == 0
            || http.keep_alive_idle_ms == 0
            || http.max_connections == 0
        {
            return invalid(
                "http.header_read_timeout_ms, http.keep_alive_idle_ms and http.max_connections must be positive".into(),
            );
        }
        if self.amqp.publish_channels == 0 {
            return invalid("amqp.publish_channels must be positive".into());
        }
        if self.amqp.publish_batch_max == 0 {
            return invalid("amqp.publish_batch_max must be positive".into());
        }
        let mut seen = std::collections::HashSet::new();
        for (i, source) in self.sources.iter().enumerate() {
            let id_ok = !source.id.is_empty()
                && source
                    .id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !id_ok {
                return invalid(format!("source id {:?} must be [A-Za-z0-9_-]+", source.id));
            }
            if !seen.insert(source.id.as_str()) {
                return invalid(format!("source id {:?} is configured twice", source.id));
            }
            match source.provider {
                ProviderKind::Rebilly if source.basic_auth.is_none() => {
                    return invalid(format!("source {:?} needs basic_auth", source.id));
                }
                ProviderKind::Rebilly => {}
                _ if source.secrets.is_empty() => {
                    return invalid(format!("source {:?} has no secrets", source.id));
                }
                ProviderKind::Hmac if source.hmac.is_none() => {
                    return invalid(format!("source {:?} needs an [hmac] table", source.id));
                }
                _ => {}
            }
            validate_provider_api(i, source).map_err(ConfigError::Invalid)?;
        }
        validate::check(self)
    }

    pub fn source(&self, id: &str) -> Option<&SourceSettings> {
        self.sources.iter().find(|s| s.id == id)
    }

    /// What `serve` needs beyond [`Settings::load`]: the public development admin token
    /// only on a loopback admin listener.
    pub fn check_serve(&self) -> Result<(), ConfigError> {
        let addr = self.http.admin_addr;
        let dev = self
            .admin
            .named_tokens()
            .into_iter()
            .find(|t| t.token.expose_secret() == DEV_ADMIN_TOKEN);
        match dev {
            Some(named) if !addr.ip().is_loopback() => Err(ConfigError::Invalid(format!(
                "admin token {:?} is the public development default and http.admin_addr \
                 ({addr}) is not loopback: set admin.token (SUBSYNC__ADMIN__TOKEN, or \
                 \"env:NAME\") to a secret of your own",
                named.name
            ))),
            _ => Ok(()),
        }
    }
}

impl AmqpSettings {
    pub fn confirm_timeout(&self) -> Duration {
        Duration::from_millis(self.confirm_timeout_ms)
    }
}

/// A source's provider API settings: the credential only ever travels over TLS (plain
/// `http://` only to a loopback host, for local fakes), and the caps that bound what a
/// provider can make us read are positive. The error names the key, never the URL (which
/// could carry credentials).
fn validate_provider_api(i: usize, source: &SourceSettings) -> Result<(), String> {
    let id = &source.id;
    if let Some(api) = &source.api {
        let key = format!("sources[{i}].api");
        let url = reqwest::Url::parse(&api.base_url)
            .map_err(|_| format!("{key}.base_url ({id:?}): not a valid URL"))?;
        // IPv6 hosts come bracketed; the parser has normalized IPv4 forms (`127.1`).
        let host = url.host_str().unwrap_or_default();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let loopback = host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if url.scheme() != "https" && !(url.scheme() == "http" && loopback) {
            return Err(format!(
                "{key}.base_url ({id:?}): must be https:// unless loopback"
            ));
        }
        if api.max_answer_bytes == 0 {
            return Err(format!("{key}.max_answer_bytes ({id:?}) must be positive"));
        }
    }
    if let Some(sync) = &source.sync
        && (sync.max_page_bytes == 0 || sync.max_pages == 0)
    {
        return Err(format!(
            "sources[{i}].sync.max_page_bytes and max_pages ({id:?}) must be positive"
        ));
    }
    Ok(())
}

/// `env:NAME` reads the variable NAME; the error names the variable, never a value.
fn resolve_secret(secret: &mut SecretString) -> Result<(), ConfigError> {
    let Some(name) = secret
        .expose_secret()
        .strip_prefix("env:")
        .map(str::to_owned)
    else {
        return Ok(());
    };
    match std::env::var(&name) {
        Ok(value) if !value.is_empty() => {
            *secret = SecretString::from(value);
            Ok(())
        }
        _ => Err(ConfigError::Invalid(format!(
            "environment variable {name} is not set"
        ))),
    }
}

mod defaults {
    pub fn db_max_connections() -> u32 {
        10
    }
    pub fn db_acquire_timeout_ms() -> u64 {
        3_000
    }
    pub fn amqp_prefix() -> String {
        "subsync".into()
    }
    pub fn delivery_limit() -> u32 {
        5
    }
    pub fn publish_channels() -> usize {
        1
    }

    pub fn publish_batch_max() -> usize {
        64
    }
    pub fn confirm_timeout_ms() -> u64 {
        5_000
    }
    pub fn reconnect_max_delay_ms() -> u64 {
        5_000
    }
    pub fn body_limit_bytes() -> usize {
        1024 * 1024
    }
    pub fn request_timeout_ms() -> u64 {
        10_000
    }
    pub fn header_read_timeout_ms() -> u64 {
        10_000
    }
    pub fn keep_alive_idle_ms() -> u64 {
        75_000
    }
    pub fn max_connections() -> usize {
        4_096
    }
    pub fn consumers() -> usize {
        2
    }
    pub fn prefetch() -> u16 {
        500
    }
    pub fn batch_size() -> usize {
        250
    }
    pub fn batch_wait_ms() -> u64 {
        5
    }
    pub fn dead_letter_index_secs() -> u64 {
        300
    }
    pub fn api_timeout_ms() -> u64 {
        10_000
    }
    pub fn api_max_answer_bytes() -> usize {
        1 << 20
    }
    pub fn log_level() -> String {
        "info".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [database]
        url = "postgres://u:p@127.0.0.1/db"
        [amqp]
        url = "amqp://127.0.0.1:5672/%2f"
        [http]
        ingress_addr = "127.0.0.1:0"
        admin_addr = "127.0.0.1:0"
        [admin]
        token = "a-long-enough-token"
        [[sources]]
        id = "demo"
        provider = "standard"
        secrets = ["whsec_literal"]
    "#;

    /// Loads `contents` as a configuration file.
    fn load(contents: &str) -> Result<Settings, ConfigError> {
        let path = std::env::temp_dir().join(format!("subsync-cfg-{}.toml", uuid::Uuid::new_v4()));
        std::fs::write(&path, contents).unwrap();
        let result = Settings::load(&path);
        std::fs::remove_file(&path).unwrap();
        result
    }

    #[test]
    fn serve_refuses_the_development_token_off_loopback() {
        let dev = MINIMAL.replace("a-long-enough-token", DEV_ADMIN_TOKEN);
        load(&dev).unwrap().check_serve().unwrap();
        let exposed = dev.replace("admin_addr = \"127.0.0.1:0\"", "admin_addr = \"0.0.0.0:0\"");
        let err = load(&exposed)
            .unwrap()
            .check_serve()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("admin.token") && err.contains("0.0.0.0:0"),
            "{err}"
        );
        assert!(!err.contains(DEV_ADMIN_TOKEN), "the token is echoed: {err}");
        let own = MINIMAL.replace("admin_addr = \"127.0.0.1:0\"", "admin_addr = \"0.0.0.0:0\"");
        load(&own).unwrap().check_serve().unwrap();
    }

    /// The container's configuration: no demo source, no development token, every secret
    /// from the environment (and a missing one named).
    #[test]
    fn production_template_has_no_demo_source_and_no_default_secret() {
        let template = include_str!("../config/production.toml");
        let err = load(template).unwrap_err().to_string();
        assert!(err.contains("SUBSYNC_DATABASE_URL"), "{err}");
        // The only test that uses these variables.
        for (name, value) in [
            ("SUBSYNC_DATABASE_URL", "postgres://u:p@db/subsync"),
            ("SUBSYNC_AMQP_URL", "amqp://u:p@mq:5672/%2f"),
            ("SUBSYNC_ADMIN_TOKEN", "an-operator-secret-token"),
        ] {
            // SAFETY: no other test reads or writes these variables.
            unsafe { std::env::set_var(name, value) };
        }
        let settings = load(template).unwrap();
        assert!(settings.sources.is_empty());
        assert!(!settings.http.admin_addr.ip().is_loopback());
        assert_eq!(
            settings.admin.token.expose_secret(),
            "an-operator-secret-token"
        );
        settings.check_serve().unwrap();
    }

    #[test]
    fn env_secret_is_resolved_and_missing_one_is_named_not_leaked() {
        // The only test that uses this variable (tests run in parallel threads).
        let with_env = MINIMAL.replace("whsec_literal", "env:SUBSYNC_TEST_SECRET_RESOLVE");
        // SAFETY: no other test reads or writes this variable.
        unsafe { std::env::remove_var("SUBSYNC_TEST_SECRET_RESOLVE") };
        let err = load(&with_env).unwrap_err().to_string();
        assert!(err.contains("SUBSYNC_TEST_SECRET_RESOLVE"), "{err}");

        unsafe { std::env::set_var("SUBSYNC_TEST_SECRET_RESOLVE", "whsec_from_env") };
        let settings = load(&with_env).unwrap();
        assert_eq!(
            settings.sources[0].secrets[0].expose_secret(),
            "whsec_from_env"
        );
        let debug = format!("{settings:?}");
        assert!(!debug.contains("whsec_from_env") && !debug.contains("a-long-enough-token"));
        assert_eq!(settings.worker.batch_size, 250, "defaults apply");
    }

    #[test]
    fn duplicate_and_malformed_source_ids_are_rejected() {
        let dup = format!(
            "{MINIMAL}\n[[sources]]\nid = \"demo\"\nprovider = \"standard\"\nsecrets = [\"x\"]\n"
        );
        let err = load(&dup).unwrap_err().to_string();
        assert!(err.contains("configured twice"), "{err}");
        let bad = MINIMAL.replace("id = \"demo\"", "id = \"a/b\"");
        let err = load(&bad).unwrap_err().to_string();
        assert!(err.contains("must be"), "{err}");
    }

    #[test]
    fn api_base_url_must_be_https_unless_loopback() {
        let with_api = |url: &str| {
            format!(
                "{MINIMAL}\n[[sources]]\nid = \"shop-x\"\nprovider = \"shopify\"\nsecrets = [\"k\"]\napi = {{ base_url = \"{url}\", token = \"t\" }}\n"
            )
        };
        for url in [
            "https://shop-x.myshopify.com",
            "http://127.0.0.1:8080/",
            "http://127.1.2.3",
            "http://localhost:9000/base",
            "http://LOCALHOST",
            "http://[::1]:8080",
        ] {
            let settings = load(&with_api(url)).unwrap_or_else(|e| panic!("{url}: {e}"));
            let api = settings.source("shop-x").unwrap().api.as_ref().unwrap();
            assert_eq!(api.max_answer_bytes, 1 << 20, "the default");
        }
        for url in [
            "http://shop-x.myshopify.com",
            "http://user:pw@10.0.0.1",
            "http://127.0.0.1.evil.example",
            "http://localhost.evil.example",
            "ftp://127.0.0.1",
            "not a url",
        ] {
            let err = load(&with_api(url)).unwrap_err().to_string();
            assert!(
                err.starts_with("sources[1].api.base_url (\"shop-x\"): "),
                "{url}: {err}"
            );
            assert!(
                !err.contains("pw") && !err.contains("evil"),
                "echoes the URL: {err}"
            );
        }
        let err = load(&with_api("http://shop-x.myshopify.com")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "sources[1].api.base_url (\"shop-x\"): must be https:// unless loopback"
        );
    }

    #[test]
    fn sync_caps_default_and_must_be_positive() {
        let with_sync = |sync: &str| {
            format!(
                "{MINIMAL}\n[[sources]]\nid = \"st\"\nprovider = \"stripe\"\nsecrets = [\"k\"]\nsync = {{ {sync} }}\n"
            )
        };
        let settings = load(&with_sync("interval_secs = 0")).unwrap();
        let sync = settings.source("st").unwrap().sync.clone().unwrap();
        assert_eq!((sync.max_page_bytes, sync.max_pages), (16 << 20, 10_000));
        for zero in ["max_pages = 0", "max_page_bytes = 0"] {
            let err = load(&with_sync(zero)).unwrap_err().to_string();
            assert!(
                err.contains("sources[1].sync.max_page_bytes and max_pages"),
                "{err}"
            );
        }
    }

    #[test]
    fn http_connection_limits_default_and_refuse_zero() {
        let settings = load(MINIMAL).unwrap();
        assert_eq!(settings.http.header_read_timeout_ms, 10_000);
        assert_eq!(settings.http.keep_alive_idle_ms, 75_000);
        assert_eq!(settings.http.max_connections, 4_096);
        let zero = MINIMAL.replace(
            "admin_addr = \"127.0.0.1:0\"",
            "admin_addr = \"127.0.0.1:0\"\nmax_connections = 0",
        );
        let err = load(&zero).unwrap_err().to_string();
        assert!(err.contains("http.max_connections"), "{err}");
    }

    #[test]
    fn provider_kinds_round_trip() {
        for kind in ProviderKind::ALL {
            assert_eq!(ProviderKind::parse(kind.as_str()), Some(kind));
            let parsed: ProviderKind =
                serde_json::from_value(serde_json::json!(kind.as_str())).unwrap();
            assert_eq!(parsed, kind);
        }
        assert_eq!(ProviderKind::parse("Stripe"), None);
        assert_eq!(ProviderKind::parse(""), None);
    }

    #[test]
    fn rebilly_needs_basic_auth_others_need_secrets() {
        let minimal = MINIMAL;
        // SAFETY: only this test reads or writes this variable.
        unsafe { std::env::set_var("SUBSYNC_TEST_REBILLY_PASSWORD", "rebilly-pass") };
        let rebilly = format!(
            "{minimal}\n[[sources]]\nid = \"rb\"\nprovider = \"rebilly\"\nallow_ips = [\"10.0.0.0/8\"]\n"
        );
        let err = load(&rebilly).unwrap_err().to_string();
        assert!(err.contains("needs basic_auth"), "{err}");
        let with_auth = format!(
            "{rebilly}[sources.basic_auth]\nusername = \"rebilly\"\npassword = \"env:SUBSYNC_TEST_REBILLY_PASSWORD\"\n"
        );
        let settings = load(&with_auth).unwrap();
        let rb = settings.source("rb").unwrap();
        assert!(rb.secrets.is_empty());
        let auth = rb.basic_auth.as_ref().unwrap();
        assert_eq!(auth.password.expose_secret(), "rebilly-pass");
        assert!(!format!("{rb:?}").contains("rebilly-pass"));

        let stripe =
            format!("{minimal}\n[[sources]]\nid = \"st\"\nprovider = \"stripe\"\nsecrets = []\n");
        let err = load(&stripe).unwrap_err().to_string();
        assert!(err.contains("has no secrets"), "{err}");
        let hmac =
            format!("{minimal}\n[[sources]]\nid = \"g\"\nprovider = \"hmac\"\nsecrets = [\"k\"]\n");
        let err = load(&hmac).unwrap_err().to_string();
        assert!(err.contains("[hmac]"), "{err}");
        let hmac = format!(
            "{hmac}[sources.hmac]\nsignature_header = \"X-Signature\"\nencoding = \"hex\"\nsignature_prefix = \"sha256=\"\n"
        );
        let settings = load(&hmac).unwrap();
        let h = settings.source("g").unwrap().hmac.as_ref().unwrap();
        assert_eq!(h.encoding, HmacEncoding::Hex);
        assert_eq!(h.signature_prefix.as_deref(), Some("sha256="));
    }
}
