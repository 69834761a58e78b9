//! Rebilly's webhook definitions as a test tool: the copy of its OpenAPI document in
//! `tests/fixtures/rebilly/` (provenance in `tests/fixtures/README.md`), read with
//! `$ref`s resolved, to list the event types it defines, to generate a webhook body from
//! its schema and to check a body against it.
//!
//! Generation fills the required properties of every object, plus the properties named by
//! the JSON pointers asked for; a value is the one given for its pointer (the last one
//! given, checked against the schema), else the schema's `example`, first `examples`, `const`, first non-null
//! `enum` value or `default`, else a default of its type (`""`, `0`, `false`, a fixed
//! RFC 3339 time for `format: date-time`, `minItems` items). `oneOf` takes the
//! discriminator's mapping when the discriminating property is given, else its first
//! non-null alternative; `allOf` merges its parts.
//!
//! Checking is strict where the definitions are: types, `enum`, `const`, `required`,
//! `minItems`, RFC 3339 for `date-time`, and no property an object's `properties` does not
//! declare (unless `additionalProperties` allows it), so an invented field is caught.
//!
//! Self-contained (serde_json and chrono only): the integration tests include this file too.
#![allow(dead_code)]

use std::sync::OnceLock;

use serde_json::{Map, Value, json};

/// The copied definitions.
pub const FIXTURE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/rebilly/rebilly-webhooks.subset.json"
));

/// The time a `date-time` without an example gets.
pub const SOME_TIME: &str = "2019-08-24T14:15:22Z";

/// A pointer to fill: with this value, or (`None`) from the schema.
pub type Want<'a> = (&'a str, Option<Value>);

pub struct Definitions {
    doc: Value,
}

/// The parsed definitions, once.
pub fn definitions() -> &'static Definitions {
    static DEFINITIONS: OnceLock<Definitions> = OnceLock::new();
    DEFINITIONS.get_or_init(|| Definitions {
        doc: serde_json::from_str(FIXTURE).expect("the Rebilly definitions are JSON"),
    })
}

impl Definitions {
    /// The value at a JSON pointer of the document (`/components/schemas/Transaction`).
    pub fn at(&self, pointer: &str) -> &Value {
        self.doc
            .pointer(pointer)
            .unwrap_or_else(|| panic!("{pointer} is not in the Rebilly definitions"))
    }

    /// The `enum` of the schema at `pointer`, `null` left out.
    pub fn enum_at(&self, pointer: &str) -> Vec<&str> {
        self.resolve(self.at(pointer))["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("{pointer} has no enum"))
            .iter()
            .filter_map(Value::as_str)
            .collect()
    }

    /// The `#/webhooks` keys.
    pub fn webhook_keys(&self) -> Vec<&str> {
        self.doc["webhooks"]
            .as_object()
            .expect("#/webhooks")
            .keys()
            .map(String::as_str)
            .collect()
    }

    /// The webhook request bodies (`#/components/requestBodies/<name>`) by name.
    fn bodies(&self) -> &Map<String, Value> {
        self.doc["components"]["requestBodies"]
            .as_object()
            .expect("#/components/requestBodies")
    }

    /// The schema of a request body.
    fn body(&self, name: &str) -> &Value {
        &self.bodies()[name]["content"]["application/json"]["schema"]
    }

    /// The `eventType` enum of a request body.
    fn body_enum(&self, name: &str) -> Vec<&str> {
        self.body(name)["properties"]["eventType"]["enum"]
            .as_array()
            .map(|values| values.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    }

    /// Every `(request body, eventType)` of the bodies' `eventType` enums.
    pub fn event_type_enums(&self) -> Vec<(&str, &str)> {
        self.bodies()
            .keys()
            .flat_map(|name| {
                self.body_enum(name)
                    .into_iter()
                    .map(move |t| (name.as_str(), t))
            })
            .collect()
    }

    /// The name of the request body of `event_type`: its webhook's, else the body whose
    /// enum lists it.
    pub fn body_name(&self, event_type: &str) -> &str {
        if let Some(reference) =
            self.doc["webhooks"][event_type]["post"]["requestBody"]["$ref"].as_str()
        {
            return reference
                .strip_prefix("#/components/requestBodies/")
                .expect("a request body reference");
        }
        self.event_type_enums()
            .into_iter()
            .find(|(_, t)| *t == event_type)
            .map(|(name, _)| name)
            .unwrap_or_else(|| panic!("{event_type} is not in the Rebilly definitions"))
    }

    /// `schema` with its `$ref`s followed.
    pub fn resolve<'a>(&'a self, mut schema: &'a Value) -> &'a Value {
        while let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
            let pointer = reference.strip_prefix('#').expect("a local reference");
            schema = self
                .doc
                .pointer(pointer)
                .unwrap_or_else(|| panic!("{reference} does not resolve"));
        }
        schema
    }

    /// Whether the body of `event_type` defines a property at `pointer` (through
    /// `$ref`s, `allOf`, `oneOf` and array items).
    pub fn defines(&self, event_type: &str, pointer: &str) -> bool {
        let mut schemas = vec![self.body(self.body_name(event_type))];
        for segment in pointer.split('/').skip(1) {
            let mut next = Vec::new();
            while let Some(schema) = schemas.pop() {
                let schema = self.resolve(schema);
                for key in ["allOf", "oneOf", "anyOf"] {
                    if let Some(parts) = schema.get(key).and_then(Value::as_array) {
                        schemas.extend(parts);
                    }
                }
                if let Some(property) = schema.get("properties").and_then(|p| p.get(segment)) {
                    next.push(property);
                }
                if segment.parse::<usize>().is_ok()
                    && let Some(items) = schema.get("items")
                {
                    next.push(items);
                }
            }
            if next.is_empty() {
                return false;
            }
            schemas = next;
        }
        true
    }

    /// A body of `event_type` generated from its schema, with `wanted` filled (see the
    /// module documentation). The `eventType` is `event_type` itself.
    pub fn generate(&self, event_type: &str, wanted: &[Want<'_>]) -> Value {
        let schema = self.body(self.body_name(event_type));
        let mut body = self.generate_at(schema, "", wanted, 0);
        body["eventType"] = json!(event_type);
        body
    }

    fn generate_at(&self, schema: &Value, at: &str, wanted: &[Want<'_>], depth: usize) -> Value {
        assert!(depth < 32, "{at}: the schema nests too deep");
        let schema = self.resolve(schema);
        // A pointer given twice takes its last value.
        if let Some((_, Some(value))) = wanted.iter().rev().find(|(p, _)| *p == at) {
            let errors = self.errors(value, schema, at, true);
            assert!(errors.is_empty(), "{at} = {value}: {errors:?}");
            return value.clone();
        }
        if let Some(alternative) = self.alternative(schema, at, wanted) {
            return self.generate_at(alternative, at, wanted, depth + 1);
        }
        if let Some(parts) = schema.get("allOf").and_then(Value::as_array) {
            let mut merged = Map::new();
            for part in parts {
                match self.generate_at(part, at, wanted, depth + 1) {
                    Value::Object(object) => merged.extend(object),
                    other if parts.len() == 1 => return other,
                    other => panic!("{at}: allOf part is not an object: {other}"),
                }
            }
            return Value::Object(merged);
        }
        let children: Vec<&str> = wanted
            .iter()
            .filter_map(|(p, _)| p.strip_prefix(at)?.strip_prefix('/'))
            .map(|rest| rest.split('/').next().unwrap_or_default())
            .collect();
        let kind = primary_type(schema);
        let is_object = kind == Some("object") || schema.get("properties").is_some();
        if (children.is_empty() || !(is_object || kind == Some("array")))
            && let Some(value) = example(schema)
        {
            return value;
        }
        if is_object {
            let properties = schema.get("properties").and_then(Value::as_object);
            let mut names: Vec<&str> = required(schema);
            for child in children {
                if !names.contains(&child) {
                    names.push(child);
                }
            }
            let mut object = Map::new();
            for name in names {
                let property = properties
                    .and_then(|p| p.get(name))
                    .or_else(|| schema.get("additionalProperties").filter(|a| a.is_object()))
                    .unwrap_or_else(|| panic!("{at}/{name} is not in the definitions"));
                let value = self.generate_at(property, &format!("{at}/{name}"), wanted, depth + 1);
                object.insert(name.to_owned(), value);
            }
            return Value::Object(object);
        }
        match kind {
            Some("array") => {
                let min = schema.get("minItems").and_then(Value::as_u64).unwrap_or(0) as usize;
                let indexed = children
                    .iter()
                    .filter_map(|c| c.parse::<usize>().ok())
                    .map(|i| i + 1)
                    .max()
                    .unwrap_or(0);
                let items = schema.get("items").expect("array items");
                (0..min.max(indexed))
                    .map(|i| self.generate_at(items, &format!("{at}/{i}"), wanted, depth + 1))
                    .collect()
            }
            Some("string") if schema.get("format") == Some(&json!("date-time")) => json!(SOME_TIME),
            Some("string") => json!(""),
            Some("integer") | Some("number") => schema.get("minimum").cloned().unwrap_or(json!(0)),
            Some("boolean") => json!(false),
            _ => Value::Null,
        }
    }

    /// The alternative of a `oneOf`/`anyOf` to generate: the discriminator's mapping for
    /// a given discriminating value, else the first non-null one.
    fn alternative<'a>(
        &'a self,
        schema: &'a Value,
        at: &str,
        wanted: &[Want<'_>],
    ) -> Option<&'a Value> {
        let alternatives = schema
            .get("oneOf")
            .or(schema.get("anyOf"))
            .and_then(Value::as_array)?;
        if let Some(property) = schema
            .pointer("/discriminator/propertyName")
            .and_then(Value::as_str)
        {
            let pointer = format!("{at}/{property}");
            if let Some((_, Some(Value::String(value)))) =
                wanted.iter().rev().find(|(p, _)| *p == pointer)
            {
                let target = schema
                    .pointer(&format!("/discriminator/mapping/{value}"))
                    .and_then(Value::as_str)
                    .unwrap_or_else(|| panic!("{pointer}: {value} is not a mapped value"));
                return alternatives
                    .iter()
                    .find(|a| a.get("$ref").and_then(Value::as_str) == Some(target));
            }
        }
        alternatives
            .iter()
            .find(|a| self.resolve(a).get("type") != Some(&json!("null")))
    }

    /// Checks a body of `event_type` against its schema; the errors, by pointer.
    pub fn check(&self, event_type: &str, body: &Value) -> Result<(), Vec<String>> {
        let name = self.body_name(event_type);
        let mut errors = Vec::new();
        if body.get("eventType") != Some(&json!(event_type)) {
            errors.push(format!("/eventType: not {event_type}"));
        }
        // Two webhooks use a body whose eventType enum omits them (subscription-created,
        // orders-experimental-subscription-renewed): the webhook key stands for the enum.
        let mut rest = body.clone();
        if let Some(object) = rest.as_object_mut() {
            object.remove("eventType");
        }
        errors.extend(self.errors(&rest, self.body(name), "", true));
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// What is wrong with `value` against `schema`; `strict`: no undeclared property.
    fn errors(&self, value: &Value, schema: &Value, at: &str, strict: bool) -> Vec<String> {
        // `{$ref, type: [.., "null"]}`: the sibling type makes the reference nullable.
        if value.is_null() && allows_null(schema) {
            return Vec::new();
        }
        let schema = self.resolve(schema);
        let mut errors = Vec::new();
        if let Some(alternatives) = schema
            .get("oneOf")
            .or(schema.get("anyOf"))
            .and_then(Value::as_array)
        {
            let discriminated = schema
                .pointer("/discriminator/propertyName")
                .and_then(Value::as_str)
                .and_then(|p| value.get(p)?.as_str())
                .and_then(|v| {
                    let target = schema
                        .pointer(&format!("/discriminator/mapping/{v}"))?
                        .as_str()?;
                    alternatives
                        .iter()
                        .find(|a| a.get("$ref").and_then(Value::as_str) == Some(target))
                });
            match discriminated {
                Some(alternative) => errors.extend(self.errors(value, alternative, at, strict)),
                None => {
                    let tries: Vec<Vec<String>> = alternatives
                        .iter()
                        .map(|a| self.errors(value, a, at, strict))
                        .collect();
                    if !tries.iter().any(Vec::is_empty) {
                        errors.push(format!("{at}: matches no alternative: {tries:?}"));
                    }
                }
            }
        }
        if let Some(parts) = schema.get("allOf").and_then(Value::as_array) {
            for part in parts {
                errors.extend(self.errors(value, part, at, false));
            }
        }
        if let Some(types) = schema.get("type") {
            let fits = |t: &str| match t {
                "object" => value.is_object(),
                "array" => value.is_array(),
                "string" => value.is_string(),
                "integer" => value.is_i64() || value.is_u64(),
                "number" => value.is_number(),
                "boolean" => value.is_boolean(),
                "null" => value.is_null(),
                _ => false,
            };
            let ok = match types {
                Value::String(t) => fits(t),
                Value::Array(ts) => ts.iter().filter_map(Value::as_str).any(fits),
                _ => true,
            };
            if !ok {
                errors.push(format!("{at}: {value} is not of type {types}"));
                return errors;
            }
        }
        if let Some(values) = schema.get("enum").and_then(Value::as_array)
            && !values.contains(value)
        {
            errors.push(format!("{at}: {value} is not one of {values:?}"));
        }
        if let Some(constant) = schema.get("const")
            && constant != value
        {
            errors.push(format!("{at}: {value} is not {constant}"));
        }
        if let (Some("date-time"), Some(text)) =
            (schema.get("format").and_then(Value::as_str), value.as_str())
            && chrono::DateTime::parse_from_rfc3339(text).is_err()
        {
            errors.push(format!("{at}: {text:?} is not an RFC 3339 date-time"));
        }
        if let Value::Object(object) = value {
            for name in required(schema) {
                if !object.contains_key(name) {
                    errors.push(format!("{at}/{name}: required"));
                }
            }
            let declared = self.declared(schema);
            let additional = schema.get("additionalProperties");
            for (name, child) in object {
                let child_at = format!("{at}/{name}");
                match declared.iter().find(|(n, _)| n == name) {
                    Some((_, property)) => {
                        errors.extend(self.errors(child, property, &child_at, true))
                    }
                    None => match additional {
                        Some(extra @ Value::Object(_)) => {
                            errors.extend(self.errors(child, extra, &child_at, true))
                        }
                        Some(Value::Bool(false)) => errors.push(format!("{child_at}: not allowed")),
                        Some(Value::Bool(true)) => {}
                        _ if strict && !declared.is_empty() => {
                            errors.push(format!("{child_at}: not in the definitions"))
                        }
                        _ => {}
                    },
                }
            }
        }
        if let Value::Array(items) = value {
            let min = schema.get("minItems").and_then(Value::as_u64).unwrap_or(0);
            if (items.len() as u64) < min {
                errors.push(format!("{at}: fewer than {min} items"));
            }
            if let Some(item) = schema.get("items") {
                for (i, element) in items.iter().enumerate() {
                    errors.extend(self.errors(element, item, &format!("{at}/{i}"), true));
                }
            }
        }
        errors
    }

    /// The properties an object schema declares, its `allOf` parts' included.
    fn declared<'a>(&'a self, schema: &'a Value) -> Vec<(String, &'a Value)> {
        let schema = self.resolve(schema);
        let mut declared: Vec<(String, &Value)> = schema
            .get("properties")
            .and_then(Value::as_object)
            .map(|p| p.iter().map(|(k, v)| (k.clone(), v)).collect())
            .unwrap_or_default();
        for part in schema
            .get("allOf")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            declared.extend(self.declared(part));
        }
        declared
    }
}

/// The first non-null type of a schema.
fn primary_type(schema: &Value) -> Option<&str> {
    match schema.get("type")? {
        Value::String(t) => Some(t),
        Value::Array(types) => types
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null"),
        _ => None,
    }
}

fn allows_null(schema: &Value) -> bool {
    match schema.get("type") {
        Some(Value::String(t)) => t == "null",
        Some(Value::Array(types)) => types.contains(&json!("null")),
        _ => false,
    }
}

fn required(schema: &Value) -> Vec<&str> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// The value a schema suggests: `example`, first `examples`, `const`, first non-null
/// `enum` value, non-null `default`.
fn example(schema: &Value) -> Option<Value> {
    schema
        .get("example")
        .cloned()
        .or_else(|| schema.get("examples")?.as_array()?.first().cloned())
        .or_else(|| schema.get("const").cloned())
        .or_else(|| {
            schema
                .get("enum")?
                .as_array()?
                .iter()
                .find(|v| !v.is_null())
                .cloned()
        })
        .or_else(|| schema.get("default").filter(|d| !d.is_null()).cloned())
}
