//! Request budgets against the real PostgreSQL: one bucket per provider account shared by
//! every holder (two `Budget`s stand for two processes), dunning first, never overdrawn by
//! concurrent takers, and accounts derived from the configured sources without secrets.

use std::time::Duration;

use subsync::budget::{Budget, Budgets, Priority};
use subsync::config::DatabaseSettings;
use subsync::db::Db;

use crate::common::{self, TestConfig};

async fn db() -> Db {
    let settings = DatabaseSettings {
        url: common::fresh_database().await.into(),
        max_connections: 8,
        acquire_timeout_ms: 5000,
    };
    let db = Db::connect_lazy(&settings).unwrap();
    db.migrate().await.unwrap();
    db
}

#[tokio::test]
async fn dunning_takes_what_background_callers_leave_it() {
    let db = db().await;
    // One request per second: a bucket of 2, of which background callers leave 1.
    let sync = Budget::new(db.clone(), "stripe:acct".to_owned(), 1.0);
    let dunning = Budget::new(db.clone(), "stripe:acct".to_owned(), 1.0);

    assert_eq!(
        sync.try_take(Priority::Background).await.unwrap(),
        None,
        "full: 2 → 1"
    );
    let wait = sync
        .try_take(Priority::Background)
        .await
        .unwrap()
        .expect("the rest is dunning's");
    assert!(
        wait > Duration::from_millis(800),
        "{wait:?}: a token must refill first"
    );
    assert_eq!(
        dunning.try_take(Priority::Dunning).await.unwrap(),
        None,
        "1 → 0"
    );

    // The bucket is empty: dunning waits for one token, background for two.
    let dunning_wait = dunning.try_take(Priority::Dunning).await.unwrap().unwrap();
    let sync_wait = sync.try_take(Priority::Background).await.unwrap().unwrap();
    assert!(dunning_wait <= Duration::from_secs(1), "{dunning_wait:?}");
    assert!(sync_wait > Duration::from_millis(1800), "{sync_wait:?}");

    // `take` waits its turn and then takes.
    let started = tokio::time::Instant::now();
    dunning.take(Priority::Dunning).await.unwrap();
    assert!(started.elapsed() > Duration::from_millis(500));
}

#[tokio::test]
async fn concurrent_takers_never_overdraw_a_bucket() {
    let db = db().await;
    // Practically no refill: the bucket holds its burst of 2 and nothing more.
    let budget = Budget::new(db, "polar:acct".to_owned(), 0.001);
    let takes = (0..20).map(|_| budget.try_take(Priority::Dunning));
    let results = futures_util::future::join_all(takes).await;
    let taken = results.iter().filter(|r| matches!(r, Ok(None))).count();
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(taken, 2);
}

#[tokio::test]
async fn sources_of_one_account_share_its_budget_and_no_secret_names_it() {
    let mut config = TestConfig::new().await;
    let api = |token: &str, extra: &str| {
        format!(r#"api = {{ base_url = "https://api.stripe.com", token = "{token}"{extra} }}"#)
    };
    for (id, provider, api) in [
        ("a", "stripe", api("sk_test_one", "")),
        ("b", "stripe", api("sk_test_one", "")),
        ("c", "stripe", api("sk_test_two", "")),
        ("d", "shopify", api("shpat_x", "")),
        (
            "e",
            "shopify",
            api("shpat_y", ", requests_per_second = 2.0"),
        ),
    ] {
        config.extra += &format!(
            "[[sources]]\nid = \"{id}\"\nprovider = \"{provider}\"\nsecrets = [\"whsec_x\"]\n{api}\n"
        );
    }
    let settings = config.settings();
    let db = Db::connect_lazy(&settings.database).unwrap();
    let catalogue = common::catalogue(&settings);
    let budgets = Budgets::new(&settings, &db, &catalogue.sources);
    let account = |id: &str| budgets.get(id).map(|b| b.account().to_owned());
    assert_eq!(account("a"), account("b"), "same key: one account");
    assert_ne!(account("a"), account("c"));
    assert!(account("a").unwrap().starts_with("stripe:"));
    assert!(!account("a").unwrap().contains("sk_test"));
    assert_eq!(
        account("d"),
        None,
        "Shopify limits by query cost: no default budget"
    );
    assert!(account("e").is_some(), "a configured budget");
}
