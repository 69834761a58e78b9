//! Order independence, as a property over generated histories: any permutation of the
//! webhooks, each delivered up to three times, reconciled in batches of any size, leaves
//! the same ledger (attempt states, subscription states, balances per account and
//! currency) as the in-order, once-each history. Histories include partial refunds, full
//! refunds and refunds asking for more than the payment collected, and refunds that name
//! only their payment (as Stripe's do): held until the payment's link is made, at any
//! point of the deliveries, and booked the same then.

use crate::common;

use bytes::Bytes;
use chrono::{TimeZone, Utc};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use subsync::{
    canonical::{
        AttemptStatus, BillingAttempt, CanonicalEvent, PaymentLink, Refund, RefundStatus,
        SubscriptionChange, SubscriptionStatus,
    },
    config::{DatabaseSettings, ProviderKind},
    db::Db,
    envelope::Envelope,
    ledger::NewEvent,
    money::Money,
};

const ATTEMPT_STATUSES: [AttemptStatus; 6] = [
    AttemptStatus::Pending,
    AttemptStatus::RequiresAction,
    AttemptStatus::Skipped,
    AttemptStatus::Failed,
    AttemptStatus::Succeeded,
    AttemptStatus::Refunded,
];
const SUBSCRIPTION_STATUSES: [SubscriptionStatus; 5] = [
    SubscriptionStatus::Pending,
    SubscriptionStatus::Active,
    SubscriptionStatus::PastDue,
    SubscriptionStatus::Paused,
    SubscriptionStatus::Cancelled,
];
const CURRENCIES: [&str; 3] = ["JPY", "USD", "KWD"];

const REFUND_STATUSES: [RefundStatus; 3] = [
    RefundStatus::Pending,
    RefundStatus::Failed,
    RefundStatus::Succeeded,
];

/// One attempt: its amount, the statuses reported (each report with or without the
/// amount), its refunds (per mille of the amount — above 1000 asks for more than was
/// collected —, and the statuses reported), and whether they name the payment rather
/// than the attempt.
type AttemptHistory = (i64, Vec<(usize, bool)>, Vec<(i64, Vec<usize>)>, bool);

/// One subscription's history: its currency, attempts and changes (status, provider time,
/// currency?).
type SubHistory = (usize, Vec<AttemptHistory>, Vec<(usize, i64, bool)>);

fn history() -> impl Strategy<Value = Vec<SubHistory>> {
    let refund = (1i64..1200, prop::collection::vec(0..3usize, 1..3));
    let attempt = (
        1i64..100_000,
        prop::collection::vec((0..6usize, any::<bool>()), 1..5),
        prop::collection::vec(refund, 0..3),
        any::<bool>(),
    );
    let change = (0..5usize, 0i64..4, any::<bool>());
    let sub = (
        0..3usize,
        prop::collection::vec(attempt, 1..4),
        prop::collection::vec(change, 0..4),
    );
    prop::collection::vec(sub, 1..4)
}

/// The webhooks of a history, in history order, each with a unique event id. `unlinked`:
/// the refunds of the attempts whose refunds name their payment name only it (else they
/// come as the ledger completes them once the payment is linked).
fn webhooks(history: &[SubHistory], unlinked: bool) -> Vec<(String, CanonicalEvent)> {
    let mut out = Vec::new();
    for (s, (currency, attempts, changes)) in history.iter().enumerate() {
        let (sub, currency) = (format!("sub{s}"), CURRENCIES[*currency]);
        for (a, (amount, reports, refunds, by_payment)) in attempts.iter().enumerate() {
            for (status, with_amount) in reports {
                let status = ATTEMPT_STATUSES[*status];
                let event = CanonicalEvent::BillingAttempt(BillingAttempt {
                    attempt_id: format!("{sub}-a{a}"),
                    subscription_id: Some(sub.clone()),
                    cycle_id: Some(format!("{sub}-c{a}")),
                    status,
                    // What the provider says about one state is the same every time.
                    provider_status: format!("{status:?}"),
                    amount: with_amount.then(|| Money::from_minor(*amount, currency).unwrap()),
                    error_code: (status == AttemptStatus::Failed).then(|| "do_not_honor".into()),
                    error_message: None,
                    attempted_at: Some(Utc.timestamp_opt(1_700_000_000, 0).unwrap()),
                    next_attempt_at: None,
                    attempt_count: None,
                    idempotency_key: None,
                });
                out.push((format!("evt{}", out.len()), event));
            }
            for (r, (per_mille, reports)) in refunds.iter().enumerate() {
                for status in reports {
                    let status = REFUND_STATUSES[*status];
                    let event = CanonicalEvent::Refund(Refund {
                        refund_id: format!("{sub}-a{a}-r{r}"),
                        attempt_id: (!by_payment || !unlinked).then(|| format!("{sub}-a{a}")),
                        payment_ref: (*by_payment && unlinked).then(|| format!("pay-{sub}-a{a}")),
                        subscription_id: (*by_payment && !unlinked).then(|| sub.clone()),
                        cycle_id: (*by_payment && !unlinked).then(|| format!("{sub}-c{a}")),
                        status,
                        provider_status: format!("{status:?}"),
                        amount: Money::from_minor((amount * per_mille / 1000).max(1), currency)
                            .unwrap(),
                        refunded_at: Some(Utc.timestamp_opt(1_700_000_100 + r as i64, 0).unwrap()),
                    });
                    out.push((format!("evt{}", out.len()), event));
                }
            }
        }
        for (status, time, with_currency) in changes {
            let status = SUBSCRIPTION_STATUSES[*status];
            let event = CanonicalEvent::Subscription(SubscriptionChange {
                subscription_id: sub.clone(),
                status,
                provider_status: format!("{status:?}"),
                currency: with_currency.then(|| currency.to_owned()),
                customer_id: None,
                current_period_end: None,
                // Times repeat on purpose: ties must still resolve one way.
                updated_at: Some(Utc.timestamp_opt(1_700_000_000 + time, 0).unwrap()),
                version: None,
            });
            out.push((format!("evt{}", out.len()), event));
        }
    }
    out
}

/// The payments the refunds name, with the attempt each paid.
fn links(history: &[SubHistory]) -> Vec<(String, PaymentLink)> {
    let mut out = Vec::new();
    for (s, (_, attempts, _)) in history.iter().enumerate() {
        for (a, (.., by_payment)) in attempts.iter().enumerate() {
            if *by_payment {
                let link = PaymentLink {
                    attempt_id: format!("sub{s}-a{a}"),
                    subscription_id: Some(format!("sub{s}")),
                    cycle_id: Some(format!("sub{s}-c{a}")),
                };
                out.push((format!("pay-sub{s}-a{a}"), link));
            }
        }
    }
    out
}

/// Makes every link whose payment has refunds waiting (as the lookup role would).
async fn link(db: &Db, source: &str, links: &[(String, PaymentLink)]) {
    for (payment, link) in links {
        let dunning = Default::default();
        db.apply_payment_link(source, payment, link, &dunning)
            .await
            .unwrap();
    }
}

async fn apply(db: &Db, source: &str, batch: &[&(String, CanonicalEvent)]) {
    let envelopes: Vec<Envelope> = batch
        .iter()
        .map(|(id, _)| Envelope {
            source_id: source.into(),
            provider: ProviderKind::Standard,
            event_id: id.clone(),
            received_at: Utc.timestamp_opt(1_700_000_000, 0).unwrap(),
            content_type: None,
            headers: vec![],
            body: Bytes::from_static(b"{}"),
        })
        .collect();
    let events: Vec<NewEvent<'_>> = batch
        .iter()
        .zip(&envelopes)
        .map(|((_, event), envelope)| NewEvent {
            envelope,
            event_type: "test",
            events: std::slice::from_ref(event),
        })
        .collect();
    db.reconcile(&events, &Default::default()).await.unwrap();
}

#[test]
fn any_order_and_duplication_gives_the_in_order_ledger() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(async {
        let url = common::fresh_database().await;
        let db = Db::connect_lazy(&DatabaseSettings {
            url: url.into(),
            max_connections: 4,
            acquire_timeout_ms: 5000,
        })
        .unwrap();
        db.migrate().await.unwrap();
        db
    });
    let mut runner = TestRunner::new(Config {
        cases: 40,
        ..Config::default()
    });
    let case = std::sync::atomic::AtomicUsize::new(0);
    // The history, then a shuffle key, copies (1..=3) and a batch size per webhook, and
    // after how many batches the payments' links are made.
    let strategy = history().prop_flat_map(|h| {
        let n = webhooks(&h, true).len();
        let per_webhook = (any::<u32>(), 1..=3usize, 1..=8usize);
        (Just(h), prop::collection::vec(per_webhook, n), 0..=n)
    });
    runner
        .run(&strategy, |(history, shuffle, link_after)| {
            let case = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (events, unlinked) = (webhooks(&history, false), webhooks(&history, true));
            // Delivery order: every copy gets its own shuffle key.
            let mut deliveries: Vec<(u64, &(String, CanonicalEvent))> = Vec::new();
            for (i, (event, (key, copies, _))) in unlinked.iter().zip(&shuffle).enumerate() {
                for c in 0..*copies {
                    deliveries.push((
                        u64::from(*key)
                            .wrapping_mul(2654435761)
                            .wrapping_add((i * 7 + c) as u64),
                        event,
                    ));
                }
            }
            deliveries.sort_by_key(|(k, _)| *k);
            let (reference, shuffled) = (format!("ref{case}"), format!("perm{case}"));
            let links = links(&history);
            let (expected, actual) = rt.block_on(async {
                for event in &events {
                    apply(&db, &reference, &[event]).await;
                }
                let mut rest: Vec<&(String, CanonicalEvent)> =
                    deliveries.iter().map(|(_, e)| *e).collect();
                let mut sizes = shuffle.iter().map(|(_, _, size)| *size).cycle();
                let mut batches = 0;
                while !rest.is_empty() {
                    if batches == link_after {
                        link(&db, &shuffled, &links).await;
                    }
                    let take = sizes.next().unwrap().min(rest.len());
                    let batch: Vec<_> = rest.drain(..take).collect();
                    apply(&db, &shuffled, &batch).await;
                    batches += 1;
                }
                // The links of payments whose refunds came after the first round.
                link(&db, &shuffled, &links).await;
                let subs: Vec<String> = (0..history.len()).map(|s| format!("sub{s}")).collect();
                (
                    common::snapshot(&db, &reference, &subs).await,
                    common::snapshot(&db, &shuffled, &subs).await,
                )
            });
            prop_assert_eq!(expected, actual);
            Ok(())
        })
        .unwrap();
    assert!(rt.block_on(db.verify_ledger()).unwrap().is_empty());
}
