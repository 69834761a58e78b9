//! Rebilly's definitions as a test tool: the copy of its OpenAPI document in
//! `tests/fixtures/rebilly/` (provenance in `tests/fixtures/README.md`), read with the
//! shared OpenAPI tool (`providers::testing::schema`): by event type, the types it lists,
//! a body of one generated from its schema, a body checked against it; and the orders
//! listing (`GET /subscriptions`), a request's query and a page checked against it; the
//! final actions' operations (`GET /subscriptions/{id}`, `POST /order-cancellations`,
//! `POST /order-pauses`), a request body checked and an answer generated.
// The integration tests use part of it.
#![allow(dead_code, unused_imports)]

use std::sync::OnceLock;

use serde_json::{Value, json};

// `super::schema` is `providers::testing::schema` both here and where the integration
// tests include this file beside that one.
use super::schema::Spec;
pub use super::schema::{SOME_TIME, Want};

/// The copied definitions.
pub const FIXTURE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/rebilly/rebilly-openapi.subset.json"
));

/// The listings' paths: orders, transactions.
pub const ORDERS: &str = "/subscriptions";
pub const TRANSACTIONS: &str = "/transactions";

/// The property of a webhook body that names its event type.
const TYPE: &str = "eventType";

pub struct Definitions(Spec);

/// The parsed definitions, once.
pub fn definitions() -> &'static Definitions {
    static DEFINITIONS: OnceLock<Definitions> = OnceLock::new();
    DEFINITIONS.get_or_init(|| Definitions(Spec::parse(FIXTURE)))
}

impl Definitions {
    /// The `enum` of the schema at `pointer`, `null` left out.
    pub fn enum_at(&self, pointer: &str) -> Vec<&str> {
        self.0.enum_at(pointer)
    }

    /// The `#/webhooks` keys.
    pub fn webhook_keys(&self) -> Vec<&str> {
        self.0.doc()["webhooks"]
            .as_object()
            .expect("#/webhooks")
            .keys()
            .map(String::as_str)
            .collect()
    }

    /// Every `(request body, eventType)` of the webhook bodies' `eventType` enums.
    pub fn event_type_enums(&self) -> Vec<(&str, &str)> {
        self.0.body_event_types(TYPE)
    }

    /// Whether the body of `event_type` defines a property at `pointer`.
    pub fn defines(&self, event_type: &str, pointer: &str) -> bool {
        self.0.defines(self.0.event_body(event_type, TYPE), pointer)
    }

    /// A body of `event_type` generated from its schema with `wanted` filled; its
    /// `eventType` is `event_type` itself.
    pub fn generate(&self, event_type: &str, wanted: &[Want<'_>]) -> Value {
        let mut body = self
            .0
            .generate_with(self.0.event_body(event_type, TYPE), wanted);
        body[TYPE] = json!(event_type);
        body
    }

    /// A listing (`GET /subscriptions`, `GetSubscriptionCollection`; `GET /transactions`,
    /// `GetTransactionCollection`).
    pub fn list_operation(&self, path: &str) -> &Value {
        self.0.operation(path, "get")
    }

    /// The problems of a request's query to the listing at `path` under the operation's
    /// parameters (empty: Rebilly accepts it). A value is read as its schema's type
    /// (`sort` is a comma-separated array, `form` style without `explode`).
    pub fn list_query_problems<'a>(
        &self,
        path: &str,
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Vec<String> {
        let parameters = self.list_operation(path)["parameters"]
            .as_array()
            .expect("parameters");
        let mut problems = Vec::new();
        for (name, text) in pairs {
            let parameter = parameters
                .iter()
                .map(|p| self.0.resolve(p))
                .find(|p| p["name"] == name && p["in"] == "query");
            let Some(parameter) = parameter else {
                problems.push(format!("{name}: not a parameter of GET {path}"));
                continue;
            };
            let schema = self.0.resolve(&parameter["schema"]);
            let value = match schema["type"].as_str() {
                Some("integer") => text.parse::<i64>().map_or(json!(text), |n| json!(n)),
                Some("array") => json!(text.split(',').collect::<Vec<_>>()),
                _ => json!(text),
            };
            for error in self.0.validate(&value, schema) {
                problems.push(format!("{name}={text}: {error}"));
            }
        }
        problems
    }

    /// The headers of the 200 answer of the listing at `path`.
    pub fn doc_response_headers(&self, path: &str) -> Vec<String> {
        let headers = &self.list_operation(path)["responses"]["200"]["headers"];
        headers
            .as_object()
            .map(|h| h.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// A value of the document, by JSON pointer.
    pub fn at(&self, pointer: &str) -> &Value {
        self.0.at(pointer)
    }

    /// The problems of a page of the listing at `path` (the 200 answer's body) under its
    /// schema.
    pub fn list_page_problems(&self, path: &str, page: &Value) -> Vec<String> {
        self.0.validate(page, self.0.response(path, "get", "200"))
    }

    /// The problems of a request body of the operation `method path` under its schema.
    pub fn request_problems(&self, path: &str, method: &str, body: &Value) -> Vec<String> {
        self.0.validate(body, self.0.request_body(path, method))
    }

    /// An answer of the operation `method path` with `status`, generated from its schema
    /// and `patch`ed (top-level fields), checked valid.
    pub fn answer(&self, path: &str, method: &str, status: &str, patch: &[(&str, Value)]) -> Value {
        let schema = self.0.response(path, method, status);
        let mut value = self.0.generate(schema);
        for (field, v) in patch {
            value[*field] = v.clone();
        }
        let errors = self.0.validate(&value, schema);
        assert!(errors.is_empty(), "{method} {path} {status}: {errors:#?}");
        value
    }

    /// Checks a body of `event_type` against its schema; the errors, by pointer.
    pub fn check(&self, event_type: &str, body: &Value) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        if body.get(TYPE) != Some(&json!(event_type)) {
            errors.push(format!("/{TYPE}: not {event_type}"));
        }
        // Two webhooks use a body whose eventType enum omits them (subscription-created,
        // orders-experimental-subscription-renewed): the webhook key stands for the enum.
        let mut rest = body.clone();
        if let Some(object) = rest.as_object_mut() {
            object.remove(TYPE);
        }
        let mut schema = self.0.resolve(self.0.event_body(event_type, TYPE)).clone();
        if let Some(required) = schema.get_mut("required").and_then(Value::as_array_mut) {
            required.retain(|r| r != TYPE);
        }
        errors.extend(self.0.validate(&rest, &schema));
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}
