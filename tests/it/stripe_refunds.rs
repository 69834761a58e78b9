//! Stripe refunds end to end: a Refund names its PaymentIntent, never the invoice, so the
//! worker holds it until the lookup role has asked Stripe (`GET /v1/invoice_payments`)
//! which invoice attempt the payment paid; then each refund is booked once, for its own
//! amount, whatever order the payment, the link and the refunds arrived in. A payment of
//! no subscription's invoice books nothing. `ledger verify` stays clean throughout.
//!
//! The payloads are Stripe's own: the events are generated from the SDK's event types
//! (`RefundCreatedEvent`, `InvoicePaidEvent`, ...) and checked against them, the invoice is
//! generated from the `Invoice` type, and the refunds are Stripe's example Refund
//! (`fixtures3.json`) with their ids, amounts and statuses set. The fake API accepts only
//! `InvoicePaymentListParams` and answers `InvoicePayment`s checked against their type.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use chrono::Utc;
use serde_json::{Value, json};
use subsync::{
    app::Role,
    lookups::{LookupClients, Lookups, Pass},
    ops::{Actor, Quiet, correct::correct_archived, replay::ReplayRequest},
};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate, matchers};

use crate::common::{TestApp, TestConfig, catalogue, eventually, spawn_app};
use crate::sync::{invoice, refused, stripe_types};

const SOURCE: &str = "stripe";
const KEY: &str = "sk_test_refunds";
const FIXTURES: &str = include_str!("../fixtures/stripe/fixtures3.subset.json");

/// Stripe's `GET /v1/invoice_payments`: `pi_1` paid invoice `in_1` (its first attempt);
/// any other PaymentIntent paid no invoice. A query outside `InvoicePaymentListParams`, or
/// an expand naming no object of the InvoicePayment, gets Stripe's 400.
#[derive(Clone, Default)]
struct FakeStripe {
    calls: Arc<Mutex<Vec<String>>>,
}

impl Respond for FakeStripe {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        if let Some(refusal) = refused(request, "InvoicePaymentListParams", "InvoicePayment") {
            return refusal;
        }
        let types = stripe_types();
        let pairs: Vec<(String, String)> = request.url.query_pairs().into_owned().collect();
        let pi = (pairs.iter())
            .find(|(k, _)| k == "payment[payment_intent]")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        self.calls.lock().unwrap().push(pi.clone());
        let data = match pi.as_str() {
            "pi_1" => {
                let mut payment = types.generate("InvoicePayment");
                payment["id"] = json!("inpay_1");
                payment["status"] = json!("paid");
                payment["amount_paid"] = json!(2500);
                payment["currency"] = json!("usd");
                payment["invoice"] = invoice("in_1", "paid", 1);
                payment["payment"] = json!({"type": "payment_intent", "payment_intent": "pi_1"});
                let errors = types.validate(&payment, "InvoicePayment");
                assert!(errors.is_empty(), "{errors:#?}");
                vec![payment]
            }
            _ => vec![],
        };
        ResponseTemplate::new(200).set_body_json(json!({"object": "list",
            "url": "/v1/invoice_payments", "has_more": false, "data": data}))
    }
}

async fn app(fake: FakeStripe) -> (MockServer, TestApp) {
    let server = MockServer::start().await;
    Mock::given(matchers::method("GET"))
        .and(matchers::path("/v1/invoice_payments"))
        .and(matchers::header(
            "authorization",
            format!("Bearer {KEY}").as_str(),
        ))
        .respond_with(fake)
        .mount(&server)
        .await;
    let mut config = TestConfig::new().await;
    config.extra = format!(
        r#"
[[sources]]
id = "{SOURCE}"
provider = "stripe"
secrets = ["whsec_refunds"]
api = {{ base_url = "{}", token = "{KEY}" }}

# The service's own loops stay out of the way: the test drives the lookups.
[dunning]
interval_ms = 86400000

[lookups]
interval_ms = 86400000
"#,
        server.uri()
    );
    let app = spawn_app(&config, Role::All).await;
    (server, app)
}

/// A Stripe event of `event_type` (its SDK interface `interface`) carrying `object`, as
/// the webhook's body.
fn event(id: &str, event_type: &str, interface: &str, object: Value) -> Vec<u8> {
    let event = crate::sync::event(id, event_type, interface, 1_763_700_500, object);
    serde_json::to_vec(&event).unwrap()
}

/// Stripe's example Refund with this id, PaymentIntent, amount (usd cents) and status.
pub(crate) fn refund(id: &str, payment_intent: &str, amount: i64, status: &str) -> Value {
    let fixtures: Value = serde_json::from_str(FIXTURES).unwrap();
    let mut refund = fixtures["resources"]["refund"].clone();
    refund["id"] = json!(id);
    refund["payment_intent"] = json!(payment_intent);
    refund["amount"] = json!(amount);
    refund["status"] = json!(status);
    refund
}

/// The lookup role of the app's sources, driven by the test.
fn lookups(app: &TestApp) -> Lookups {
    let catalogue = catalogue(&app.settings);
    Lookups::new(
        app.db.clone(),
        LookupClients::of(&catalogue.sources),
        catalogue.dunning,
    )
}

async fn send(app: &TestApp, id: &str, body: Vec<u8>) {
    let source = crate::common::source(app.settings.source(SOURCE).unwrap()).unwrap();
    let headers = source.sign(id, &body, SystemTime::now());
    assert_eq!(app.post(SOURCE, &headers, body).await.status(), 202);
    let archived = eventually(Duration::from_secs(20), || async {
        app.db.archived_count(SOURCE, id).await.unwrap() == 1
    })
    .await;
    assert!(archived, "{id} reconciled");
}

/// (kind, refund id, account, amount) of every posting of the attempt's entries (all USD).
async fn postings(app: &TestApp, attempt: &str) -> Vec<(String, Option<String>, String, i64)> {
    let postings = crate::common::postings(app, SOURCE, attempt).await;
    postings
        .into_iter()
        .map(|(k, r, a, amount, _)| (k, r, a, amount))
        .collect()
}

fn refund_entry(id: &str, amount: i64) -> [(String, Option<String>, String, i64); 2] {
    [
        (
            "refund".into(),
            Some(id.into()),
            "collected".into(),
            -amount,
        ),
        ("refund".into(), Some(id.into()), "refunded".into(), amount),
    ]
}

async fn link_status(app: &TestApp, payment: &str) -> Option<(String, Option<String>)> {
    let rows = app.db.lookups(None, 100).await.unwrap();
    rows.into_iter()
        .find(|r| r.kind == "payment" && r.payment_ref.as_deref() == Some(payment))
        .map(|r| (r.status, r.attempt_id))
}

#[tokio::test]
async fn refunds_are_linked_to_their_invoice_attempt_and_booked_once_in_any_order() {
    let fake = FakeStripe::default();
    let (_server, app) = app(fake.clone()).await;
    let catalogue = catalogue(&app.settings);
    let lookups = lookups(&app);
    let created = "RefundCreatedEvent";

    // A refund before its payment and before its link: held, nothing booked.
    let early = refund("re_2", "pi_1", 400, "succeeded");
    send(
        &app,
        "evt_r2",
        event("evt_r2", "refund.created", created, early.clone()),
    )
    .await;
    assert_eq!(
        link_status(&app, "pi_1").await,
        Some(("pending".into(), None))
    );
    let paid = invoice("in_1", "paid", 1);
    send(
        &app,
        "evt_paid",
        event("evt_paid", "invoice.paid", "InvoicePaidEvent", paid),
    )
    .await;
    let collection = postings(&app, "in_1:1").await;
    assert_eq!(collection.len(), 2, "the collection only: {collection:?}");

    // The link: one call, and the held refund is booked for its own amount.
    let pass = lookups.run_once(Utc::now()).await.unwrap();
    assert_eq!(
        pass,
        Pass {
            posted: 1,
            ..Pass::default()
        }
    );
    assert_eq!(
        link_status(&app, "pi_1").await,
        Some(("done".into(), Some("in_1:1".into())))
    );
    let booked = postings(&app, "in_1:1").await;
    assert_eq!(booked[2..], refund_entry("re_2", 400));

    // A later refund of the linked payment: pending, then succeeded; linked without a call.
    let pending = refund("re_1", "pi_1", 500, "pending");
    send(
        &app,
        "evt_r1a",
        event("evt_r1a", "refund.created", created, pending),
    )
    .await;
    assert_eq!(
        postings(&app, "in_1:1").await.len(),
        4,
        "a pending refund moves no money"
    );
    let done = refund("re_1", "pi_1", 500, "succeeded");
    let updated = "RefundUpdatedEvent";
    send(
        &app,
        "evt_r1b",
        event("evt_r1b", "refund.updated", updated, done),
    )
    .await;
    let booked = postings(&app, "in_1:1").await;
    assert_eq!(booked[4..], refund_entry("re_1", 500));
    // Redelivered (a new event id for the same refund) and looked up again: nothing moves.
    send(
        &app,
        "evt_r2_again",
        event("evt_r2_again", "refund.updated", updated, early),
    )
    .await;
    assert_eq!(lookups.run_once(Utc::now()).await.unwrap(), Pass::default());
    assert_eq!(postings(&app, "in_1:1").await, booked);
    assert_eq!(fake.calls.lock().unwrap().clone(), vec!["pi_1".to_owned()]);

    // A refund of a payment that paid no invoice (a one-off charge): not a subscription's.
    let one_off = refund("re_9", "pi_9", 300, "succeeded");
    send(
        &app,
        "evt_r9",
        event("evt_r9", "refund.created", created, one_off),
    )
    .await;
    let pass = lookups.run_once(Utc::now()).await.unwrap();
    assert_eq!(
        pass,
        Pass {
            not_applicable: 1,
            ..Pass::default()
        }
    );
    assert_eq!(
        link_status(&app, "pi_9").await,
        Some(("not_applicable".into(), None))
    );
    let view = app.db.subscription(SOURCE, "sub_1").await.unwrap().unwrap();
    assert_eq!(
        view.balances["collected"]["USD"],
        2500 - 900,
        "{:?}",
        view.balances
    );
    assert_eq!(view.balances["refunded"]["USD"], 900, "{:?}", view.balances);
    assert_eq!(app.db.verify_ledger().await.unwrap(), Vec::<String>::new());

    // A corrective replay recomputes the refunds through their links: nothing differs.
    let request = ReplayRequest {
        source_id: SOURCE.into(),
        since: Utc::now() - chrono::Duration::hours(1),
        until: None,
        dry_run: false,
    };
    let actor = Actor("cli:test".into());
    let (sources, dunning) = (&catalogue.sources, &catalogue.dunning);
    let report = correct_archived(&app.db, sources, dunning, &request, &actor, &Quiet)
        .await
        .unwrap();
    assert_eq!(
        (report.failed, report.corrected, report.appended),
        (0, 0, 0),
        "{report:?}"
    );
    // sub_1 (its invoice and refunds) recomputed from every event of the window; the
    // one-off payment's refund has no state to compare.
    assert_eq!(
        (report.examined, report.recomputed_events),
        (1, 6),
        "{report:?}"
    );
    assert_eq!(postings(&app, "in_1:1").await, booked);
    assert_eq!(app.db.verify_ledger().await.unwrap(), Vec::<String>::new());
    app.stop().await;
}
