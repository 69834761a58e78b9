//! A provider's own OpenAPI definitions, read by tests: the event types and bodies they
//! define, payloads generated from a schema, and payloads checked against one. Only
//! serde_json and `jsonschema` (dev-dependency), so the integration tests include this same
//! file.
//!
//! - [`Spec::generate`] / [`Spec::generate_with`]: a value with every required property,
//!   plus the properties named by the JSON pointers asked for. A value is the one given for
//!   its pointer (checked against its schema), else the schema's `example`, first
//!   `examples`, `const`, first non-null `enum` value or non-null `default`, else a default
//!   of its type: text by `format` (a fixed RFC 3339 time, a UUID, a flake id...), `0` or
//!   the minimum, `false`, `minItems` items. `oneOf`/`anyOf` take the discriminator's
//!   mapping when the discriminating property is given, else the first non-null
//!   alternative; `allOf` merges its parts; `$ref`s are followed.
//! - [`Spec::validate`]: JSON Schema 2020-12 validation by the `jsonschema` crate (formats
//!   checked: `date-time`, `uuid`, and `uuid4` and `flake-id` as Polar and PayNow define
//!   them), over the document read as OpenAPI 3.1 means it, with two readings made
//!   explicit: a `$ref` beside `type: [..., "null"]` is nullable (Rebilly writes nullable
//!   references so), and an object a schema declares properties for is closed — a property
//!   it does not declare is an error (`unevaluatedProperties: false` where a schema is
//!   used, never inside an `allOf` part), so a field we invented is caught.
#![allow(dead_code)]

use std::sync::OnceLock;

use serde_json::{Map, Value, json};

/// One OpenAPI document.
pub struct Spec {
    doc: Value,
    /// The document with the readings of [`Spec::validate`] made explicit, once.
    closed: OnceLock<Value>,
}

/// A pointer to fill: with this value, or (`None`) from the schema.
pub type Want<'a> = (&'a str, Option<Value>);

/// The time a `date-time` without an example gets.
pub const SOME_TIME: &str = "2019-08-24T14:15:22Z";

/// Deeper than this, a generated value is `null` (a recursive schema ends there).
const MAX_DEPTH: usize = 32;

impl Spec {
    pub fn parse(text: &str) -> Self {
        Self {
            doc: serde_json::from_str(text).expect("an OpenAPI document in JSON"),
            closed: OnceLock::new(),
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

    /// The `enum` of the schema at `pointer`, `null` left out.
    pub fn enum_at(&self, pointer: &str) -> Vec<&str> {
        self.resolve(self.at(pointer))["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("{pointer} has no enum"))
            .iter()
            .filter_map(Value::as_str)
            .collect()
    }

    /// The names of the document's `webhooks`.
    pub fn webhook_names(&self) -> Vec<String> {
        self.doc["webhooks"]
            .as_object()
            .map(|w| w.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The JSON request body schema of webhook `name` (its `post`; a request body given by
    /// reference is followed).
    pub fn webhook_body(&self, name: &str) -> &Value {
        let body = self.resolve(&self.doc["webhooks"][name]["post"]["requestBody"]);
        &body["content"]["application/json"]["schema"]
    }

    /// Every `(request body, event type)` listed by the `type_property` enum of the
    /// document's shared request bodies (`#/components/requestBodies`).
    pub fn body_event_types(&self, type_property: &str) -> Vec<(&str, &str)> {
        let Some(bodies) = self.doc["components"]["requestBodies"].as_object() else {
            return Vec::new();
        };
        bodies
            .iter()
            .flat_map(|(name, body)| {
                body["content"]["application/json"]["schema"]["properties"][type_property]["enum"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(move |t| (name.as_str(), t))
            })
            .collect()
    }

    /// The body schema of event type `event_type`: its webhook's, else the shared request
    /// body whose `type_property` enum lists it.
    pub fn event_body(&self, event_type: &str, type_property: &str) -> &Value {
        if self.doc["webhooks"][event_type].is_object() {
            return self.webhook_body(event_type);
        }
        let (name, _) = self
            .body_event_types(type_property)
            .into_iter()
            .find(|(_, t)| *t == event_type)
            .unwrap_or_else(|| panic!("{event_type} is not in the definitions"));
        &self.doc["components"]["requestBodies"][name]["content"]["application/json"]["schema"]
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

    /// Whether `schema` defines a property at `pointer` (through `$ref`s, `allOf`, `oneOf`,
    /// `anyOf` and array items).
    pub fn defines(&self, schema: &Value, pointer: &str) -> bool {
        let mut schemas = vec![schema];
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

    /// A value of `schema` with every required property (see the module doc).
    pub fn generate(&self, schema: &Value) -> Value {
        self.generate_with(schema, &[])
    }

    /// A value of `schema` with every required property and `wanted` filled.
    pub fn generate_with(&self, schema: &Value, wanted: &[Want<'_>]) -> Value {
        self.generate_at(schema, "", wanted, 0)
    }

    fn generate_at(&self, schema: &Value, at: &str, wanted: &[Want<'_>], depth: usize) -> Value {
        if depth > MAX_DEPTH {
            return Value::Null;
        }
        // A pointer given twice takes its last value.
        if let Some((_, Some(value))) = wanted.iter().rev().find(|(p, _)| *p == at) {
            let errors = self.validate(value, schema);
            assert!(errors.is_empty(), "{at} = {value}: {errors:?}");
            return value.clone();
        }
        let children: Vec<&str> = wanted
            .iter()
            .filter_map(|(p, _)| p.strip_prefix(at)?.strip_prefix('/'))
            .map(|rest| rest.split('/').next().unwrap_or_default())
            .collect();
        if children.is_empty()
            && let Some(value) = example(schema)
        {
            return value;
        }
        let schema = self.resolve(schema);
        if let Some(alternative) = self.alternative(schema, at, wanted) {
            return self.generate_at(alternative, at, wanted, depth + 1);
        }
        if let Some(parts) = schema.get("allOf").and_then(Value::as_array) {
            for child in &children {
                let pointer = format!("/{child}");
                assert!(
                    parts.iter().any(|p| self.defines(p, &pointer)),
                    "{at}/{child} is not in the definitions"
                );
            }
            let mut merged = Map::new();
            for part in parts {
                // Each part fills the wanted properties it defines.
                let ours: Vec<Want<'_>> = wanted
                    .iter()
                    .filter(
                        |(p, _)| match p.strip_prefix(at).and_then(|r| r.strip_prefix('/')) {
                            Some(rest) => {
                                let child = rest.split('/').next().unwrap_or_default();
                                self.defines(part, &format!("/{child}"))
                            }
                            None => true,
                        },
                    )
                    .cloned()
                    .collect();
                match self.generate_at(part, at, &ours, depth + 1) {
                    Value::Object(object) => merged.extend(object),
                    other if parts.len() == 1 => return other,
                    other => panic!("{at}: allOf part is not an object: {other}"),
                }
            }
            return Value::Object(merged);
        }
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
                let items = schema.get("items").unwrap_or(&Value::Null);
                (0..min.max(indexed))
                    .map(|i| self.generate_at(items, &format!("{at}/{i}"), wanted, depth + 1))
                    .collect()
            }
            Some("string") => {
                let text = match schema.get("format").and_then(Value::as_str) {
                    Some("date-time") => SOME_TIME,
                    Some("date") => "2019-08-24",
                    Some("uuid" | "uuid4") => "9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d",
                    Some("flake-id") => "411486491630370816",
                    Some("email") => "customer@example.com",
                    Some("uri") => "https://example.com/",
                    _ => "text",
                };
                let min = schema.get("minLength").and_then(Value::as_u64).unwrap_or(0) as usize;
                json!(format!("{text:x<min$}"))
            }
            Some("integer" | "number") => {
                let minimum = schema.get("minimum").and_then(Value::as_i64);
                let exclusive = schema
                    .get("exclusiveMinimum")
                    .and_then(Value::as_i64)
                    .map(|m| m + 1);
                json!(minimum.or(exclusive).unwrap_or(0).max(0))
            }
            Some("boolean") => json!(false),
            _ => Value::Null,
        }
    }

    /// The alternative of a `oneOf`/`anyOf` to generate: the discriminator's mapping for a
    /// given discriminating value, else the first non-null one.
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

    /// The errors of `value` against `schema` (empty: valid), each with its JSON pointer
    /// (see the module doc).
    pub fn validate(&self, value: &Value, schema: &Value) -> Vec<String> {
        let closed = self.closed.get_or_init(|| {
            let mut doc = self.doc.clone();
            self.read_as_openapi(&mut doc, false);
            doc
        });
        // The schema at the document's root, so its `#/...` references resolve; the
        // document's own keys are no JSON Schema keywords.
        let mut schema = schema.clone();
        self.read_as_openapi(&mut schema, true);
        let mut root = closed.clone();
        if let (Value::Object(root), Value::Object(schema)) = (&mut root, schema) {
            root.extend(schema);
        }
        let validator = jsonschema::draft202012::options()
            .should_validate_formats(true)
            .with_format("uuid4", |s: &str| is_uuid(s))
            .with_format("flake-id", |s: &str| {
                !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
            })
            .build(&root)
            .unwrap_or_else(|e| panic!("the definitions do not compile: {e}"));
        validator
            .iter_errors(value)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect()
    }

    /// Rewrites the schemas under `node` as [`Spec::validate`] reads them: a nullable
    /// `$ref` as `anyOf [ref, null]`, and `unevaluatedProperties: false` on every schema
    /// used as a value (`use_site`) that declares properties, unless it allows others.
    fn read_as_openapi(&self, node: &mut Value, use_site: bool) {
        let Value::Object(map) = node else {
            if let Value::Array(items) = node {
                for item in items {
                    self.read_as_openapi(item, false);
                }
            }
            return;
        };
        for (key, child) in map.iter_mut() {
            match key.as_str() {
                "properties" | "patternProperties" | "$defs" => {
                    if let Value::Object(children) = child {
                        for schema in children.values_mut() {
                            self.read_as_openapi(schema, key != "$defs");
                        }
                    }
                }
                "items" | "additionalProperties" | "unevaluatedProperties" | "not" => {
                    self.read_as_openapi(child, true)
                }
                "prefixItems" => {
                    if let Value::Array(children) = child {
                        for schema in children {
                            self.read_as_openapi(schema, true);
                        }
                    }
                }
                // Examples are data, not schemas.
                "example" | "examples" | "enum" | "const" | "default" => {}
                _ => self.read_as_openapi(child, false),
            }
        }
        let nullable_ref = map.contains_key("$ref")
            && map
                .get("type")
                .and_then(Value::as_array)
                .is_some_and(|t| t.contains(&json!("null")));
        if nullable_ref {
            let reference = map.remove("$ref").expect("checked");
            map.remove("type");
            map.insert(
                "anyOf".into(),
                json!([{"$ref": reference}, {"type": "null"}]),
            );
        }
        let open = ["additionalProperties", "unevaluatedProperties"]
            .iter()
            .any(|k| map.contains_key(*k));
        if use_site && !open && self.declares_properties(&Value::Object(map.clone()), 0) {
            map.insert("unevaluatedProperties".into(), json!(false));
        }
    }

    /// Whether `schema` (through `$ref`s and its parts) declares properties and nothing
    /// that allows others.
    fn declares_properties(&self, schema: &Value, depth: usize) -> bool {
        if depth > MAX_DEPTH {
            return false;
        }
        if schema
            .get("additionalProperties")
            .is_some_and(|a| a != &json!(false))
        {
            return false;
        }
        if schema.get("properties").is_some() {
            return true;
        }
        if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
            return self.declares_properties(self.by_ref(reference), depth + 1);
        }
        ["allOf", "anyOf", "oneOf"].iter().any(|key| {
            schema
                .get(*key)
                .and_then(Value::as_array)
                .is_some_and(|parts| parts.iter().any(|p| self.declares_properties(p, depth + 1)))
        })
    }
}

fn is_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups
            .iter()
            .all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()))
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
    use super::*;

    fn spec() -> Spec {
        Spec::parse(
            &json!({"components": {"schemas": {
                "Status": {"type": "string", "enum": ["pending", "paid"]},
                "Id": {"type": "string", "format": "uuid4"},
                "Base": {"type": "object", "required": ["id"],
                    "properties": {"id": {"$ref": "#/components/schemas/Id"}}},
                "Thing": {"allOf": [{"$ref": "#/components/schemas/Base"}, {
                    "type": "object", "required": ["status", "at", "n", "tags", "maybe"],
                    "properties": {
                        "status": {"$ref": "#/components/schemas/Status"},
                        "at": {"type": "string", "format": "date-time"},
                        "n": {"type": "integer", "exclusiveMinimum": 0, "examples": [7]},
                        "tags": {"type": "array", "items": {"type": "string"}},
                        "maybe": {"anyOf": [{"type": "null"}, {"type": "boolean"}]},
                        "parent": {"$ref": "#/components/schemas/Id", "type": ["string", "null"]},
                        "meta": {"type": "object", "additionalProperties": {"type": "string"}},
                        "optional": {"type": "string"}
                    }}]}
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
                "at": SOME_TIME, "n": 7, "tags": [], "maybe": false})
        );
        assert_eq!(spec.validate(&value, thing), Vec::<String>::new());
        // Allowed: a nullable reference set to null, a free map, an optional property.
        let mut fine = value.clone();
        set(&mut fine, "/parent", Value::Null);
        set(&mut fine, "/meta", json!({"any": "thing"}));
        set(&mut fine, "/optional", json!("x"));
        assert_eq!(spec.validate(&fine, thing), Vec::<String>::new());
        let broken = [
            ("/id", json!("not-a-uuid")),
            ("/status", json!("refunded")),
            ("/at", json!("yesterday")),
            ("/n", json!(0)),
            ("/tags", json!([1])),
            ("/maybe", json!("yes")),
            ("/parent", json!(5)),
            ("/invented", json!("field")),
        ];
        for (pointer, bad) in broken {
            let mut value = value.clone();
            set(&mut value, pointer, bad);
            let errors = spec.validate(&value, thing);
            assert!(!errors.is_empty(), "{pointer} passed");
        }
        let mut missing = value.clone();
        missing.as_object_mut().unwrap().remove("status");
        assert!(
            spec.validate(&missing, thing)[0].contains("status"),
            "{:?}",
            spec.validate(&missing, thing)
        );
    }

    #[test]
    fn wanted_pointers_are_filled_and_checked() {
        let spec = spec();
        let thing = spec.schema("Thing");
        let value = spec.generate_with(
            thing,
            &[("/optional", Some(json!("given"))), ("/meta/k", None)],
        );
        assert_eq!(value["optional"], "given");
        assert_eq!(value["meta"], json!({"k": "text"}));
        assert!(spec.defines(thing, "/tags/0"));
        assert!(!spec.defines(thing, "/invented"));
    }

    #[test]
    #[should_panic(expected = "/status")]
    fn a_wanted_value_outside_the_schema_is_refused() {
        let spec = spec();
        spec.generate_with(
            spec.schema("Thing"),
            &[("/status", Some(json!("refunded")))],
        );
    }
}
