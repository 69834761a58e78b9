//! Svix, and Appstle Subscriptions (which sends through Svix).
//!
//! Same scheme as Standard Webhooks (`{id}.{timestamp}.{body}`, HMAC-SHA256, `whsec_`
//! base64 keys, `v1,<base64>` space-separated list, ±300 s) under the headers `svix-id`,
//! `svix-timestamp`, `svix-signature`; each falls back to its `webhook-*` twin when absent,
//! as the Svix libraries do.

use secrecy::SecretString;

use crate::providers::schemes::standard::{HeaderNames, STANDARD_NAMES, StandardWebhooks};

pub(super) const SVIX_NAMES: HeaderNames = HeaderNames {
    id: "svix-id",
    timestamp: "svix-timestamp",
    signature: "svix-signature",
    fallback: Some(&STANDARD_NAMES),
};

pub fn new(
    secrets: &[SecretString],
    tolerance_secs: Option<u64>,
) -> Result<StandardWebhooks, String> {
    let keys = StandardWebhooks::whsec_keys(secrets)?;
    Ok(StandardWebhooks::with(
        keys,
        tolerance_secs,
        &SVIX_NAMES,
        "subscription.billing-success",
    ))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use axum::http::{HeaderMap, HeaderName, HeaderValue};
    use bytes::Bytes;

    use super::*;
    use crate::providers::contract::Connector;
    use crate::providers::{Accepted, Unverified, VerifyError};

    // SW-1 (svix-webhooks rust/src/webhooks.rs uses the same vector).
    const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const OTHER: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const TS: u64 = 1649367553;
    const BODY: &str = r#"{"email":"test@example.com","username":"test_user"}"#;
    const SIG: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

    fn verifier(secrets: &[&str]) -> StandardWebhooks {
        let secrets: Vec<SecretString> = secrets.iter().map(|s| SecretString::from(*s)).collect();
        new(&secrets, None).unwrap()
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn headers(prefix: &str, id: &str, ts: &str, sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in [("id", id), ("timestamp", ts), ("signature", sig)] {
            let name = HeaderName::from_bytes(format!("{prefix}-{name}").as_bytes()).unwrap();
            h.insert(name, HeaderValue::from_str(value).unwrap());
        }
        h
    }

    fn check(
        v: &StandardWebhooks,
        h: &HeaderMap,
        body: &str,
        now: u64,
    ) -> Result<Accepted, VerifyError> {
        let body = Bytes::from(body.to_owned());
        let request = Unverified {
            headers: h,
            body: &body,
            peer: None,
        };
        v.verify(&request, at(now))
    }

    #[test]
    fn svix_headers_and_webhook_fallback_verify_the_published_vector() {
        let v = verifier(&[SECRET]);
        let ts = TS.to_string();
        let ok = check(&v, &headers("svix", ID, &ts, SIG), BODY, TS).unwrap();
        assert_eq!(ok.event_id, ID);
        assert_eq!(
            ok.kept_headers,
            vec![("svix-timestamp".to_owned(), ts.clone())]
        );
        let ok = check(&v, &headers("webhook", ID, &ts, SIG), BODY, TS).unwrap();
        assert_eq!(ok.event_id, ID);
        // svix-* wins over webhook-* when both are present.
        let mut both = headers("svix", ID, &ts, SIG);
        both.extend(headers("webhook", ID, &ts, "v1,AAAA"));
        check(&v, &both, BODY, TS).unwrap();
        let mut both = headers("svix", ID, &ts, "v1,AAAA");
        both.extend(headers("webhook", ID, &ts, SIG));
        assert_eq!(
            check(&v, &both, BODY, TS).unwrap_err(),
            VerifyError::SignatureMismatch
        );
    }

    #[test]
    fn sign_round_trips_with_svix_names() {
        let v = verifier(&[SECRET]);
        let signed = v.sign(ID, BODY.as_bytes(), at(TS));
        assert_eq!(signed[0].0, "svix-id");
        assert_eq!(signed[2], ("svix-signature".to_owned(), SIG.to_owned()));
        let mut h = HeaderMap::new();
        for (n, val) in &signed {
            h.insert(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(val).unwrap(),
            );
        }
        check(&v, &h, BODY, TS + 10).unwrap();
        let sample = v.sample_body(&crate::providers::contract::Sample::new("evt_1", at(TS)));
        let value: serde_json::Value = serde_json::from_slice(&sample).unwrap();
        assert_eq!(value["type"], "subscription.billing-success");
    }

    #[test]
    fn tampered_wrong_secret_rotation_and_window() {
        let ts = TS.to_string();
        let h = headers("svix", ID, &ts, SIG);
        assert_eq!(
            check(
                &verifier(&[SECRET]),
                &h,
                &BODY.replace("test_user", "x"),
                TS
            )
            .unwrap_err(),
            VerifyError::SignatureMismatch
        );
        assert_eq!(
            check(&verifier(&[OTHER]), &h, BODY, TS).unwrap_err(),
            VerifyError::SignatureMismatch
        );
        check(&verifier(&[OTHER, SECRET]), &h, BODY, TS).unwrap();
        check(&verifier(&[SECRET, OTHER]), &h, BODY, TS).unwrap();
        let v = verifier(&[SECRET]);
        check(&v, &h, BODY, TS + 300).unwrap();
        check(&v, &h, BODY, TS - 300).unwrap();
        for now in [TS + 301, TS - 301] {
            assert_eq!(
                check(&v, &h, BODY, now).unwrap_err(),
                VerifyError::TimestampOutOfWindow
            );
        }
    }

    #[test]
    fn malformed_headers_are_rejected() {
        let v = verifier(&[SECRET]);
        let ts = TS.to_string();
        let mut h = headers("svix", ID, &ts, SIG);
        h.remove("svix-signature");
        assert_eq!(
            check(&v, &h, BODY, TS).unwrap_err(),
            VerifyError::MissingHeader("svix-signature")
        );
        h.insert("svix-signature", HeaderValue::from_static(""));
        assert_eq!(
            check(&v, &h, BODY, TS).unwrap_err(),
            VerifyError::MissingHeader("svix-signature")
        );
        let mut dup = headers("svix", ID, &ts, SIG);
        dup.append("svix-signature", HeaderValue::from_static(SIG));
        assert_eq!(
            check(&v, &dup, BODY, TS).unwrap_err(),
            VerifyError::MalformedHeader("svix-signature")
        );
        let garbage = headers("svix", ID, &ts, "v1,!!!not base64!!!");
        assert_eq!(
            check(&v, &garbage, BODY, TS).unwrap_err(),
            VerifyError::SignatureMismatch
        );
        let huge = format!("v1,{}", "A".repeat(10_000));
        assert_eq!(
            check(&v, &headers("svix", ID, &ts, &huge), BODY, TS).unwrap_err(),
            VerifyError::MalformedHeader("svix-signature")
        );
        let bad_ts = headers("svix", ID, "16493675x3", SIG);
        assert_eq!(
            check(&v, &bad_ts, BODY, TS).unwrap_err(),
            VerifyError::MalformedHeader("svix-timestamp")
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_headers_and_bodies_never_panic(
            prefix in proptest::bool::ANY,
            id in ".{0,64}", ts in ".{0,24}", sig in ".{0,300}",
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..512)
        ) {
            let v = verifier(&[SECRET]);
            let prefix = if prefix { "svix" } else { "webhook" };
            let mut h = HeaderMap::new();
            for (name, value) in [("id", id), ("timestamp", ts), ("signature", sig)] {
                if let Ok(value) = HeaderValue::from_str(&value) {
                    let name = HeaderName::from_bytes(format!("{prefix}-{name}").as_bytes()).unwrap();
                    h.insert(name, value);
                }
            }
            let body = Bytes::from(body);
            let request = Unverified { headers: &h, body: &body, peer: None };
            proptest::prop_assert!(v.verify(&request, at(TS)).is_err());
        }
    }
}
