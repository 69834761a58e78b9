//! A panic in one retry's client stays in that retry: counted as its failure and parked,
//! while the scheduler (one pass, or the running loop) goes on with the others; and a call
//! that kills the whole process every time is parked by the re-arm that follows.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::common::eventually;
use super::support::{
    Charging, Panicking, app_with, insert_retry, insert_unanswered, listed, stripe_source,
    with_clients,
};
use super::{invoice_event, send, t0};

#[tokio::test]
async fn a_panicking_client_parks_its_retry_and_the_scheduler_goes_on() {
    let sources = [
        stripe_source("boom", "http://127.0.0.1:1"),
        stripe_source("ok", "http://127.0.0.1:1"),
    ];
    let (config, app) = app_with(&sources).await;
    let t0 = t0() + chrono::Duration::hours(1);
    insert_retry(&config, "boom", "in_boom", t0).await;
    insert_retry(&config, "ok", "in_ok1", t0).await;
    insert_retry(&config, "ok", "in_ok2", t0 + chrono::Duration::minutes(6)).await;
    let charges = Charging::default();
    let scheduler = with_clients(
        &app,
        vec![
            ("boom", Arc::new(Panicking)),
            ("ok", Arc::new(charges.clone())),
        ],
    )
    .with_park_after_failures(2);
    let first = scheduler
        .run_once(t0)
        .await
        .expect("the panic stays in its retry");
    assert_eq!((first.called, first.parked), (2, 0));
    let row = listed(&app, "boom", "in_boom").await;
    assert_eq!(
        (row["status"].as_str(), row["consecutive_failures"].as_i64()),
        (Some("scheduled"), Some(1))
    );
    let second = scheduler
        .run_once(t0 + chrono::Duration::minutes(6))
        .await
        .unwrap();
    assert_eq!((second.called, second.parked), (2, 1));
    assert_eq!(
        charges.0.load(Ordering::SeqCst),
        2,
        "the other source's retries were made"
    );
    let row = listed(&app, "boom", "in_boom").await;
    assert_eq!(row["status"], "parked", "{row}");
    assert_eq!(
        row["last_error"],
        "the provider client panicked: test client panics on in_boom"
    );
    assert_eq!(listed(&app, "ok", "in_ok2").await["status"], "recovered");

    // The running loop too: a panic parks the retry (here at once) and the loop goes on.
    insert_retry(&config, "boom", "in_boom2", Utc::now()).await;
    insert_retry(&config, "ok", "in_ok3", Utc::now()).await;
    let looping = with_clients(
        &app,
        vec![
            ("boom", Arc::new(Panicking)),
            ("ok", Arc::new(charges.clone())),
        ],
    )
    .with_park_after_failures(1);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(looping.run(Duration::from_millis(50), shutdown.clone()));
    let parked = eventually(Duration::from_secs(10), || async {
        listed(&app, "boom", "in_boom2").await["status"] == "parked"
    })
    .await;
    assert!(parked);
    insert_retry(&config, "ok", "in_ok4", Utc::now()).await;
    let later = eventually(Duration::from_secs(10), || async {
        listed(&app, "ok", "in_ok4").await["status"] == "recovered"
    })
    .await;
    assert!(later && !task.is_finished(), "the loop outlived the panic");
    shutdown.cancel();
    task.await.unwrap();
    app.stop().await;
}

#[tokio::test]
async fn a_call_that_keeps_killing_the_process_is_parked_and_stays_parked_on_new_failures() {
    let (config, app) = app_with(&[stripe_source("stripe", "http://127.0.0.1:1")]).await;
    insert_unanswered(&config, "stripe", "in_crash", 4).await;
    insert_unanswered(&config, "stripe", "in_once", 0).await;
    let charges = Charging::default();
    let scheduler = with_clients(&app, vec![("stripe", Arc::new(charges.clone()))]);
    let pass = scheduler.run_once(Utc::now()).await.unwrap();
    assert_eq!(
        (pass.resent, pass.parked, pass.called),
        (1, 1, 1),
        "{pass:?}"
    );
    let crash = listed(&app, "stripe", "in_crash").await;
    assert_eq!(
        (crash["status"].as_str(), crash["retries_done"].as_i64()),
        (Some("parked"), Some(0))
    );
    let error = crash["last_error"].as_str().unwrap();
    assert!(error.starts_with("no answer recorded"), "{error}");
    assert_eq!(
        listed(&app, "stripe", "in_once").await["status"],
        "recovered",
        "re-sent once"
    );
    assert_eq!(charges.0.load(Ordering::SeqCst), 1);

    // The provider reports another failure of the cycle: still parked, for the operator.
    let t0 = t0();
    send(
        &app,
        "evt_crash",
        invoice_event(
            "evt_crash",
            "invoice.payment_failed",
            "in_crash",
            2,
            Some("insufficient_funds"),
            t0,
        ),
    )
    .await;
    let crash = listed(&app, "stripe", "in_crash").await;
    assert_eq!(
        (crash["status"].as_str(), crash["due_at"].as_str()),
        (Some("parked"), None),
        "{crash}"
    );
    assert_eq!(
        scheduler
            .run_once(Utc::now() + chrono::Duration::days(1))
            .await
            .unwrap()
            .called,
        0
    );

    // A payment reported by webhook recovers a parked retry.
    insert_unanswered(&config, "stripe", "in_paid", 4).await;
    scheduler.run_once(Utc::now()).await.unwrap();
    assert_eq!(listed(&app, "stripe", "in_paid").await["status"], "parked");
    send(
        &app,
        "evt_paid",
        invoice_event("evt_paid", "invoice.paid", "in_paid", 2, None, t0),
    )
    .await;
    assert_eq!(
        listed(&app, "stripe", "in_paid").await["status"],
        "recovered"
    );
    app.stop().await;
}
