//! A digest of an SDK's generated TypeScript declarations (Stripe's: `types[name]` =
//! `interface`/`object_type` with `properties` {`type` text, `optional`, `nullable`,
//! `enum`, `enum_open`, `refs`}, `enum` with `values` and `open`, `alias` with `type`;
//! `operations[]`), read by tests: values checked against a type and generated from one.
//! Self-contained (serde_json only).
//!
//! - [`Digest::validate`]: every property name known to the interface (and those it
//!   `extends`; an index signature `[key: string]` admits any name), every non-optional
//!   property present, `null` only where nullable, enum words in `values`/`enum` unless the
//!   enum is open (`open`/`enum_open`: the SDK adds `OtherString`), and the type text
//!   followed: unions (`|`), `null`, `string`, `number`, `boolean`, literals (`'paid'`,
//!   `true`), `Array<T>`, `Partial<T>` (every property optional), `Emptyable<T>` and
//!   `ApiList<T>` (their single parameter `T`), `{[key: string]: T}`, and names through
//!   `refs`. A type outside the digest (`EXTERNAL`) admits anything; so do `any`/`unknown`.
//! - [`Digest::validate_form`]: the same for form-encoded parameters (a query string or an
//!   `application/x-www-form-urlencoded` body): `a[b]` is a nested object, `a[]`/`a[0]` an
//!   array, and a text stands for a number or boolean where the type says so.
//! - [`Digest::generate`]: a value with every non-optional property: `null` where
//!   nullable, else the first non-null alternative: a literal, the first enum word, `""`,
//!   `0`, `false`, `[]`, `{}`, a nested interface generated the same way.
#![allow(dead_code)]

use std::collections::BTreeMap;

use serde_json::{Map, Value};

pub struct Digest {
    doc: Value,
}

/// Deeper than this a generated value is `null` and a check stops.
const MAX_DEPTH: usize = 24;

/// A parsed type expression.
#[derive(Debug, Clone)]
enum Ty {
    Null,
    Str,
    Num,
    Bool,
    Void,
    Any,
    Lit(Value),
    Array(Box<Ty>),
    Partial(Box<Ty>),
    /// `{[key: string]: T}`.
    Map(Box<Ty>),
    /// A type of the digest, with the binding of its parameter `T` (`ApiList<T>`).
    Named(String, Option<Box<Ty>>),
    External(String),
    Union(Vec<Ty>),
}

/// Parses type text `text`, resolving names through `refs` and the parameter `T` to `bound`.
fn parse(text: &str, refs: &Map<String, Value>, bound: Option<&Ty>) -> Ty {
    let alternatives = split_top(text, '|');
    if alternatives.len() > 1 {
        return Ty::Union(alternatives.iter().map(|a| parse(a, refs, bound)).collect());
    }
    let text = text.trim();
    if let Some((generic, inner)) = text
        .strip_suffix('>')
        .and_then(|t| t.split_once('<'))
        .filter(|(g, _)| !g.contains(['{', '\'']))
    {
        let inner = parse(inner, refs, bound);
        return match generic.trim() {
            "Array" => Ty::Array(Box::new(inner)),
            "Partial" => Ty::Partial(Box::new(inner)),
            name => Ty::Named(resolve_name(name, refs), Some(Box::new(inner))),
        };
    }
    if let Some(body) = text.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
        // `{[key: string]: T;}`: the value type after the index signature.
        let value = body
            .split_once("]:")
            .map_or("unknown", |(_, v)| v.trim().trim_end_matches(';'));
        return Ty::Map(Box::new(parse(value, refs, bound)));
    }
    if let Some(word) = text.strip_prefix('\'').and_then(|t| t.strip_suffix('\'')) {
        return Ty::Lit(Value::from(word));
    }
    match text {
        "null" => Ty::Null,
        "string" => Ty::Str,
        "number" => Ty::Num,
        "boolean" => Ty::Bool,
        "true" => Ty::Lit(Value::Bool(true)),
        "false" => Ty::Lit(Value::Bool(false)),
        "void" | "undefined" => Ty::Void,
        "any" | "unknown" => Ty::Any,
        "T" if bound.is_some() => bound.cloned().unwrap_or(Ty::Any),
        name => match refs.get(name).and_then(Value::as_str) {
            Some(q) if q.starts_with("EXTERNAL") => Ty::External(name.to_owned()),
            Some(q) => Ty::Named(q.to_owned(), None),
            None => Ty::Named(name.to_owned(), None),
        },
    }
}

fn resolve_name(name: &str, refs: &Map<String, Value>) -> String {
    match refs.get(name).and_then(Value::as_str) {
        Some(q) if !q.starts_with("EXTERNAL") => q.to_owned(),
        _ => name.to_owned(),
    }
}

/// `text` split at `sep` outside brackets and quotes.
fn split_top(text: &str, sep: char) -> Vec<&str> {
    let (mut depth, mut quoted, mut start, mut parts) = (0i32, false, 0, Vec::new());
    for (i, c) in text.char_indices() {
        match c {
            '\'' => quoted = !quoted,
            '<' | '{' | '(' | '[' if !quoted => depth += 1,
            '>' | '}' | ')' | ']' if !quoted => depth -= 1,
            c if c == sep && depth == 0 && !quoted => {
                parts.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// How a check reads scalars: JSON, or form-encoded text.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Json,
    Form,
}

impl Digest {
    pub fn parse(text: &str) -> Self {
        Self {
            doc: serde_json::from_str(text).expect("a types digest in JSON"),
        }
    }

    pub fn doc(&self) -> &Value {
        &self.doc
    }

    /// Type `name` of the digest.
    pub fn ty(&self, name: &str) -> &Value {
        let ty = &self.doc["types"][name];
        assert!(ty.is_object(), "no type {name} in the digest");
        ty
    }

    /// The words of enum `name`.
    pub fn enum_values(&self, name: &str) -> Vec<String> {
        self.ty(name)["values"]
            .as_array()
            .unwrap_or_else(|| panic!("{name} is not an enum"))
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    }

    /// The properties of interface `name`, those of the interfaces it extends first.
    pub fn properties(&self, name: &str) -> BTreeMap<String, Value> {
        let ty = self.ty(name);
        let mut all = BTreeMap::new();
        for parent in ty["extends"].as_array().into_iter().flatten() {
            if let Some(parent) = parent.as_str() {
                all.extend(self.properties(parent));
            }
        }
        for (key, prop) in ty["properties"].as_object().into_iter().flatten() {
            all.insert(key.clone(), prop.clone());
        }
        all
    }

    /// The operation `method` `path` (the SDK's path, `{id}` for the resource id).
    pub fn operation(&self, method: &str, path: &str) -> &Value {
        self.doc["operations"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|op| op["http_method"] == method && op["path"] == path)
            .unwrap_or_else(|| panic!("no {method} {path} in the digest"))
    }

    /// The errors of `value` against type `name` (empty: valid), each with its JSON path.
    pub fn validate(&self, value: &Value, name: &str) -> Vec<String> {
        let mut errors = Vec::new();
        let ty = Ty::Named(name.to_owned(), None);
        self.check(value, &ty, "$", Mode::Json, &mut errors, 0);
        errors
    }

    /// The errors of form-encoded `pairs` against parameter type `name`.
    pub fn validate_form<'a>(
        &self,
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
        name: &str,
    ) -> Vec<String> {
        let mut errors = Vec::new();
        let value = match form_value(pairs) {
            Ok(value) => value,
            Err(e) => return vec![e],
        };
        let ty = Ty::Named(name.to_owned(), None);
        self.check(&value, &ty, "$", Mode::Form, &mut errors, 0);
        errors
    }

    fn check(
        &self,
        v: &Value,
        ty: &Ty,
        at: &str,
        mode: Mode,
        errors: &mut Vec<String>,
        depth: usize,
    ) {
        if depth > 4 * MAX_DEPTH {
            return;
        }
        let text = |v: &Value| v.as_str().map(str::to_owned);
        let fail = |errors: &mut Vec<String>, what: &str| {
            errors.push(format!("{at}: {} is not {what}", short(v)))
        };
        match ty {
            Ty::Any | Ty::External(_) => {}
            Ty::Null if !v.is_null() => fail(errors, "null"),
            Ty::Str if !v.is_string() => fail(errors, "a string"),
            Ty::Num => {
                let ok = match mode {
                    Mode::Json => v.is_number(),
                    Mode::Form => text(v).is_some_and(|t| t.parse::<f64>().is_ok()),
                };
                if !ok {
                    fail(errors, "a number");
                }
            }
            Ty::Bool => {
                let ok = match mode {
                    Mode::Json => v.is_boolean(),
                    Mode::Form => matches!(v.as_str(), Some("true" | "false")),
                };
                if !ok {
                    fail(errors, "a boolean");
                }
            }
            Ty::Void => errors.push(format!("{at}: present, but typed void")),
            Ty::Lit(expected) => {
                let ok = match (mode, expected) {
                    (Mode::Form, Value::Bool(b)) => v.as_str() == Some(&b.to_string()),
                    _ => v == expected,
                };
                if !ok {
                    fail(errors, &format!("the literal {expected}"));
                }
            }
            Ty::Array(item) => match v.as_array() {
                Some(items) => {
                    for (i, x) in items.iter().enumerate() {
                        self.check(x, item, &format!("{at}[{i}]"), mode, errors, depth + 1);
                    }
                }
                None => fail(errors, "an array"),
            },
            Ty::Map(item) => match v.as_object() {
                Some(object) => {
                    for (k, x) in object {
                        self.check(x, item, &format!("{at}.{k}"), mode, errors, depth + 1);
                    }
                }
                None => fail(errors, "an object"),
            },
            Ty::Partial(inner) => self.check_named(v, inner, at, mode, errors, depth, true),
            Ty::Named(..) => self.check_named(v, ty, at, mode, errors, depth, false),
            Ty::Union(alternatives) => {
                let mut best: Option<Vec<String>> = None;
                for alternative in alternatives {
                    let mut theirs = Vec::new();
                    self.check(v, alternative, at, mode, &mut theirs, depth + 1);
                    if theirs.is_empty() {
                        return;
                    }
                    // Report the errors of the alternative of the value's own kind.
                    if v.is_object() && self.is_object_type(alternative) {
                        best = Some(theirs);
                    }
                }
                match best {
                    Some(theirs) => errors.extend(theirs),
                    None => fail(errors, "any alternative of its union"),
                }
            }
            _ => {}
        }
    }

    fn is_object_type(&self, ty: &Ty) -> bool {
        match ty {
            Ty::Map(_) | Ty::Partial(_) => true,
            Ty::Named(name, _) => matches!(
                self.doc["types"][name]["kind"].as_str(),
                Some("interface" | "object_type")
            ),
            _ => false,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn check_named(
        &self,
        v: &Value,
        ty: &Ty,
        at: &str,
        mode: Mode,
        errors: &mut Vec<String>,
        depth: usize,
        partial: bool,
    ) {
        let Ty::Named(name, bound) = ty else {
            return self.check(v, ty, at, mode, errors, depth + 1);
        };
        let Some(def) = self.doc["types"].get(name.as_str()) else {
            errors.push(format!("{at}: type {name} is not in the digest"));
            return;
        };
        match def["kind"].as_str() {
            Some("enum") => {
                let known = def["values"].as_array().is_some_and(|w| w.contains(v));
                if !v.is_string() {
                    errors.push(format!("{at}: {} is not a word of {name}", short(v)));
                } else if !known && def["open"] != true {
                    errors.push(format!("{at}: {} is not one of {name}", short(v)));
                }
            }
            Some("alias") => {
                let text = def["type"].as_str().unwrap_or("unknown");
                let aliased = if name == "OtherString" {
                    Ty::Str
                } else {
                    parse(text, &Map::new(), bound.as_deref())
                };
                self.check(v, &aliased, at, mode, errors, depth + 1);
            }
            _ => {
                let Some(object) = v.as_object() else {
                    errors.push(format!("{at}: {} is not an object ({name})", short(v)));
                    return;
                };
                let properties = self.properties(name);
                let index = properties.iter().find(|(k, _)| k.starts_with('['));
                for (key, prop) in &properties {
                    let optional = prop["optional"] == true || key.starts_with('[');
                    if !optional && !partial && !object.contains_key(key) {
                        errors.push(format!("{at}: {name} requires {key}"));
                    }
                }
                for (key, x) in object {
                    let path = format!("{at}.{key}");
                    let Some(prop) = properties.get(key).or(index.map(|(_, p)| p)) else {
                        errors.push(format!("{path}: {name} has no property {key}"));
                        continue;
                    };
                    if x.is_null() {
                        if prop["nullable"] != true {
                            errors.push(format!("{path}: null, but {name}.{key} is not nullable"));
                        }
                        continue;
                    }
                    let refs = prop["refs"].as_object().cloned().unwrap_or_default();
                    let text = prop["type"].as_str().unwrap_or("unknown");
                    let prop_ty = parse(text, &refs, bound.as_deref());
                    if let (Some(words), Some(word)) = (prop["enum"].as_array(), x.as_str())
                        && prop["enum_open"] != true
                        && !words.contains(&Value::from(word))
                        && matches!(prop_ty, Ty::Lit(_) | Ty::Union(_))
                    {
                        errors.push(format!("{path}: {word:?} is not one of {name}.{key}"));
                        continue;
                    }
                    self.check(x, &prop_ty, &path, mode, errors, depth + 1);
                }
            }
        }
    }

    /// A value of type `name` with every non-optional property (see the module doc).
    pub fn generate(&self, name: &str) -> Value {
        self.gen_ty(&Ty::Named(name.to_owned(), None), 0)
    }

    fn gen_ty(&self, ty: &Ty, depth: usize) -> Value {
        if depth > MAX_DEPTH {
            return Value::Null;
        }
        match ty {
            Ty::Null | Ty::Void | Ty::Any => Value::Null,
            Ty::Str => Value::from(""),
            Ty::Num => Value::from(0),
            Ty::Bool => Value::Bool(false),
            Ty::Lit(v) => v.clone(),
            Ty::Array(_) => Value::Array(Vec::new()),
            Ty::Map(_) | Ty::External(_) => Value::Object(Map::new()),
            Ty::Partial(_) => Value::Object(Map::new()),
            Ty::Union(alternatives) => alternatives
                .iter()
                .find(|a| !matches!(a, Ty::Null))
                .map_or(Value::Null, |a| self.gen_ty(a, depth + 1)),
            Ty::Named(name, bound) => {
                let def = self.ty(name);
                match def["kind"].as_str() {
                    Some("enum") => def["values"][0].clone(),
                    Some("alias") if name == "OtherString" => Value::from(""),
                    Some("alias") => {
                        let text = def["type"].as_str().unwrap_or("unknown");
                        self.gen_ty(&parse(text, &Map::new(), bound.as_deref()), depth + 1)
                    }
                    _ => {
                        let mut object = Map::new();
                        for (key, prop) in self.properties(name) {
                            if prop["optional"] == true || key.starts_with('[') {
                                continue;
                            }
                            let value = if prop["nullable"] == true {
                                Value::Null
                            } else {
                                let refs = prop["refs"].as_object().cloned().unwrap_or_default();
                                let text = prop["type"].as_str().unwrap_or("unknown");
                                self.gen_ty(&parse(text, &refs, bound.as_deref()), depth + 1)
                            };
                            object.insert(key, value);
                        }
                        Value::Object(object)
                    }
                }
            }
        }
    }

    /// Whether `path` (`data.payments`, dot-separated) names, from type `root`, properties
    /// that exist, each step through the interface its type names (`Array<X>` and
    /// `ApiList<X>` step into `X`), the last one an object type: what Stripe's `expand[]`
    /// accepts at most.
    pub fn names_an_object(&self, root: &str, path: &str) -> bool {
        let mut current = vec![Ty::Named(root.to_owned(), None)];
        for step in path.split('.') {
            let mut next = Vec::new();
            for ty in current {
                let Ty::Named(name, bound) = ty else { continue };
                if !matches!(
                    self.doc["types"][&name]["kind"].as_str(),
                    Some("interface" | "object_type")
                ) {
                    continue;
                }
                let Some(prop) = self.properties(&name).remove(step) else {
                    continue;
                };
                let refs = prop["refs"].as_object().cloned().unwrap_or_default();
                let text = prop["type"].as_str().unwrap_or("unknown");
                flatten(parse(text, &refs, bound.as_deref()), &mut next);
            }
            current = next;
        }
        current.iter().any(|ty| self.is_object_type(ty))
    }
}

/// The alternatives of `ty`, with arrays and lists opened to their items.
fn flatten(ty: Ty, into: &mut Vec<Ty>) {
    match ty {
        Ty::Union(alternatives) => alternatives.into_iter().for_each(|a| flatten(a, into)),
        Ty::Array(item) => flatten(*item, into),
        Ty::Named(name, Some(item)) if name == "ApiList" => {
            into.push(Ty::Named(name, Some(item.clone())));
            flatten(*item, into);
        }
        other => into.push(other),
    }
}

fn short(v: &Value) -> String {
    let text = v.to_string();
    match text.char_indices().nth(60) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text,
    }
}

/// Form pairs as a JSON value of texts: `a[b]=1` → `{"a":{"b":"1"}}`, `a[]=x` → `{"a":["x"]}`.
fn form_value<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Value, String> {
    let mut root = Value::Object(Map::new());
    for (key, value) in pairs {
        let (head, rest) = key.split_once('[').map_or((key, ""), |(h, r)| (h, r));
        let mut steps = vec![head.to_owned()];
        for part in rest.split('[').filter(|p| !p.is_empty()) {
            let part = part
                .strip_suffix(']')
                .ok_or_else(|| format!("{key}: not a form key"))?;
            steps.push(part.to_owned());
        }
        let mut slot = &mut root;
        for (i, step) in steps.iter().enumerate() {
            let last = i + 1 == steps.len();
            let array_next = steps
                .get(i + 1)
                .is_some_and(|s| s.is_empty() || s.bytes().all(|b| b.is_ascii_digit()));
            let fresh = || {
                if last {
                    Value::from(value)
                } else if array_next {
                    Value::Array(Vec::new())
                } else {
                    Value::Object(Map::new())
                }
            };
            slot = match slot {
                Value::Object(object) => object.entry(step.clone()).or_insert_with(fresh),
                Value::Array(items) => {
                    let index = step.parse::<usize>().unwrap_or(items.len());
                    if index >= items.len() {
                        items.push(fresh());
                    }
                    let at = index.min(items.len() - 1);
                    &mut items[at]
                }
                _ => return Err(format!("{key}: given twice, as a value and as a container")),
            };
        }
    }
    Ok(root)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn digest() -> Digest {
        Digest::parse(
            &json!({"types": {
                "Status": {"kind": "enum", "values": ["draft", "paid"], "open": true},
                "Closed": {"kind": "enum", "values": ["a", "b"]},
                "Base": {"kind": "interface", "properties": {
                    "id": {"type": "string", "optional": false, "nullable": false}}},
                "ApiList": {"kind": "interface", "properties": {
                    "object": {"type": "'list'", "optional": false, "nullable": false, "enum": ["list"]},
                    "data": {"type": "Array<T>", "optional": false, "nullable": false, "refs": {"T": "EXTERNAL(not in this digest)"}}}},
                "Thing": {"kind": "interface", "extends": ["Base"], "properties": {
                    "status": {"type": "Thing.Status | null", "optional": false, "nullable": true, "refs": {"Thing.Status": "Status"}},
                    "closed": {"type": "Closed", "optional": false, "nullable": false, "refs": {"Closed": "Closed"}},
                    "n": {"type": "number", "optional": false, "nullable": false},
                    "owner": {"type": "string | Customer", "optional": false, "nullable": false, "refs": {"Customer": "EXTERNAL(not in this digest)"}},
                    "kids": {"type": "ApiList<Base>", "optional": true, "nullable": false, "refs": {"ApiList": "ApiList", "Base": "Base"}},
                    "meta": {"type": "{[key: string]: string}", "optional": true, "nullable": false},
                    "range": {"type": "Range | number", "optional": true, "nullable": false, "refs": {"Range": "Range"}},
                    "tags": {"type": "Array<string>", "optional": true, "nullable": false}}},
                "Range": {"kind": "interface", "properties": {
                    "gte": {"type": "number", "optional": true, "nullable": false}}}
            }})
            .to_string(),
        )
    }

    #[test]
    fn generated_values_validate_and_each_kind_of_error_is_caught() {
        let d = digest();
        let value = d.generate("Thing");
        assert_eq!(
            value,
            json!({"id": "", "status": null, "closed": "a", "n": 0, "owner": ""})
        );
        assert_eq!(d.validate(&value, "Thing"), Vec::<String>::new());
        let mut fine = value.clone();
        fine["status"] = json!("some_new_word"); // open enum
        fine["owner"] = json!({"id": "cus_1"}); // outside the digest
        fine["kids"] = json!({"object": "list", "data": [{"id": "x"}]});
        fine["meta"] = json!({"a": "b"});
        fine["range"] = json!({"gte": 1});
        assert_eq!(d.validate(&fine, "Thing"), Vec::<String>::new());
        for (key, bad) in [
            ("closed", json!("c")),
            ("closed", Value::Null),
            ("n", json!("1")),
            ("kids", json!({"object": "list", "data": [{"id": 1}]})),
            ("meta", json!({"a": 1})),
            ("range", json!({"gte": "1"})),
            ("extra", json!(1)),
        ] {
            let mut broken = value.clone();
            broken[key] = bad;
            assert_eq!(d.validate(&broken, "Thing").len(), 1, "{key}: {broken}");
        }
        let mut missing = value.clone();
        missing.as_object_mut().unwrap().remove("id");
        assert!(d.validate(&missing, "Thing")[0].contains("requires id"));
    }

    #[test]
    fn forms_and_paths() {
        let d = digest();
        let closed = [
            ("id", "x"),
            ("status", "paid"),
            ("closed", "c"),
            ("n", "2"),
            ("owner", "o"),
        ];
        assert_eq!(d.validate_form(closed, "Thing").len(), 1);
        let ok = [
            ("id", "x"),
            ("status", "paid"),
            ("closed", "b"),
            ("n", "2"),
            ("owner", "c"),
            ("range[gte]", "5"),
            ("tags[]", "a"),
            ("tags[]", "b"),
        ];
        assert_eq!(d.validate_form(ok, "Thing"), Vec::<String>::new());
        let bad = [
            ("id", "x"),
            ("status", "paid"),
            ("closed", "b"),
            ("n", "two"),
            ("owner", "c"),
            ("nope", "1"),
        ];
        assert_eq!(d.validate_form(bad, "Thing").len(), 2);
        assert!(d.names_an_object("Thing", "kids"));
        assert!(d.names_an_object("Thing", "kids.data"));
        assert!(d.names_an_object("Thing", "range"));
        assert!(!d.names_an_object("Thing", "n"));
        assert!(!d.names_an_object("Thing", "missing"));
    }
}
