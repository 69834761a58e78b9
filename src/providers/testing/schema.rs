//! A provider's own OpenAPI definitions, read by tests: payloads generated from a schema
//! and payloads checked against one. Self-contained (serde_json, chrono, uuid only), so the
//! integration tests can include this same file.
//!
//! - [`Spec::generate`]: a value with every required property, each from the schema's
//!   `const`, `example`, first `examples`, first `enum` value, the first non-null
//!   alternative of `anyOf`/`oneOf`, the merge of `allOf`, else its type's default (`""`-like
//!   text by `format`, `0` or the minimum, `false`, `[]` or `minItems` items, `null`).
//!   `$ref`s are resolved; optional properties are left out.
//! - [`Spec::validate`]: the errors of a value against a schema: `$ref`, `type` (also as a
//!   list), `const`, `enum`, `required`, `properties`, `additionalProperties` (as a
//!   schema), `items`, `allOf`, `anyOf` and `oneOf` (at least one alternative: OpenAPI
//!   unions may overlap), `minimum`/`maximum`/`exclusiveMinimum`, `minLength`/`maxLength`,
//!   and the formats `date-time`, `uuid`/`uuid4` and `flake-id` (decimal digits). Other
//!   keywords are annotations here.
#![allow(dead_code)]

use serde_json::{Map, Value};

/// One OpenAPI document.
pub struct Spec {
    doc: Value,
}

/// Deeper than this, a generated value is `null` (a recursive schema ends there).
const MAX_DEPTH: usize = 24;

impl Spec {
    pub fn parse(text: &str) -> Self {
        Self {
            doc: serde_json::from_str(text).expect("an OpenAPI document in JSON"),
        }
    }

    pub fn doc(&self) -> &Value {
        &self.doc
    }

    /// The value at a JSON pointer of the document.
    pub fn at(&self, pointer: &str) -> &Value {
        self.doc
            .pointer(pointer)
            .unwrap_or_else(|| panic!("no {pointer} in the definitions"))
    }

    /// The names of the document's `webhooks`.
    pub fn webhook_names(&self) -> Vec<String> {
        self.doc["webhooks"]
            .as_object()
            .map(|w| w.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The JSON request body schema of webhook `name` (its `post`).
    pub fn webhook_body(&self, name: &str) -> &Value {
        &self.doc["webhooks"][name]["post"]["requestBody"]["content"]["application/json"]["schema"]
    }

    /// The operation `method` of `path` (e.g. `"/v1/orders/{id}"`, `"get"`).
    pub fn operation(&self, path: &str, method: &str) -> &Value {
        let op = &self.doc["paths"][path][method];
        assert!(op.is_object(), "no {method} {path} in the definitions");
        op
    }

    /// The JSON request body schema of an operation.
    pub fn request_body(&self, path: &str, method: &str) -> &Value {
        &self.operation(path, method)["requestBody"]["content"]["application/json"]["schema"]
    }

    /// The JSON schema of an operation's answer with `status`.
    pub fn response(&self, path: &str, method: &str, status: &str) -> &Value {
        &self.operation(path, method)["responses"][status]["content"]["application/json"]["schema"]
    }

    /// A component schema by name.
    pub fn schema(&self, name: &str) -> &Value {
        let schema = &self.doc["components"]["schemas"][name];
        assert!(!schema.is_null(), "no schema {name} in the definitions");
        schema
    }

    /// The schema a `#/...` reference names.
    pub fn by_ref(&self, reference: &str) -> &Value {
        let pointer = reference
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("only local references: {reference}"));
        self.at(pointer)
    }

    /// `schema` with its `$ref`s followed.
    pub fn resolve<'a>(&'a self, mut schema: &'a Value) -> &'a Value {
        while let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
            schema = self.by_ref(reference);
        }
        schema
    }

    /// A value of `schema` with every required property (see the module doc).
    pub fn generate(&self, schema: &Value) -> Value {
        self.gen_at(schema, 0)
    }

    fn gen_at(&self, s: &Value, depth: usize) -> Value {
        if depth > MAX_DEPTH || !s.is_object() {
            return Value::Null;
        }
        if let Some(value) = s.get("const") {
            return value.clone();
        }
        if let Some(value) = s.get("example") {
            return value.clone();
        }
        if let Some(value) = s
            .get("examples")
            .and_then(Value::as_array)
            .and_then(|e| e.first())
        {
            return value.clone();
        }
        if let Some(reference) = s.get("$ref").and_then(Value::as_str) {
            return self.gen_at(self.by_ref(reference), depth + 1);
        }
        if let Some(value) = s
            .get("enum")
            .and_then(Value::as_array)
            .and_then(|e| e.first())
        {
            return value.clone();
        }
        if let Some(parts) = s.get("allOf").and_then(Value::as_array) {
            let mut merged = Value::Null;
            for part in parts {
                match (&mut merged, self.gen_at(part, depth + 1)) {
                    (Value::Object(into), Value::Object(from)) => into.extend(from),
                    (slot, value) => *slot = value,
                }
            }
            return merged;
        }
        for union in ["anyOf", "oneOf"] {
            if let Some(alternatives) = s.get(union).and_then(Value::as_array) {
                return alternatives
                    .iter()
                    .find(|a| a.get("type").and_then(Value::as_str) != Some("null"))
                    .map_or(Value::Null, |a| self.gen_at(a, depth + 1));
            }
        }
        let kind = match s.get("type") {
            Some(Value::String(kind)) => kind.as_str(),
            Some(Value::Array(kinds)) => kinds
                .iter()
                .filter_map(Value::as_str)
                .find(|k| *k != "null")
                .unwrap_or("null"),
            _ if s.get("properties").is_some() => "object",
            _ => "",
        };
        match kind {
            "object" => {
                let mut object = Map::new();
                let properties = s.get("properties");
                for name in s["required"].as_array().into_iter().flatten() {
                    let Some(name) = name.as_str() else { continue };
                    let property = properties.and_then(|p| p.get(name));
                    let value = property.map_or(Value::Null, |p| self.gen_at(p, depth + 1));
                    object.insert(name.to_owned(), value);
                }
                Value::Object(object)
            }
            "array" => {
                let n = s.get("minItems").and_then(Value::as_u64).unwrap_or(0);
                let item = s
                    .get("items")
                    .map_or(Value::Null, |i| self.gen_at(i, depth + 1));
                Value::Array((0..n).map(|_| item.clone()).collect())
            }
            "string" => {
                let text = match s.get("format").and_then(Value::as_str) {
                    Some("date-time") => "2025-01-10T08:00:00Z".to_owned(),
                    Some("date") => "2025-01-10".to_owned(),
                    Some("uuid" | "uuid4") => "9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d".to_owned(),
                    Some("flake-id") => "411486491630370816".to_owned(),
                    Some("email") => "customer@example.com".to_owned(),
                    Some("uri") => "https://example.com/".to_owned(),
                    _ => "text".to_owned(),
                };
                let min = s.get("minLength").and_then(Value::as_u64).unwrap_or(0) as usize;
                Value::String(format!("{text:x<min$}"))
            }
            "integer" | "number" => {
                let minimum = s.get("minimum").and_then(Value::as_i64);
                let exclusive = s
                    .get("exclusiveMinimum")
                    .and_then(Value::as_i64)
                    .map(|m| m + 1);
                Value::from(minimum.or(exclusive).unwrap_or(0).max(0))
            }
            "boolean" => Value::Bool(false),
            _ => Value::Null,
        }
    }

    /// The errors of `value` against `schema` (empty: valid), each with its JSON path.
    pub fn validate(&self, value: &Value, schema: &Value) -> Vec<String> {
        let mut errors = Vec::new();
        self.check(value, schema, "$", &mut errors, 0);
        errors
    }

    fn check(&self, v: &Value, s: &Value, at: &str, errors: &mut Vec<String>, depth: usize) {
        if depth > 4 * MAX_DEPTH {
            errors.push(format!("{at}: nested too deep"));
            return;
        }
        let Some(s) = s.as_object() else {
            if *s == Value::Bool(false) {
                errors.push(format!("{at}: not allowed"));
            }
            return;
        };
        if let Some(reference) = s.get("$ref").and_then(Value::as_str) {
            self.check(v, self.by_ref(reference), at, errors, depth + 1);
        }
        if let Some(expected) = s.get("const")
            && v != expected
        {
            errors.push(format!("{at}: {v} is not the constant {expected}"));
        }
        if let Some(values) = s.get("enum").and_then(Value::as_array)
            && !values.contains(v)
        {
            errors.push(format!(
                "{at}: {v} is not one of {}",
                Value::from(values.clone())
            ));
        }
        match s.get("type") {
            Some(Value::String(kind)) if !is_type(v, kind) => {
                errors.push(format!("{at}: {v} is not of type {kind}"));
            }
            Some(Value::Array(kinds))
                if !kinds
                    .iter()
                    .filter_map(Value::as_str)
                    .any(|k| is_type(v, k)) =>
            {
                errors.push(format!(
                    "{at}: {v} is not of type {}",
                    Value::from(kinds.clone())
                ));
            }
            _ => {}
        }
        for part in s
            .get("allOf")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            self.check(v, part, at, errors, depth + 1);
        }
        for union in ["anyOf", "oneOf"] {
            if let Some(alternatives) = s.get(union).and_then(Value::as_array) {
                let fits = alternatives.iter().any(|alternative| {
                    let mut theirs = Vec::new();
                    self.check(v, alternative, at, &mut theirs, depth + 1);
                    theirs.is_empty()
                });
                if !fits {
                    errors.push(format!("{at}: {v} fits no alternative of {union}"));
                }
            }
        }
        if let Value::Object(object) = v {
            for name in s
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(name) = name.as_str()
                    && !object.contains_key(name)
                {
                    errors.push(format!("{at}: required property {name} is missing"));
                }
            }
            let properties = s.get("properties").and_then(Value::as_object);
            for (name, value) in object {
                let path = format!("{at}.{name}");
                match properties.and_then(|p| p.get(name)) {
                    Some(property) => self.check(value, property, &path, errors, depth + 1),
                    None => {
                        if let Some(extra) = s.get("additionalProperties") {
                            self.check(value, extra, &path, errors, depth + 1);
                        }
                    }
                }
            }
        }
        if let (Value::Array(items), Some(schema)) = (v, s.get("items")) {
            for (i, item) in items.iter().enumerate() {
                self.check(item, schema, &format!("{at}[{i}]"), errors, depth + 1);
            }
        }
        if let Some(n) = v.as_f64() {
            let bound = |key: &str| s.get(key).and_then(Value::as_f64);
            if bound("minimum").is_some_and(|m| n < m)
                || bound("maximum").is_some_and(|m| n > m)
                || bound("exclusiveMinimum").is_some_and(|m| n <= m)
            {
                errors.push(format!("{at}: {n} is out of range"));
            }
        }
        if let Some(text) = v.as_str() {
            let length = text.chars().count() as u64;
            let bound = |key: &str| s.get(key).and_then(Value::as_u64);
            if bound("minLength").is_some_and(|m| length < m)
                || bound("maxLength").is_some_and(|m| length > m)
            {
                errors.push(format!("{at}: {text:?} has the wrong length"));
            }
            let valid = match s.get("format").and_then(Value::as_str) {
                Some("date-time") => chrono::DateTime::parse_from_rfc3339(text).is_ok(),
                Some("uuid" | "uuid4") => uuid::Uuid::parse_str(text).is_ok(),
                Some("flake-id") => !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()),
                _ => true,
            };
            if !valid {
                errors.push(format!("{at}: {text:?} is not of its format"));
            }
        }
    }
}

fn is_type(v: &Value, kind: &str) -> bool {
    match kind {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        _ => true,
    }
}

/// Sets `value` at a JSON pointer of `target` (each step must exist but the last).
pub fn set(target: &mut Value, pointer: &str, value: Value) {
    let (parent, key) = pointer.rsplit_once('/').expect("a JSON pointer");
    let parent = if parent.is_empty() {
        &mut *target
    } else {
        target
            .pointer_mut(parent)
            .unwrap_or_else(|| panic!("no {parent} to set {key} in"))
    };
    parent
        .as_object_mut()
        .unwrap_or_else(|| panic!("{pointer}: not in an object"))
        .insert(key.to_owned(), value);
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec() -> Spec {
        Spec::parse(
            &json!({"components": {"schemas": {
                "Status": {"type": "string", "enum": ["pending", "paid"]},
                "Thing": {"type": "object", "required": ["id", "status", "at", "n", "tags", "maybe"],
                    "properties": {
                        "id": {"type": "string", "format": "uuid4"},
                        "status": {"$ref": "#/components/schemas/Status"},
                        "at": {"type": "string", "format": "date-time"},
                        "n": {"type": "integer", "exclusiveMinimum": 0, "examples": [7]},
                        "tags": {"type": "array", "items": {"type": "string"}},
                        "maybe": {"anyOf": [{"type": "null"}, {"type": "boolean"}]},
                        "optional": {"type": "string"}
                    }}
            }}})
            .to_string(),
        )
    }

    #[test]
    fn generated_values_validate_and_checks_catch_each_kind_of_error() {
        let spec = spec();
        let thing = spec.schema("Thing");
        let value = spec.generate(thing);
        assert_eq!(
            value,
            json!({"id": "9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d", "status": "pending",
                "at": "2025-01-10T08:00:00Z", "n": 7, "tags": [], "maybe": false})
        );
        assert_eq!(spec.validate(&value, thing), Vec::<String>::new());
        let broken = [
            ("/id", json!("not-a-uuid")),
            ("/status", json!("refunded")),
            ("/at", json!("yesterday")),
            ("/n", json!(0)),
            ("/tags", json!([1])),
            ("/maybe", json!("yes")),
        ];
        for (pointer, bad) in broken {
            let mut value = value.clone();
            set(&mut value, pointer, bad);
            assert_eq!(spec.validate(&value, thing).len(), 1, "{pointer}");
        }
        let mut missing = value.clone();
        missing.as_object_mut().unwrap().remove("status");
        assert!(spec.validate(&missing, thing)[0].contains("required property status"));
    }
}
