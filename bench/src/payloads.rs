//! Signed webhooks of every provider, prepared before a run: one source per provider kind,
//! each request signed with `Source::sign` over `Source::sample_body` (its ids spread over
//! 10,000 subscriptions and one invoice/attempt per request, so the worker does not fight
//! over one hot row, as real traffic would not).

use std::time::SystemTime;

use axum::http::{HeaderMap, HeaderName, HeaderValue, Uri, header};
use bytes::Bytes;
use subsync::{
    config::ProviderKind,
    envelope::Envelope,
    providers::{Sources, Unverified},
};

/// One secret for every signing provider (a valid `whsec_` base64 key for the Svix family,
/// any string for the others).
const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

/// Subscriptions the requests are spread over.
const SUBSCRIPTIONS: usize = 10_000;

/// Every provider kind, in the order requests cycle through them.
pub const KINDS: [ProviderKind; 9] = ProviderKind::ALL;

/// `[[sources]]` for every provider kind (id = the kind's name), with a signature window of
/// `tolerance_secs` so requests signed before a run stay valid through it.
pub fn sources_toml(tolerance_secs: u64) -> String {
    let mut out = String::new();
    for kind in KINDS {
        let name = kind.as_str();
        out.push_str(&format!(
            "[[sources]]\nid = \"{name}\"\nprovider = \"{name}\"\ntolerance_secs = {tolerance_secs}\n"
        ));
        match kind {
            ProviderKind::Rebilly => out.push_str(
                "basic_auth = { username = \"bench\", password = \"bench-password\" }\n",
            ),
            ProviderKind::Hmac => out.push_str(&format!(
                "secrets = [\"{SECRET}\"]\nhmac = {{ signature_header = \"X-Signature\", encoding = \"hex\", \
                 signature_prefix = \"sha256=\", timestamp_header = \"X-Timestamp\" }}\n"
            )),
            _ => out.push_str(&format!("secrets = [\"{SECRET}\"]\n")),
        }
    }
    out
}

/// A signed request ready to send: `POST {path}` with `headers` and `body`.
#[derive(Clone)]
pub struct Prepared {
    pub kind: ProviderKind,
    pub path: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Prepared {
    /// Verifies the request as the ingress would and returns the envelope it publishes.
    pub fn verify(&self, sources: &Sources, now: SystemTime) -> anyhow::Result<Envelope> {
        let source = sources
            .get(self.kind.as_str())
            .ok_or_else(|| anyhow::anyhow!("no source {}", self.kind.as_str()))?;
        let request = Unverified {
            headers: &self.headers,
            body: &self.body,
            peer: Some([127, 0, 0, 1].into()),
        };
        let verified = source
            .verify(request, Some("application/json".into()), now)
            .map_err(|e| anyhow::anyhow!("{}: {e}", self.kind.as_str()))?;
        Ok(verified.envelope().clone())
    }
}

/// `n` signed requests cycling through every provider, with event ids `{tag}_{i}`.
/// Checks that one of each kind verifies and normalizes (some are types the worker
/// archives as ignored: the generic providers).
pub fn prepare(
    sources: &Sources,
    n: usize,
    tag: &str,
    host: &str,
    now: SystemTime,
) -> anyhow::Result<Vec<Prepared>> {
    let host = HeaderValue::from_str(host)?;
    let json = HeaderValue::from_static("application/json");
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let kind = KINDS[i % KINDS.len()];
        let source = sources
            .get(kind.as_str())
            .ok_or_else(|| anyhow::anyhow!("no source {}", kind.as_str()))?;
        let event_id = format!("evt_{tag}_{i}");
        let body = spread(kind, source.sample_body(&event_id, now), i);
        let mut headers = HeaderMap::with_capacity(8);
        headers.insert(header::HOST, host.clone());
        headers.insert(header::CONTENT_TYPE, json.clone());
        for (name, value) in source.sign(&event_id, &body, now) {
            headers.insert(
                HeaderName::from_bytes(name.as_bytes())?,
                HeaderValue::from_str(&value)?,
            );
        }
        out.push(Prepared {
            kind,
            path: Uri::try_from(format!("/webhooks/{}", kind.as_str()))?,
            headers,
            body: Bytes::from(body),
        });
    }
    for request in out.iter().take(KINDS.len()) {
        let envelope = request.verify(sources, now)?;
        let source = sources.get(request.kind.as_str()).expect("checked above");
        source
            .normalize(&envelope)
            .map_err(|e| anyhow::anyhow!("{}: {e}", request.kind.as_str()))?;
    }
    Ok(out)
}

/// Mean body size of `requests`, in bytes.
pub fn mean_body(requests: &[Prepared]) -> usize {
    requests.iter().map(|r| r.body.len()).sum::<usize>() / requests.len().max(1)
}

/// Replaces the sample's fixed demo ids: the subscription (and customer) by one of
/// [`SUBSCRIPTIONS`], the invoice/attempt/order by one per request.
fn spread(kind: ProviderKind, body: Vec<u8>, i: usize) -> Vec<u8> {
    let sub = i % SUBSCRIPTIONS;
    let text = String::from_utf8(body).expect("samples are JSON");
    let replaced = match kind {
        ProviderKind::Standard | ProviderKind::Svix | ProviderKind::Hmac => {
            text.replace("sub_demo", &format!("sub_{sub}"))
        }
        ProviderKind::Stripe => text
            .replace("in_demo", &format!("in_{i}"))
            .replace("sub_demo", &format!("sub_{sub}"))
            .replace("cus_demo", &format!("cus_{sub}")),
        ProviderKind::Rebilly => text
            .replace("inv_demo", &format!("inv_{i}"))
            .replace("sub_demo", &format!("sub_{sub}"))
            .replace("cus_demo", &format!("cus_{sub}")),
        ProviderKind::Paynow => text
            .replace(
                "411486491630370818",
                &(500_000_000_000_000_000 + i).to_string(),
            )
            .replace(
                "411486491630370817",
                &(400_000_000_000_000_000 + sub).to_string(),
            )
            .replace(
                "411486491630370819",
                &(600_000_000_000_000_000 + i).to_string(),
            ),
        ProviderKind::Polar => text.replace(
            "e5149aae-e521-42b9-b24c-abb8d71eea2e",
            &format!("e5149aae-e521-42b9-b24c-{sub:012x}"),
        ),
        ProviderKind::Appstle => text
            .replace("987654321", &(1_000_000_000 + i).to_string())
            .replace("5550001", &(6_000_000 + sub).to_string()),
        ProviderKind::Shopify => {
            let mut value: serde_json::Value =
                serde_json::from_str(&text).expect("samples are JSON");
            let attempt = 1_000_000 + i;
            let contract = 1_000_000 + sub;
            value["id"] = attempt.into();
            value["admin_graphql_api_id"] =
                format!("gid://shopify/SubscriptionBillingAttempt/{attempt}").into();
            value["order_id"] = attempt.into();
            value["admin_graphql_api_order_id"] = format!("gid://shopify/Order/{attempt}").into();
            value["subscription_contract_id"] = contract.into();
            value["admin_graphql_api_subscription_contract_id"] =
                format!("gid://shopify/SubscriptionContract/{contract}").into();
            value.to_string()
        }
    };
    replaced.into_bytes()
}
