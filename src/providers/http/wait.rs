//! How long a provider asks us to wait, bounded. `Retry-After` and Shopify's throttle cost
//! come from the other side of a trust boundary: a hostile or broken provider can ask for
//! `1e20` or ten trillion seconds, which would panic in `Duration::from_secs_f64` or
//! overflow the scheduler's `now + wait`. Every wait therefore passes through [`bound`], so
//! no caller ever sees more than [`MAX_RETRY_WAIT`].

use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};

/// The longest wait a provider can impose: one hour. The providers' documented rate-limit
/// windows are seconds to minutes (Shopify's bucket refills per second, Stripe and Polar
/// ask for seconds), so anything longer is a broken or hostile answer. Waiting an hour
/// and asking again costs one call; honouring the answer could park a retry for years.
pub const MAX_RETRY_WAIT: Duration = Duration::from_secs(3600);

/// `Retry-After` as RFC 9110 allows it: delay-seconds (`1*DIGIT`) or an HTTP-date (a date
/// in the past is 0), bounded by [`MAX_RETRY_WAIT`]. Anything else (`1e20`, `-1`, `1.5`,
/// garbage) is ignored.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(value.trim(), SystemTime::now())
}

fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits for a u64 is still a valid (very long) delay: the bound.
        let secs = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(bound(Duration::from_secs(secs)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(bound(at.duration_since(now).unwrap_or(Duration::ZERO)))
}

/// `wait`, at most [`MAX_RETRY_WAIT`].
fn bound(wait: Duration) -> Duration {
    wait.min(MAX_RETRY_WAIT)
}

/// A wait in seconds computed from a provider's numbers: negative is 0, anything past the
/// bound (infinity included) is the bound, NaN is no wait given.
pub(crate) fn bound_secs(secs: f64) -> Option<Duration> {
    if secs.is_nan() {
        return None;
    }
    Some(Duration::try_from_secs_f64(secs.max(0.0)).map_or(MAX_RETRY_WAIT, bound))
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    fn header(value: &'static str) -> Option<Duration> {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static(value));
        retry_after(&headers)
    }

    #[test]
    fn retry_after_parses_seconds() {
        assert_eq!(retry_after(&HeaderMap::new()), None);
        assert_eq!(header("7"), Some(Duration::from_secs(7)));
        assert_eq!(header(" 0 "), Some(Duration::ZERO));
    }

    #[test]
    fn retry_after_of_1e20_is_ignored_not_a_panic() {
        assert_eq!(header("1e20"), None);
    }

    #[test]
    fn retry_after_of_ten_trillion_seconds_is_clamped() {
        assert_eq!(header("10000000000000"), Some(MAX_RETRY_WAIT));
        assert_eq!(header("99999999999999999999999999"), Some(MAX_RETRY_WAIT));
        assert_eq!(MAX_RETRY_WAIT, Duration::from_secs(3600));
    }

    #[test]
    fn retry_after_other_than_digits_or_a_date_is_ignored() {
        for value in ["-1", "1.5", "+3", "NaN", "inf", "soon", ""] {
            assert_eq!(header(value), None, "{value:?}");
        }
    }

    #[test]
    fn retry_after_as_an_http_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480); // 07:28:00
        let date = "Wed, 21 Oct 2015 07:28:00 GMT";
        let at = |secs| now - Duration::from_secs(secs);
        assert_eq!(
            parse_retry_after(date, at(90)),
            Some(Duration::from_secs(90))
        );
        assert_eq!(parse_retry_after(date, at(0)), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after(date, at(10 * 86_400)),
            Some(MAX_RETRY_WAIT),
            "far ahead: bounded"
        );
        // The other two forms RFC 9110 tells recipients to accept.
        let rfc850 = "Wednesday, 21-Oct-15 07:28:00 GMT";
        assert_eq!(
            parse_retry_after(rfc850, at(5)),
            Some(Duration::from_secs(5))
        );
        let asctime = "Wed Oct 21 07:28:00 2015";
        assert_eq!(
            parse_retry_after(asctime, at(5)),
            Some(Duration::from_secs(5))
        );
    }

    #[test]
    fn retry_after_in_the_past_is_zero() {
        assert_eq!(
            header("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn computed_waits_are_bounded() {
        assert_eq!(bound_secs(2.0), Some(Duration::from_secs(2)));
        assert_eq!(bound_secs(-5.0), Some(Duration::ZERO));
        assert_eq!(bound_secs(1e20), Some(MAX_RETRY_WAIT));
        assert_eq!(bound_secs(f64::INFINITY), Some(MAX_RETRY_WAIT));
        assert_eq!(bound_secs(f64::NAN), None);
    }
}
