//! Rebilly: no signature scheme. Rebilly sends the webhook credentials configured for the
//! host as `Authorization: Basic base64(user:pass)`; we compare them in constant time
//! (SHA-256 of both sides, so not even the length leaks) with the source's `basic_auth`.
//! When `allow_ips` is set the TCP peer must be one of those addresses or CIDR blocks
//! (IPv4-mapped IPv6 peers are compared as IPv4). The Authorization header is never kept.
//!
//! Ground truth: Rebilly's OpenAPI definitions (`Rebilly/api-definitions`; the webhooks and
//! the orders listing, `GET /subscriptions`, are copied in `tests/fixtures/rebilly/`). A webhook body is one of seven request bodies,
//! `{<resource>Id..., eventType, _embedded: {...}, _links}`: `TransactionWebhook`
//! (`transactionId`; `transaction`), `TransactionWithChildWebhook` (`transactionId`;
//! `transaction`, `childTransaction`), `InvoiceWebhook` (`invoiceId`; `invoice`),
//! `InvoiceAndTransaction` (`transactionId`, `invoiceId`; `transaction`, `invoice`),
//! `RenewalInvoiceIssued` (`subscriptionId`, `invoiceId`; `subscription`, `invoice`),
//! `SubscriptionWebhook` (`subscriptionId`; `subscription`, an order) and
//! `SubscriptionAndSubscriptionPause` (`subscriptionId`, `subscriptionPauseId`;
//! `subscription`, `pause`). We assume the default body (a merchant may configure a
//! template instead, `GlobalWebhook.body`).
//!
//! # Event id
//!
//! Rebilly bodies carry no event or delivery id (those exist only in its webhook log).
//! Ours is the SHA-256 (hex) of the lines
//! `eventType=<v>`, then `/<name>=<v>` for each top-level resource id present
//! (`transactionId`, `invoiceId`, `subscriptionId`, `subscriptionPauseId`), then
//! `<pointer>=<v>` for each per-occurrence field present, in this order:
//! `/_embedded/childTransaction/id`;
//! `/_embedded/transaction/{revision,status,result,updatedTime}`;
//! `/_embedded/invoice/{revision,status,updatedTime,dueReminderNumber}`;
//! `/_embedded/subscription/{revision,status,updatedTime,rebillNumber,currentPeriodStart,renewalReminderNumber}`;
//! `/_embedded/pause/{status,updatedTime}` — each `<v>` a scalar written as JSON (strings
//! quoted and escaped), `null` counting as absent. When none of the per-occurrence fields is
//! present, `\nbody=` and the whole body are hashed too; without `eventType` (or when the
//! body is not one JSON object) the id is `sha256:<hash of the body>`.
//!
//! So redelivered bytes (or the same content with keys reordered) share one id, while two
//! real changes of one resource differ: the definitions describe `revision` as the count
//! of changes "useful when analyzing webhook data", a renewal has a new `rebillNumber` and
//! `currentPeriodStart`, a pause a new `subscriptionPauseId`, a refund a new
//! `childTransaction.id`. Assumed (the definitions are silent): a redelivery repeats the
//! body rather than re-rendering it; if Rebilly re-rendered it after a later change, that
//! costs one extra event, ordered by `revision` like any other.
//!
//! # Normalization (`webhook.rs`; its `DECISIONS` lists every event type of the definitions)
//!
//! | event type | canonical |
//! |---|---|
//! | `transaction-processed`, `-timeout-resolved`, `offsite-payment-completed`, `waiting-gateway-transaction-completed`, `renewal-invoice-payment-canceled` | attempt, status from the transaction |
//! | `transaction-declined`, `renewal-invoice-payment-declined` | attempt failed |
//! | `transaction-refunded` | the refunded (parent) transaction's attempt refunded, and its `childTransaction` as its refund |
//! | `transaction-partially-refunded` | its attempt succeeded, provider word `partially-refunded`, and the child as its refund |
//! | `transaction-voided` | its attempt failed, provider word `voided`, and the child (the void) as its refund |
//! | `invoice-paid` | attempt succeeded |
//! | `subscription-created\|activated\|reactivated\|renewed\|canceled\|churned\|modified\|items-changed\|upgraded\|downgraded\|trial-converted\|trial-ended\|trial-end-changed\|paused\|resumed`, `order-completed\|abandoned\|delinquency-reached`, `orders-experimental-subscription-renewed` | subscription change |
//! | every other type of the definitions (invoice documents and reminders, scheduled pauses, reconciliation and risk reports, `transaction-process-requested`, `renewal-invoice-issued`, ...) and any unknown type | ignored (the reason of each is in `DECISIONS`) |
//!
//! Attempts exist only for a transaction of `type` `sale` or `capture`: a `setup`,
//! `authorize` or `3ds-authentication` takes no money from the customer, so its event is
//! ignored; an unknown type is counted and ignored; a transaction without a `type` is
//! malformed. A `refund`, `void` or `credit` transaction with a `parentTransactionId` (or
//! as the `childTransaction` of its parent's event) is a refund of the parent's attempt:
//! id = its own id, amount = its `amount` in its `currency`, status from its result
//! (approved → succeeded; declined, abandoned, canceled → failed; else pending), provider
//! word = its type. A void of a settled sale so gives the collection back; a credit
//! without a parent is a payout of its own, not a refund of a payment, and is ignored.
//! `attempt_id` = the embedded transaction's `id` (else `transactionId`); each retry is a
//! new transaction. `cycle_id` = `invoiceId`, else the embedded invoice's `id`, else the
//! transaction's first `invoiceIds`. `subscription_id` = the invoice's `subscriptionId`,
//! else the transaction's first `subscriptionIds`. `amount` = the transaction's `amount` in
//! its `currency` (else the invoice's): decimals in major units read exactly; more decimals
//! than the currency has, an unknown currency or an amount without currency is malformed.
//! `attempted_at` = `processedTime`, else `createdTime`.
//!
//! Status from the transaction (`result` and `status`, both of the definitions' enums):
//! `status` `refunded` → refunded, `voided` → failed (whatever the result); else `result`
//! approved → succeeded (provider word = the status when it is `partially-refunded`,
//! `waiting-refund` or `disputed`: money was taken), declined/abandoned/canceled → failed,
//! unknown → pending; without a result, `status` completed/partially-refunded/
//! waiting-refund/disputed → succeeded, pending/offsite/sending/waiting-approval/
//! waiting-capture/waiting-gateway → pending, conn-error/timeout/never-sent/voided →
//! failed. A word outside the enums is kept as the provider word with status pending (the
//! lowest, so it never moves an attempt backwards) and counted in
//! `subsync_unknown_provider_values_total{provider="rebilly",field}`; a transaction with
//! neither result nor status is malformed. `provider_status` = the word that decided. A failed attempt's
//! `error_code`/`error_message` = the transaction's `gateway.response.code`/`.message`, each
//! falling back to `originalCode`/`originalMessage` (none for a void: that answer is the
//! approval).
//!
//! `invoice-paid` (`InvoiceWebhook`, no transaction beside the invoice): the attempt is the
//! last approved `sale`/`capture` of the invoice's `transactions` (latest `processedTime`),
//! with that transaction's id, amount and time, so it is the same attempt its transaction
//! webhook reports; without one it is `invoice-paid:{invoiceId}` (an invoice is paid once)
//! with the invoice's amount and `paidTime`.
//!
//! Retries: Rebilly retries on its own (the invoice's `autopayScheduledTime`,
//! `autopayRetryNumber`); they are not read, so `next_attempt_at`/`attempt_count` stay
//! empty.
//!
//! Subscription changes from the embedded order (`_embedded.subscription`, an order; one
//! with `orderType` `one-time-order` is no subscription and the event is ignored, an
//! unknown `orderType` is counted and ignored): `subscription_id` = its `id`, else
//! `subscriptionId`, else the pause's `subscriptionId`. Status from its `status`: pending →
//! pending; active → active, or past_due (provider word `past-due`) when its
//! `billingStatus` is `past-due` (the definitions have no past-due order status);
//! paused → paused; canceled/churned/abandoned/voided → cancelled; completed/trial-ended →
//! expired. An unknown status is counted and changes nothing (the event is archived as
//! ignored); an unknown `billingStatus` is counted. Without a `status` the event names it
//! (canceled/churned/order-abandoned → cancelled, paused → paused,
//! renewed/resumed/activated/reactivated/trial-converted → active, order-completed/
//! trial-ended → expired), else it is malformed. `version` = `revision`, `updated_at` =
//! `updatedTime`, `current_period_end` = `currentPeriodEnd`, else `renewalTime`;
//! `currency`, `customerId`.
//!
//! Known limits: a partial refund is not posted (the ledger refunds an attempt in full);
//! a void after the sale was recorded succeeded is stale (failed ranks below succeeded), so
//! the collection stays.

mod event_id;
mod final_action;
mod list;
mod webhook;

pub(super) use final_action::RebillyFinal;
pub(super) use list::RebillyList;

use std::{net::IpAddr, time::SystemTime};

use base64::Engine as _;
use secrecy::ExposeSecret;

use crate::config::BasicAuthSettings;
use crate::envelope::Envelope;
use crate::providers::contract::{Connector, Sample};
use crate::providers::support::{ct_eq, header};
use crate::providers::{Accepted, NormalizeError, Normalized, Unverified, VerifyError};

const AUTHORIZATION: &str = "authorization";

/// An address or a CIDR block, e.g. `1.2.3.4`, `10.0.0.0/8`, `2001:db8::/32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IpBlock {
    addr: IpAddr,
    prefix: u8,
}

impl IpBlock {
    fn parse(s: &str) -> Option<Self> {
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (s.trim().parse::<IpAddr>().ok()?, None),
        };
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Self { addr, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

pub struct Rebilly {
    /// SHA-256 of `username:password`.
    credentials_digest: [u8; 32],
    /// The Authorization value `sign` produces.
    authorization: String,
    allow: Option<Vec<IpBlock>>,
}

impl Rebilly {
    pub fn new(
        auth: Option<&BasicAuthSettings>,
        allow_ips: Option<&[String]>,
    ) -> Result<Self, String> {
        let auth = auth.ok_or("basic_auth is required")?;
        let password = auth.password.expose_secret();
        if auth.username.is_empty() || auth.username.contains(':') || password.is_empty() {
            return Err("basic_auth needs a username without ':' and a non-empty password".into());
        }
        let credentials = format!("{}:{password}", auth.username);
        let allow = allow_ips
            .map(|list| {
                list.iter()
                    .enumerate()
                    .map(|(i, s)| {
                        IpBlock::parse(s)
                            .ok_or_else(|| format!("allow_ips #{} is not an IP or CIDR", i + 1))
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        Ok(Self {
            credentials_digest: digest(credentials.as_bytes()),
            authorization: format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(&credentials)
            ),
            allow,
        })
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

impl Connector for Rebilly {
    fn verify(&self, request: &Unverified<'_>, _now: SystemTime) -> Result<Accepted, VerifyError> {
        if let Some(allow) = &self.allow {
            let peer = request.peer.ok_or(VerifyError::PeerNotAllowed)?;
            if !allow.iter().any(|block| block.contains(peer)) {
                return Err(VerifyError::PeerNotAllowed);
            }
        }
        let value = header(request.headers, AUTHORIZATION)?;
        let (scheme, token) = value
            .split_once(' ')
            .ok_or(VerifyError::MalformedHeader(AUTHORIZATION))?;
        if !scheme.eq_ignore_ascii_case("basic") || token.len() > 1024 {
            return Err(VerifyError::MalformedHeader(AUTHORIZATION));
        }
        let presented = base64::engine::general_purpose::STANDARD
            .decode(token.trim())
            .map_err(|_| VerifyError::MalformedHeader(AUTHORIZATION))?;
        if !ct_eq(&digest(&presented), &self.credentials_digest) {
            return Err(VerifyError::BadCredentials);
        }
        Ok(Accepted {
            event_id: event_id::of(request.body),
            kept_headers: Vec::new(),
        })
    }

    fn normalize(&self, envelope: &Envelope) -> Result<Normalized, NormalizeError> {
        webhook::normalize(&envelope.body)
    }

    fn sign(&self, _event_id: &str, _body: &[u8], _now: SystemTime) -> Vec<(String, String)> {
        vec![(AUTHORIZATION.to_owned(), self.authorization.clone())]
    }

    fn header_names(&self) -> Vec<String> {
        vec![AUTHORIZATION.to_owned()]
    }

    /// A `renewal-invoice-payment-declined` body (`InvoiceAndTransaction`): the renewal
    /// invoice's sale declined by the gateway.
    fn sample_body(&self, sample: &Sample<'_>) -> Vec<u8> {
        let (event_id, invoice) = (sample.event_id, format!("in_{}", sample.cycle));
        let (subscription, customer) = (
            format!("sub_{}", sample.subscription),
            format!("cus_{}", sample.subscription),
        );
        let at = chrono::DateTime::<chrono::Utc>::from(sample.now)
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        serde_json::to_vec(&serde_json::json!({
            "transactionId": event_id,
            "invoiceId": invoice,
            "eventType": "renewal-invoice-payment-declined",
            "_embedded": {
                "transaction": {
                    "id": event_id, "type": "sale", "status": "completed", "result": "declined",
                    "amount": 49.95, "currency": "USD", "customerId": customer,
                    "invoiceIds": [invoice], "subscriptionIds": [subscription],
                    "processedTime": at, "createdTime": at, "updatedTime": at, "revision": 1,
                    "gateway": { "response": { "code": "05", "message": "Do not honor" } }
                },
                "invoice": {
                    "id": invoice, "subscriptionId": subscription, "customerId": customer,
                    "websiteId": "web_0YV7DE4Z26DQSA1AC92FBJ7SEG", "currency": "USD",
                    "amount": 49.95, "status": "past-due", "type": "renewal", "revision": 2,
                    "updatedTime": at
                }
            },
            "_links": [
                { "rel": "transaction", "href": format!("https://api.rebilly.com/transactions/{event_id}") },
                { "rel": "invoice", "href": format!("https://api.rebilly.com/invoices/{invoice}") }
            ]
        }))
        .expect("static JSON")
    }
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue};
    use bytes::Bytes;
    use secrecy::SecretString;

    use super::*;
    use crate::providers::support::{body_hash_id, sha256_hex};
    use serde_json::{Value, json};
    use webhook::definitions::{Want, definitions};

    const BODY: &str = r#"{"transactionId":"txn_1","invoiceId":"inv_1","eventType":"renewal-invoice-payment-declined","_embedded":{}}"#;

    fn verifier(user: &str, pass: &str, allow: Option<&[&str]>) -> Rebilly {
        let auth = BasicAuthSettings {
            username: user.into(),
            password: SecretString::from(pass),
        };
        let allow: Option<Vec<String>> = allow.map(|a| a.iter().map(|s| s.to_string()).collect());
        Rebilly::new(Some(&auth), allow.as_deref()).unwrap()
    }

    fn basic(credentials: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(credentials)
        )
    }

    fn check(
        v: &Rebilly,
        authorization: Option<&str>,
        body: &str,
        peer: Option<&str>,
    ) -> Result<Accepted, VerifyError> {
        let mut h = HeaderMap::new();
        if let Some(a) = authorization {
            h.insert("Authorization", HeaderValue::from_str(a).unwrap());
        }
        let body = Bytes::from(body.to_owned());
        let request = Unverified {
            headers: &h,
            body: &body,
            peer: peer.map(|p| p.parse().unwrap()),
        };
        v.verify(&request, SystemTime::UNIX_EPOCH)
    }

    fn id_of(body: &str) -> String {
        let v = verifier("rebilly", "s3cret", None);
        check(&v, Some(&basic("rebilly:s3cret")), body, None)
            .unwrap()
            .event_id
    }

    /// A body of `event_type` generated from Rebilly's definitions with `fields` set,
    /// checked against them.
    fn defined(event_type: &str, fields: &[(&str, Value)]) -> Value {
        let wanted: Vec<Want<'_>> = fields.iter().map(|(p, v)| (*p, Some(v.clone()))).collect();
        let body = definitions().generate(event_type, &wanted);
        definitions().check(event_type, &body).unwrap();
        body
    }

    fn renewal(rebill: u32, revision: u32) -> Value {
        defined(
            "subscription-renewed",
            &[
                ("/subscriptionId", json!("sub_1")),
                ("/_embedded/subscription/id", json!("sub_1")),
                ("/_embedded/subscription/status", json!("active")),
                ("/_embedded/subscription/rebillNumber", json!(rebill)),
                (
                    "/_embedded/subscription/currentPeriodStart",
                    json!(format!("2025-{:02}-01T00:00:00Z", rebill)),
                ),
                ("/_embedded/subscription/revision", json!(revision)),
            ],
        )
    }

    #[test]
    fn right_credentials_pass_and_event_id_is_stable() {
        let v = verifier("rebilly", "s3cret", None);
        let ok = check(&v, Some(&basic("rebilly:s3cret")), BODY, None).unwrap();
        assert!(ok.kept_headers.is_empty(), "Authorization is never kept");
        definitions()
            .check(
                "renewal-invoice-payment-declined",
                &serde_json::from_str(BODY).unwrap(),
            )
            .unwrap();
        // No per-occurrence field: the event type, the ids and the whole body.
        let material = "eventType=\"renewal-invoice-payment-declined\"\n/transactionId=\"txn_1\"\n/invoiceId=\"inv_1\"\nbody=";
        assert_eq!(
            ok.event_id,
            sha256_hex(&[material.as_bytes(), BODY.as_bytes()])
        );
        let other = BODY.replace("txn_1", "txn_2");
        assert_ne!(id_of(&other), ok.event_id);
        let other_type = BODY.replace("declined", "canceled");
        assert_ne!(id_of(&other_type), ok.event_id);
    }

    #[test]
    fn a_redelivery_shares_the_id_of_the_first_delivery() {
        let body = renewal(3, 7);
        let bytes = serde_json::to_string(&body).unwrap();
        let id = id_of(&bytes);
        assert_eq!(id_of(&bytes), id, "identical bytes");
        assert_eq!(
            id_of(&serde_json::to_string_pretty(&body).unwrap()),
            id,
            "whitespace"
        );
        let reordered = format!(
            r#"{{"_links":[],"_embedded":{},"eventType":"subscription-renewed","subscriptionId":"sub_1"}}"#,
            body["_embedded"]
        );
        assert_eq!(id_of(&reordered), id, "key order and _links");
        let material = "eventType=\"subscription-renewed\"\n/subscriptionId=\"sub_1\"\n\
            /_embedded/subscription/revision=7\n/_embedded/subscription/status=\"active\"\n\
            /_embedded/subscription/rebillNumber=3\n\
            /_embedded/subscription/currentPeriodStart=\"2025-03-01T00:00:00Z\"";
        assert_eq!(id, sha256_hex(&[material.as_bytes()]));
    }

    #[test]
    fn each_real_change_has_its_own_id() {
        let ids = |bodies: &[Value]| -> Vec<String> {
            bodies
                .iter()
                .map(|b| id_of(&serde_json::to_string(b).unwrap()))
                .collect()
        };
        let distinct = |what: &str, bodies: &[Value]| {
            let ids = ids(bodies);
            let unique: std::collections::BTreeSet<_> = ids.iter().collect();
            assert_eq!(unique.len(), ids.len(), "{what}: {ids:?}");
        };
        distinct(
            "two renewals of one subscription",
            &[renewal(2, 5), renewal(3, 6)],
        );
        let pause = |event: &str, pause: &str, status: &str, order: &str, revision: u32| {
            defined(
                event,
                &[
                    ("/subscriptionId", json!("sub_1")),
                    ("/subscriptionPauseId", json!(pause)),
                    ("/_embedded/subscription/id", json!("sub_1")),
                    ("/_embedded/subscription/status", json!(order)),
                    ("/_embedded/subscription/revision", json!(revision)),
                    ("/_embedded/pause/id", json!(pause)),
                    ("/_embedded/pause/status", json!(status)),
                ],
            )
        };
        distinct(
            "pause, resume, pause",
            &[
                pause("subscription-paused", "sub_pau_1", "ongoing", "paused", 8),
                pause("subscription-resumed", "sub_pau_1", "finished", "active", 9),
                pause("subscription-paused", "sub_pau_2", "ongoing", "paused", 10),
            ],
        );
        let tx = |event: &str, status: &str, result: &str, revision: u32, child: Option<&str>| {
            let mut fields = vec![
                ("/transactionId", json!("txn_1")),
                ("/_embedded/transaction/id", json!("txn_1")),
                ("/_embedded/transaction/type", json!("sale")),
                ("/_embedded/transaction/status", json!(status)),
                ("/_embedded/transaction/result", json!(result)),
                ("/_embedded/transaction/revision", json!(revision)),
            ];
            if let Some(child) = child {
                fields.push(("/_embedded/childTransaction/id", json!(child)));
            }
            defined(event, &fields)
        };
        distinct(
            "pending, approved, refunded",
            &[
                tx("transaction-processed", "pending", "unknown", 1, None),
                tx("transaction-processed", "completed", "approved", 2, None),
                tx(
                    "transaction-refunded",
                    "refunded",
                    "approved",
                    3,
                    Some("txn_r1"),
                ),
            ],
        );
        distinct(
            "two partial refunds",
            &[
                tx(
                    "transaction-partially-refunded",
                    "partially-refunded",
                    "approved",
                    3,
                    Some("txn_r1"),
                ),
                tx(
                    "transaction-partially-refunded",
                    "partially-refunded",
                    "approved",
                    3,
                    Some("txn_r2"),
                ),
            ],
        );
        let reminder = |event: &str, pointer: &str, n: u32| {
            let id = if event.starts_with("invoice") {
                ("/invoiceId", json!("in_1"))
            } else {
                ("/subscriptionId", json!("sub_1"))
            };
            defined(event, &[id, (pointer, json!(n))])
        };
        distinct(
            "two invoice reminders",
            &[
                reminder(
                    "invoice-past-due-reminder",
                    "/_embedded/invoice/dueReminderNumber",
                    1,
                ),
                reminder(
                    "invoice-past-due-reminder",
                    "/_embedded/invoice/dueReminderNumber",
                    2,
                ),
            ],
        );
        distinct(
            "two renewal reminders",
            &[
                reminder(
                    "subscription-renewal-reminder",
                    "/_embedded/subscription/renewalReminderNumber",
                    1,
                ),
                reminder(
                    "subscription-renewal-reminder",
                    "/_embedded/subscription/renewalReminderNumber",
                    2,
                ),
            ],
        );
    }

    #[test]
    fn without_per_occurrence_fields_the_body_is_hashed() {
        // Only ids: distinct bodies stay distinct, the same bytes share an id.
        let a = r#"{"eventType":"subscription-renewed","subscriptionId":"sub_1","_links":[{"rel":"subscription","href":"a"}]}"#;
        let b = a.replace("\"a\"", "\"b\"");
        assert_ne!(id_of(a), id_of(&b));
        assert_eq!(id_of(a), id_of(a));
        // `null` is absent.
        let null = r#"{"eventType":"subscription-renewed","subscriptionId":"sub_1","_embedded":{"subscription":{"revision":null}}}"#;
        let material = "eventType=\"subscription-renewed\"\n/subscriptionId=\"sub_1\"\nbody=";
        assert_eq!(
            id_of(null),
            sha256_hex(&[material.as_bytes(), null.as_bytes()])
        );
        // Without an event type, or not one JSON object: the body-hash id.
        for body in [
            r#"{"subscriptionId":"sub_1"}"#,
            "[1]",
            "not json",
            r#"{"eventType":"x","_embedded":[]}"#,
            r#"{"eventType":"x","eventType":"y"}"#,
        ] {
            assert_eq!(id_of(body), body_hash_id(body.as_bytes()), "{body}");
        }
    }

    #[test]
    fn wrong_or_malformed_credentials_are_rejected() {
        let v = verifier("rebilly", "s3cret", None);
        for wrong in [
            "rebilly:s3creT",
            "rebilly:",
            "rebilly:s3cret ",
            "Rebilly:s3cret",
        ] {
            assert_eq!(
                check(&v, Some(&basic(wrong)), BODY, None).unwrap_err(),
                VerifyError::BadCredentials,
                "{wrong}"
            );
        }
        // The scheme name is case-insensitive.
        let lower = basic("rebilly:s3cret").replace("Basic", "basic");
        check(&v, Some(&lower), BODY, None).unwrap();
        assert_eq!(
            check(&v, None, BODY, None).unwrap_err(),
            VerifyError::MissingHeader(AUTHORIZATION)
        );
        let huge = format!("Basic {}", "A".repeat(10_000));
        for bad in [
            "",
            "Bearer abc",
            "Basic",
            "Basic !!!",
            "basicxyz",
            huge.as_str(),
        ] {
            assert!(check(&v, Some(bad), BODY, None).is_err(), "{bad}");
        }
        // Good credentials, body without eventType.
        let kept = check(&v, Some(&basic("rebilly:s3cret")), "{}", None).unwrap();
        assert_eq!(
            kept.event_id,
            body_hash_id(b"{}"),
            "kept under a body-hash id"
        );
    }

    #[test]
    fn allow_ips_accepts_plain_ips_and_cidr_blocks() {
        let v = verifier("u", "p", Some(&["1.2.3.4", "10.0.0.0/8", "2001:db8::/32"]));
        let auth = basic("u:p");
        for ok in ["1.2.3.4", "10.200.0.1", "::ffff:10.1.1.1", "2001:db8::1"] {
            check(&v, Some(&auth), BODY, Some(ok)).unwrap();
        }
        for denied in ["1.2.3.5", "11.0.0.1", "2001:db9::1", "::1"] {
            assert_eq!(
                check(&v, Some(&auth), BODY, Some(denied)).unwrap_err(),
                VerifyError::PeerNotAllowed,
                "{denied}"
            );
        }
        assert_eq!(
            check(&v, Some(&auth), BODY, None).unwrap_err(),
            VerifyError::PeerNotAllowed
        );
        let everyone = verifier("u", "p", Some(&["0.0.0.0/0"]));
        check(&everyone, Some(&auth), BODY, Some("8.8.8.8")).unwrap();
    }

    #[test]
    fn bad_settings_are_config_errors_without_secrets() {
        let auth = BasicAuthSettings {
            username: "u".into(),
            password: SecretString::from("hunter2"),
        };
        assert!(Rebilly::new(None, None).is_err());
        for bad in ["1.2.3.4/33", "not-an-ip", "10.0.0.0/x"] {
            let err = Rebilly::new(Some(&auth), Some(&[bad.to_string()]))
                .err()
                .unwrap();
            assert!(!err.contains("hunter2"), "{err}");
        }
        let empty = BasicAuthSettings {
            username: "u".into(),
            password: SecretString::from(""),
        };
        assert!(Rebilly::new(Some(&empty), None).is_err());
    }

    #[test]
    fn sample_body_sign_round_trip_and_normalize() {
        let v = verifier("user", "pass", None);
        let body = v.sample_body(&crate::providers::contract::Sample::new(
            "txn_9",
            SystemTime::UNIX_EPOCH,
        ));
        let signed = v.sign("txn_9", &body, SystemTime::UNIX_EPOCH);
        let body = String::from_utf8(body).unwrap();
        definitions()
            .check(
                "renewal-invoice-payment-declined",
                &serde_json::from_str(&body).unwrap(),
            )
            .unwrap();
        let ok = check(&v, Some(&signed[0].1), &body, None).unwrap();
        let envelope = Envelope {
            source_id: "r".into(),
            provider: crate::config::ProviderKind::Rebilly,
            event_id: ok.event_id,
            received_at: chrono::Utc::now(),
            content_type: None,
            headers: ok.kept_headers,
            body: Bytes::from(body),
        };
        let normalized = v.normalize(&envelope).unwrap();
        assert_eq!(normalized.event_type, "renewal-invoice-payment-declined");
        let [crate::canonical::CanonicalEvent::BillingAttempt(a)] = normalized.events.as_slice()
        else {
            panic!("{normalized:?}")
        };
        assert_eq!(
            (
                a.attempt_id.as_str(),
                a.status,
                a.cycle_id.as_deref(),
                a.subscription_id.as_deref(),
                a.error_code.as_deref()
            ),
            (
                "txn_9",
                crate::canonical::AttemptStatus::Failed,
                Some("in_0"),
                Some("sub_0"),
                Some("05")
            )
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_headers_and_bodies_never_panic(
            auth in ".{0,300}", body in proptest::collection::vec(proptest::num::u8::ANY, 0..512)
        ) {
            let v = verifier("user", "pass", Some(&["10.0.0.0/8"]));
            let mut h = HeaderMap::new();
            if let Ok(value) = HeaderValue::from_str(&auth) {
                h.insert(AUTHORIZATION, value);
            }
            let body = Bytes::from(body);
            let request = Unverified { headers: &h, body: &body, peer: Some([10, 0, 0, 1].into()) };
            proptest::prop_assert!(v.verify(&request, SystemTime::UNIX_EPOCH).is_err());
        }
    }
}
