//! Comparing the real ledger with its recomputation: which unit (a subscription, or an
//! attempt without one) each row and posting belongs to, and what differs per unit.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::{BOOKKEEPING, BalanceChange, Correction, Rows, STATE};
use crate::ledger::preview::Change;

/// Where a row or a posting belongs: its subscription, or, without one, its attempt.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Unit {
    Subscription(String),
    Attempt(String),
}

impl Unit {
    pub(super) fn ids(&self) -> (Option<String>, Option<String>) {
        match self {
            Unit::Subscription(s) => (Some(s.clone()), None),
            Unit::Attempt(a) => (None, Some(a.clone())),
        }
    }
}

/// Which unit each attempt belongs to: its recomputed subscription, else the one the
/// ledger has, else itself.
pub(super) struct Units {
    of_attempt: BTreeMap<String, Unit>,
    /// The latest event that set a recomputed row of each unit.
    latest: BTreeMap<Unit, i64>,
}

impl Units {
    pub(super) fn new(real: &Rows, scratch: &Rows) -> Self {
        let mut of_attempt = BTreeMap::new();
        for rows in [real, scratch] {
            for ((entity, id), row) in rows {
                if *entity != "billing_attempt" {
                    continue;
                }
                let unit = match row.get("subscription_id").and_then(Value::as_str) {
                    Some(s) if !s.is_empty() => Unit::Subscription(s.to_owned()),
                    _ => Unit::Attempt(id.clone()),
                };
                // The recomputed row (read second) wins.
                of_attempt.insert(id.clone(), unit);
            }
        }
        let mut units = Self {
            of_attempt,
            latest: BTreeMap::new(),
        };
        for ((entity, id), row) in scratch {
            let Some(event) = row.get("last_event_id").and_then(Value::as_i64) else {
                continue;
            };
            let latest = units
                .latest
                .entry(units.of_row(entity, id, row))
                .or_default();
            *latest = (*latest).max(event);
        }
        units
    }

    pub(super) fn latest_event(&self, unit: &Unit) -> Option<i64> {
        self.latest.get(unit).copied()
    }

    pub(super) fn attempt(&self, attempt_id: &str) -> Unit {
        self.of_attempt
            .get(attempt_id)
            .cloned()
            .unwrap_or_else(|| Unit::Attempt(attempt_id.to_owned()))
    }

    /// The unit of postings filed under `subscription_id` (and, under '', `attempt_id`).
    pub(super) fn of_entry(&self, subscription_id: &str, attempt_id: Option<&str>) -> Unit {
        match attempt_id {
            Some(a) if subscription_id.is_empty() => self.attempt(a),
            _ => Unit::Subscription(subscription_id.to_owned()),
        }
    }

    pub(super) fn of_row(&self, entity: &str, id: &str, row: &Value) -> Unit {
        match entity {
            "billing_attempt" => self.attempt(id),
            // A refund belongs where its payment does.
            "refund" => self.attempt(row.get("attempt_id").and_then(Value::as_str).unwrap_or(id)),
            _ => Unit::Subscription(id.to_owned()),
        }
    }

    /// Every unit compared: the subscriptions and the attempts without one.
    pub(super) fn all(&self, subscriptions: &BTreeSet<String>) -> BTreeSet<Unit> {
        let mut all: BTreeSet<Unit> = subscriptions
            .iter()
            .map(|s| Unit::Subscription(s.clone()))
            .collect();
        all.extend(
            self.of_attempt
                .values()
                .filter(|u| matches!(u, Unit::Attempt(_)))
                .cloned(),
        );
        all
    }
}

/// Balances per (unit, account, currency).
pub(super) type Balances = BTreeMap<(Unit, String, String), i64>;

/// The differences of rows and balances, per unit (units without one are left out).
pub(super) fn diff(
    units: &Units,
    real: &Rows,
    scratch: &Rows,
    real_balances: &Balances,
    scratch_balances: &Balances,
) -> BTreeMap<Unit, Correction> {
    let mut out: BTreeMap<Unit, Correction> = BTreeMap::new();
    let keys: BTreeSet<&(&'static str, String)> = real.keys().chain(scratch.keys()).collect();
    for key in keys {
        let (before, after) = (
            real.get(key).map(|r| state_of(key.0, r)),
            scratch.get(key).map(|r| state_of(key.0, r)),
        );
        if before != after {
            let row = scratch.get(key).or(real.get(key)).unwrap_or(&Value::Null);
            correction(&mut out, units.of_row(key.0, &key.1, row))
                .changes
                .push(Change {
                    entity: key.0,
                    id: key.1.clone(),
                    before,
                    after,
                });
        }
    }
    let keys: BTreeSet<&(Unit, String, String)> = real_balances
        .keys()
        .chain(scratch_balances.keys())
        .collect();
    for key in keys {
        let before = real_balances.get(key).copied().unwrap_or(0);
        let after = scratch_balances.get(key).copied().unwrap_or(0);
        if before != after {
            correction(&mut out, key.0.clone())
                .balances
                .push(BalanceChange {
                    account: key.1.clone(),
                    currency: key.2.clone(),
                    before,
                    after,
                });
        }
    }
    out
}

/// The unit's correction, empty until something is found.
pub(super) fn correction(all: &mut BTreeMap<Unit, Correction>, unit: Unit) -> &mut Correction {
    let (subscription_id, attempt_id) = unit.ids();
    all.entry(unit).or_insert_with(|| Correction {
        subscription_id,
        attempt_id,
        changes: Vec::new(),
        balances: Vec::new(),
        appended: 0,
        entry_ids: Vec::new(),
    })
}

/// A row's state: without its key and bookkeeping columns.
pub(super) fn state_of(entity: &str, row: &Value) -> Value {
    let mut row = row.clone();
    if let Value::Object(map) = &mut row {
        let id_column = STATE.iter().find(|s| s.0 == entity).map_or("", |s| s.2);
        for column in ["source_id", id_column].into_iter().chain(BOOKKEEPING) {
            map.remove(column);
        }
    }
    row
}
