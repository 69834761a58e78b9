//! Shopify's Admin GraphQL API as both the retry client and the list client use it: the
//! token header, the API version, and the top-level `errors` (with `THROTTLED` as a rate
//! limit whose wait comes from the query cost).

use std::time::Duration;

use reqwest::header::HeaderName;
use reqwest::{Method, RequestBuilder};
use serde::Deserialize;
use serde_json::Value;

use super::attempt::Shape;
use crate::config::ApiSettings;
use crate::providers::http::{
    Cap, Credential, Endpoint, ProviderApiError, ProviderHttp, bound_secs, snippet,
};

/// Admin API version when `api.api_version` is not set: a supported stable version whose
/// schema (the subset in `tests/fixtures/shopify/`) has every field subsync reads. Shopify
/// serves a retired version as its oldest supported one, so a pinned old version silently
/// gets a newer schema; pin a newer one here when this one nears its end of support.
pub(crate) const DEFAULT_API_VERSION: &str = "2026-04";

/// A shop's Admin GraphQL API as configured: the token in `X-Shopify-Access-Token`, and
/// `api.api_version` (else [`DEFAULT_API_VERSION`]).
pub(crate) struct AdminApi {
    api: Endpoint,
    api_version: String,
}

impl AdminApi {
    pub(crate) fn new(api: &ApiSettings, http: ProviderHttp) -> Self {
        let token = Credential::Header(HeaderName::from_static("x-shopify-access-token"));
        Self {
            api_version: api
                .api_version
                .clone()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| DEFAULT_API_VERSION.to_owned()),
            api: Endpoint::new(api, http, token),
        }
    }

    /// Which fields tell a billing attempt's outcome in the configured version.
    pub(crate) fn shape(&self) -> Shape {
        Shape::of_version(&self.api_version)
    }

    /// The cap on a call's answer (`api.max_answer_bytes`).
    pub(crate) fn answer_cap(&self) -> Cap {
        self.api.answer_cap()
    }

    /// `POST {base_url}/admin/api/{api_version}/graphql.json` with `body` as JSON.
    pub(crate) fn graphql(&self, body: &Value) -> Result<RequestBuilder, ProviderApiError> {
        let route = ["admin", "api", &self.api_version, "graphql.json"];
        Ok(self.api.request(Method::POST, &route)?.json(body))
    }
}

/// The top-level `errors` of a GraphQL answer, with its `extensions` (the query cost).
#[derive(Deserialize)]
pub(crate) struct GraphQlErrors {
    #[serde(default)]
    errors: Vec<GraphQlError>,
    extensions: Option<Value>,
}

#[derive(Deserialize)]
struct GraphQlError {
    message: Option<String>,
    extensions: Option<Value>,
}

impl GraphQlErrors {
    /// What the errors say, `None` without any: a `THROTTLED` code is `RateLimited` (the
    /// wait being `Retry-After`, else [`throttle_wait`]); anything else is final, `Rejected`
    /// with `status` and the messages.
    pub(crate) fn error(
        &self,
        status: u16,
        retry_after: Option<Duration>,
    ) -> Option<ProviderApiError> {
        if self.errors.is_empty() {
            return None;
        }
        let throttled = self.errors.iter().any(|e| {
            e.extensions
                .as_ref()
                .and_then(|x| x.get("code"))
                .and_then(Value::as_str)
                == Some("THROTTLED")
        });
        if throttled {
            let retry_after = retry_after.or_else(|| throttle_wait(self.extensions.as_ref()));
            return Some(ProviderApiError::RateLimited { retry_after });
        }
        let messages: Vec<&str> = (self.errors.iter())
            .filter_map(|e| e.message.as_deref())
            .collect();
        Some(ProviderApiError::Rejected {
            status,
            message: snippet(&messages.join("; ")),
        })
    }
}

/// Seconds until the bucket holds the requested cost: (requestedQueryCost −
/// currentlyAvailable) / restoreRate from `extensions.cost`, rounded up.
pub(super) fn throttle_wait(extensions: Option<&Value>) -> Option<Duration> {
    let cost = extensions?.get("cost")?;
    let requested = cost.get("requestedQueryCost")?.as_f64()?;
    let throttle = cost.get("throttleStatus")?;
    let available = throttle.get("currentlyAvailable")?.as_f64()?;
    let rate = throttle.get("restoreRate")?.as_f64()?;
    if rate <= 0.0 {
        return None;
    }
    // A provider's numbers: bounded like `Retry-After` (absurd costs cannot park a retry).
    bound_secs(((requested - available) / rate).ceil())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn throttle_wait_needs_a_restore_rate() {
        let cost = |rate: f64| {
            json!({ "cost": { "requestedQueryCost": 10,
                "throttleStatus": { "currentlyAvailable": 0, "restoreRate": rate } } })
        };
        assert_eq!(
            throttle_wait(Some(&cost(100.0))),
            Some(Duration::from_secs(1))
        );
        assert_eq!(throttle_wait(Some(&cost(0.0))), None);
        assert_eq!(
            throttle_wait(Some(&cost(1e-300))),
            Some(crate::providers::http::MAX_RETRY_WAIT),
            "too long to wait: bounded"
        );
        assert_eq!(throttle_wait(Some(&json!({}))), None);
    }

    #[test]
    fn throttle_wait_of_absurd_costs_is_bounded() {
        let cost = |requested: f64, available: f64, rate: f64| {
            json!({ "cost": { "requestedQueryCost": requested,
                "throttleStatus": { "currentlyAvailable": available, "restoreRate": rate } } })
        };
        let max = Some(crate::providers::http::MAX_RETRY_WAIT);
        assert_eq!(throttle_wait(Some(&cost(1e15, 0.0, 1.0))), max);
        assert_eq!(throttle_wait(Some(&cost(1e300, -1e300, 1e-300))), max);
        assert_eq!(throttle_wait(Some(&cost(10.0, 0.0, 1e-300))), max);
        assert_eq!(
            throttle_wait(Some(&cost(1.0, 1e300, 1.0))),
            Some(Duration::ZERO)
        );
    }
}
