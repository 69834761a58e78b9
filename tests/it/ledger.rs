//! The ledger against a real Postgres: transition rules, money, ordering, the journal's
//! invariants, and order independence over generated histories.

use crate::common;

use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use subsync::{
    canonical::{
        AttemptStatus, BillingAttempt, CanonicalEvent, SubscriptionChange, SubscriptionStatus,
    },
    config::{DatabaseSettings, ProviderKind, SourceSettings},
    db::Db,
    dunning::{
        schedule::Dunning,
        views::{self, RetriesQuery},
    },
    envelope::Envelope,
    ledger::{AttemptsQuery, NewEvent, Reconciled},
    money::Money,
};

/// A migrated fresh database, and its URL.
async fn db() -> (Db, String) {
    let url = common::fresh_database().await;
    let settings = DatabaseSettings {
        url: url.clone().into(),
        max_connections: 4,
        acquire_timeout_ms: 5000,
    };
    let db = Db::connect_lazy(&settings).unwrap();
    db.migrate().await.unwrap();
    (db, url)
}

fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()
}

fn attempt(
    id: &str,
    sub: &str,
    status: AttemptStatus,
    amount: Option<(i64, &str)>,
) -> CanonicalEvent {
    CanonicalEvent::BillingAttempt(BillingAttempt {
        attempt_id: id.into(),
        subscription_id: Some(sub.into()),
        cycle_id: Some(format!("{sub}-cycle")),
        status,
        provider_status: format!("{status:?}").to_uppercase(),
        amount: amount.map(|(minor, currency)| Money::from_minor(minor, currency).unwrap()),
        error_code: (status == AttemptStatus::Failed).then(|| "insufficient_funds".into()),
        error_message: None,
        attempted_at: Some(at(0)),
        next_attempt_at: None,
        attempt_count: None,
        idempotency_key: None,
    })
}

fn change(
    sub: &str,
    status: SubscriptionStatus,
    updated: i64,
    currency: Option<&str>,
) -> CanonicalEvent {
    CanonicalEvent::Subscription(SubscriptionChange {
        subscription_id: sub.into(),
        status,
        provider_status: format!("{status:?}").to_lowercase(),
        currency: currency.map(str::to_owned),
        customer_id: None,
        current_period_end: None,
        updated_at: Some(at(updated)),
        version: None,
    })
}

/// One webhook: its event id and the canonical events it carried.
type Webhook = (String, Vec<CanonicalEvent>);

/// Reconciles `batch` for `source` in one transaction.
async fn apply(db: &Db, source: &str, batch: &[Webhook]) -> Vec<Reconciled> {
    apply_with(db, source, batch, &Dunning::default()).await
}

/// [`apply`] with the retry plans of `dunning`.
async fn apply_with(
    db: &Db,
    source: &str,
    batch: &[Webhook],
    dunning: &Dunning,
) -> Vec<Reconciled> {
    let envelopes: Vec<Envelope> = batch
        .iter()
        .map(|(id, _)| Envelope {
            source_id: source.into(),
            provider: ProviderKind::Standard,
            event_id: id.clone(),
            received_at: at(0),
            content_type: None,
            headers: vec![],
            body: Bytes::from_static(b"{}"),
        })
        .collect();
    let events: Vec<NewEvent<'_>> = batch
        .iter()
        .zip(&envelopes)
        .map(|((_, events), envelope)| NewEvent {
            envelope,
            event_type: "test",
            events,
        })
        .collect();
    db.reconcile(&events, dunning).await.unwrap()
}

async fn one(db: &Db, source: &str, id: &str, events: Vec<CanonicalEvent>) -> Reconciled {
    apply(db, source, &[(id.into(), events)]).await[0]
}

async fn status_of(db: &Db, source: &str, attempt: &str) -> String {
    let q = AttemptsQuery {
        source_id: Some(source.into()),
        limit: Some(1000),
        ..Default::default()
    };
    let all = db.billing_attempts(&q).await.unwrap();
    all.into_iter()
        .find(|a| a.attempt_id == attempt)
        .map(|a| a.status)
        .unwrap_or_default()
}

#[tokio::test]
async fn attempts_move_forward_only_and_money_follows() {
    use AttemptStatus::*;
    let (db, _) = db().await;
    let usd = Some((1999, "USD"));
    assert_eq!(
        one(&db, "s", "e1", vec![attempt("a1", "sub", Pending, usd)]).await,
        Reconciled::Applied
    );
    assert_eq!(
        one(
            &db,
            "s",
            "e2",
            vec![attempt("a1", "sub", RequiresAction, None)]
        )
        .await,
        Reconciled::Applied
    );
    assert_eq!(
        one(&db, "s", "e3", vec![attempt("a1", "sub", Succeeded, None)]).await,
        Reconciled::Applied
    );
    assert_eq!(status_of(&db, "s", "a1").await, "succeeded");
    // A late failure after success is archived and counted as stale, not applied.
    assert_eq!(
        one(&db, "s", "e4", vec![attempt("a1", "sub", Failed, None)]).await,
        Reconciled::Stale
    );
    assert_eq!(
        one(&db, "s", "e5", vec![attempt("a1", "sub", Pending, None)]).await,
        Reconciled::Stale
    );
    assert_eq!(status_of(&db, "s", "a1").await, "succeeded");
    let view = db.subscription("s", "sub").await.unwrap().unwrap();
    assert_eq!(
        view.balances["collected"]["USD"], 1999,
        "amount from the pending event is kept"
    );
    assert_eq!(view.balances["receivable"]["USD"], -1999);
    assert_eq!(view.status, None, "no subscription event yet");

    // Refund after success: a reversal entry, never an update.
    assert_eq!(
        one(&db, "s", "e6", vec![attempt("a1", "sub", Refunded, None)]).await,
        Reconciled::Applied
    );
    let view = db.subscription("s", "sub").await.unwrap().unwrap();
    assert_eq!(view.balances["collected"]["USD"], 0);
    assert_eq!(view.balances["refunded"]["USD"], 1999);
    assert_eq!(view.balances["receivable"]["USD"], -1999);
    // The same refund again posts nothing more.
    assert_eq!(
        one(&db, "s", "e7", vec![attempt("a1", "sub", Refunded, usd)]).await,
        Reconciled::Applied
    );
    assert_eq!(
        db.subscription("s", "sub").await.unwrap().unwrap().balances["refunded"]["USD"],
        1999
    );
    // A redelivered event id changes nothing at all.
    assert_eq!(
        one(&db, "s", "e4", vec![attempt("a1", "sub", Failed, None)]).await,
        Reconciled::Duplicate
    );
    assert!(db.verify_ledger().await.unwrap().is_empty());
}

#[tokio::test]
async fn failed_and_skipped_post_nothing_but_show_their_bucket_and_terminal_order_holds() {
    use AttemptStatus::*;
    let (db, _) = db().await;
    one(
        &db,
        "s",
        "e1",
        vec![attempt("f1", "sub", Failed, Some((500, "EUR")))],
    )
    .await;
    one(
        &db,
        "s",
        "e2",
        vec![attempt("k1", "sub", Skipped, Some((500, "EUR")))],
    )
    .await;
    let view = db.subscription("s", "sub").await.unwrap().unwrap();
    assert!(view.balances.is_empty(), "{:?}", view.balances);
    let failed = view.attempts.iter().find(|a| a.attempt_id == "f1").unwrap();
    assert_eq!(failed.decline_bucket.as_deref(), Some("retry_soon"));
    assert_eq!(failed.error_code.as_deref(), Some("insufficient_funds"));
    // skipped < failed < succeeded: a success reported for the same try wins (money moved).
    assert_eq!(
        one(&db, "s", "e3", vec![attempt("k1", "sub", Failed, None)]).await,
        Reconciled::Applied
    );
    assert_eq!(
        one(&db, "s", "e4", vec![attempt("f1", "sub", Succeeded, None)]).await,
        Reconciled::Applied
    );
    assert_eq!(
        db.subscription("s", "sub").await.unwrap().unwrap().balances["collected"]["EUR"],
        500
    );
    let succeeded = db.subscription("s", "sub").await.unwrap().unwrap();
    let f1 = succeeded
        .attempts
        .iter()
        .find(|a| a.attempt_id == "f1")
        .unwrap();
    assert_eq!(
        (f1.decline_bucket.as_deref(), f1.error_code.as_deref()),
        (None, None),
        "state of the winner"
    );
    assert!(db.verify_ledger().await.unwrap().is_empty());
}

#[tokio::test]
async fn currency_exponents_are_posted_exactly() {
    use AttemptStatus::*;
    let (db, _) = db().await;
    // Decimal inputs go through money::Money::from_decimal in the normalizers.
    let cases = [
        ("jpy", "1500", "JPY", 1500),
        ("usd", "49.95", "USD", 4995),
        ("kwd", "12.345", "KWD", 12345),
    ];
    for (sub, text, currency, minor) in cases {
        let money = Money::from_decimal(text, currency).unwrap();
        let event = attempt(
            &format!("{sub}-1"),
            sub,
            Succeeded,
            Some((money.minor, currency)),
        );
        one(&db, "s", &format!("e-{sub}"), vec![event]).await;
        let view = db.subscription("s", sub).await.unwrap().unwrap();
        assert_eq!(
            view.balances["collected"][currency], minor,
            "{text} {currency}"
        );
    }
    assert!(Money::from_decimal("1500.5", "JPY").is_err());
    assert!(Money::from_decimal("12.3456", "KWD").is_err());
    assert!(db.verify_ledger().await.unwrap().is_empty());
}

#[tokio::test]
async fn subscriptions_follow_provider_time_and_attempts_may_come_first() {
    use SubscriptionStatus::*;
    let (db, _) = db().await;
    // An attempt for a subscription we have not heard of yet.
    one(
        &db,
        "s",
        "e0",
        vec![attempt(
            "a1",
            "sub",
            AttemptStatus::Succeeded,
            Some((100, "USD")),
        )],
    )
    .await;
    assert_eq!(
        db.subscription("s", "sub").await.unwrap().unwrap().status,
        None
    );
    assert_eq!(
        one(&db, "s", "e2", vec![change("sub", PastDue, 20, None)]).await,
        Reconciled::Applied
    );
    // Older "created" arrives late: archived as stale, its currency still filled in.
    assert_eq!(
        one(&db, "s", "e1", vec![change("sub", Active, 10, Some("USD"))]).await,
        Reconciled::Stale
    );
    let view = db.subscription("s", "sub").await.unwrap().unwrap();
    assert_eq!(
        (view.status.as_deref(), view.currency.as_deref()),
        (Some("past_due"), Some("USD"))
    );
    assert_eq!(view.attempts.len(), 1);
    assert_eq!(
        one(&db, "s", "e3", vec![change("sub", Cancelled, 30, None)]).await,
        Reconciled::Applied
    );
    assert_eq!(
        db.subscription("s", "sub")
            .await
            .unwrap()
            .unwrap()
            .status
            .as_deref(),
        Some("cancelled")
    );
}

#[tokio::test]
async fn the_journal_is_append_only_and_balanced_by_the_database() {
    let (db, url) = db().await;
    one(
        &db,
        "s",
        "e1",
        vec![attempt(
            "a1",
            "sub",
            AttemptStatus::Succeeded,
            Some((100, "USD")),
        )],
    )
    .await;
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    for sql in [
        "UPDATE postings SET amount_minor = 0",
        "DELETE FROM journal_entries",
        "TRUNCATE postings",
        // An entry whose postings do not sum to zero.
        "WITH e AS (INSERT INTO journal_entries (source_id, subscription_id, attempt_id, kind, event_id)
                    SELECT 's', 'sub', 'x', 'collection', min(id) FROM events RETURNING id)
         INSERT INTO postings (entry_id, source_id, subscription_id, account, amount_minor, currency)
         SELECT id, 's', 'sub', 'collected', 5, 'USD' FROM e",
    ] {
        let err = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await.unwrap_err().to_string();
        assert!(err.contains("append-only") || err.contains("does not balance"), "{sql}: {err}");
    }
    assert!(db.verify_ledger().await.unwrap().is_empty());
}

#[tokio::test]
async fn verify_reports_a_breach_written_behind_the_ledgers_back() {
    let (db, url) = db().await;
    one(
        &db,
        "s",
        "e1",
        vec![attempt(
            "a1",
            "sub",
            AttemptStatus::Failed,
            Some((100, "USD")),
        )],
    )
    .await;
    assert!(db.verify_ledger().await.unwrap().is_empty());
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    sqlx::query("UPDATE billing_attempts SET status = 'succeeded' WHERE attempt_id = 'a1'")
        .execute(&mut conn)
        .await
        .unwrap();
    let breaches = db.verify_ledger().await.unwrap();
    assert_eq!(
        breaches,
        vec!["succeeded or refunded attempt with an amount has no collection: s/a1".to_owned()]
    );
}

#[tokio::test]
async fn a_cycle_reported_paid_by_two_attempts_is_collected_once_in_any_order() {
    let (db, _) = db().await;
    let succeeded = |id: &str| attempt(id, "sub_c", AttemptStatus::Succeeded, Some((4995, "USD")));
    // Rebilly names one payment by transaction (`transaction-processed`) and, when the
    // invoice webhook carries no transaction, by invoice: two attempts of one cycle.
    for (source, batches) in [
        ("one-batch", vec![vec!["txn_1", "invoice-paid:inv_1"]]),
        ("txn-first", vec![vec!["txn_1"], vec!["invoice-paid:inv_1"]]),
        (
            "invoice-first",
            vec![vec!["invoice-paid:inv_1"], vec!["txn_1"]],
        ),
    ] {
        for batch in batches {
            let webhooks: Vec<Webhook> = batch
                .iter()
                .map(|id| (format!("evt_{id}"), vec![succeeded(id)]))
                .collect();
            apply(&db, source, &webhooks).await;
        }
        let view = db.subscription(source, "sub_c").await.unwrap().unwrap();
        assert_eq!(view.attempts.len(), 2, "{source}: both attempts are shown");
        assert_eq!(view.balances["collected"]["USD"], 4995, "{source}");
        assert_eq!(view.balances["receivable"]["USD"], -4995, "{source}");
    }
    // Another cycle of the same subscription is collected on its own.
    let next = CanonicalEvent::BillingAttempt(BillingAttempt {
        attempt_id: "txn_2".into(),
        cycle_id: Some("inv_2".into()),
        ..match succeeded("txn_2") {
            CanonicalEvent::BillingAttempt(a) => a,
            _ => unreachable!(),
        }
    });
    one(&db, "one-batch", "evt_txn_2", vec![next]).await;
    let view = db
        .subscription("one-batch", "sub_c")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(view.balances["collected"]["USD"], 9990);
    assert!(db.verify_ledger().await.unwrap().is_empty());
}

/// Retry rows are decided for a whole batch at once: the rows equal those of the same
/// events reconciled one by one, and a cycle paid in the batch ends recovered whichever of
/// its events came first.
#[tokio::test]
async fn a_batch_writes_the_retry_rows_its_events_write_one_by_one() {
    let (db, _) = db().await;
    let sources: Vec<SourceSettings> = ["batch", "single"]
        .iter()
        .map(|id| {
            serde_json::from_value(
                serde_json::json!({"id": id, "provider": "paynow", "secrets": ["pn"]}),
            )
            .unwrap()
        })
        .collect();
    let dunning = Dunning::new(
        &subsync::providers::Sources::from_settings(&sources).unwrap(),
        &sources,
    );
    let failed_at =
        |id: &str, sub: &str, secs: i64| match attempt(id, sub, AttemptStatus::Failed, None) {
            CanonicalEvent::BillingAttempt(a) => CanonicalEvent::BillingAttempt(BillingAttempt {
                attempted_at: Some(at(secs)),
                next_attempt_at: Some(at(secs + 86_400)),
                ..a
            }),
            _ => unreachable!(),
        };
    // Two failures of one cycle (the later-named one failed first), and a cycle that
    // failed and was then paid by an attempt whose id sorts first.
    let webhooks: Vec<Webhook> = vec![
        ("evt_a1".into(), vec![failed_at("a1", "sub_a", 0)]),
        ("evt_a2".into(), vec![failed_at("a2", "sub_a", -60)]),
        ("evt_b1".into(), vec![failed_at("b1", "sub_b", 0)]),
        (
            "evt_b0".into(),
            vec![attempt(
                "b0",
                "sub_b",
                AttemptStatus::Succeeded,
                Some((500, "USD")),
            )],
        ),
    ];
    apply_with(&db, "batch", &webhooks, &dunning).await;
    for webhook in &webhooks {
        apply_with(&db, "single", std::slice::from_ref(webhook), &dunning).await;
    }

    let rows = |source: &str| {
        let db = db.clone();
        let q = RetriesQuery {
            source_id: Some(source.into()),
            ..Default::default()
        };
        async move {
            let mut rows: Vec<_> = views::list(&db, &q)
                .await
                .unwrap()
                .into_iter()
                .map(|r| {
                    (
                        r.cycle_key,
                        r.attempt_id,
                        r.status,
                        r.first_failed_at,
                        r.due_at,
                        r.last_outcome,
                    )
                })
                .collect();
            rows.sort();
            rows
        }
    };
    let batch = rows("batch").await;
    assert_eq!(batch.len(), 2);
    let (a, b) = (&batch[0], &batch[1]);
    assert_eq!(
        (a.0.as_str(), a.1.as_str(), a.2.as_str()),
        ("sub_a-cycle", "a2", "provider_managed")
    );
    assert_eq!(
        a.3,
        at(-60),
        "the cycle failed first at the earlier failure"
    );
    assert_eq!(
        a.4,
        Some(at(-60 + 86_400)),
        "the provider's next attempt of the latest event"
    );
    assert_eq!((b.0.as_str(), b.2.as_str()), ("sub_b-cycle", "recovered"));
    assert_eq!(b.5.as_deref(), Some("paid: b0"));
    assert_eq!(rows("single").await, batch);
}
