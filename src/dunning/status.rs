//! The status of a retry row, as one type instead of strings scattered through SQL binds:
//! the compiler then checks every place that decides a status. The database keeps the
//! same words (the `retries_status_check` constraint lists them).

/// Where a cycle's retry stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryStatus {
    /// A retry call is due at `due_at`.
    Scheduled,
    /// A call was made (or is being made); its outcome is awaited.
    InFlight,
    /// Needs a new payment method or a completed challenge.
    AwaitingCustomer,
    /// The provider retries itself (PayNow, Rebilly): tracked only.
    ProviderManaged,
    /// The cycle was paid.
    Recovered,
    /// Nothing left to do without a call (skipped, contract ended, not eligible).
    Completed,
    /// Out of tries or time: the final action applies.
    Exhausted,
    /// Never retry (hard decline): the final action applies.
    Stopped,
    /// Calls kept failing inside subsync: waits for an operator to resume it.
    Parked,
}

impl RetryStatus {
    pub const ALL: [RetryStatus; 9] = [
        RetryStatus::Scheduled,
        RetryStatus::InFlight,
        RetryStatus::AwaitingCustomer,
        RetryStatus::ProviderManaged,
        RetryStatus::Recovered,
        RetryStatus::Completed,
        RetryStatus::Exhausted,
        RetryStatus::Stopped,
        RetryStatus::Parked,
    ];

    /// The statuses of a retry still open (a payment recovers it).
    pub const OPEN: [RetryStatus; 5] = [
        RetryStatus::Scheduled,
        RetryStatus::InFlight,
        RetryStatus::AwaitingCustomer,
        RetryStatus::ProviderManaged,
        RetryStatus::Parked,
    ];

    /// The word stored in `retries.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryStatus::Scheduled => "scheduled",
            RetryStatus::InFlight => "in_flight",
            RetryStatus::AwaitingCustomer => "awaiting_customer",
            RetryStatus::ProviderManaged => "provider_managed",
            RetryStatus::Recovered => "recovered",
            RetryStatus::Completed => "completed",
            RetryStatus::Exhausted => "exhausted",
            RetryStatus::Stopped => "stopped",
            RetryStatus::Parked => "parked",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == s)
    }
}

impl std::fmt::Display for RetryStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_and_are_distinct() {
        let words: std::collections::HashSet<_> =
            RetryStatus::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(words.len(), RetryStatus::ALL.len());
        for status in RetryStatus::ALL {
            assert_eq!(RetryStatus::parse(status.as_str()), Some(status));
            assert_eq!(status.to_string(), status.as_str());
        }
        assert_eq!(RetryStatus::parse("Parked"), None);
    }
}
