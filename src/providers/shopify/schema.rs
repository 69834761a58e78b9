//! Test support: the copied Admin GraphQL schemas (`tests/fixtures/shopify/`, the
//! subscription-billing subset of each version plus the supplement of the types it only
//! references) read by a small SDL parser (type name → fields with their named type), and
//! a checker that walks a GraphQL document (operations, fragments, inline fragments,
//! aliases) and names every field, argument or type condition the schema does not have,
//! and every object selected without a selection set (or a leaf with one). Input values
//! (a mutation's variables) are checked against input types the same way.

use std::collections::HashMap;

use serde_json::Value;

const SUBSET_2025_01: &str = include_str!(
    "../../../tests/fixtures/shopify/admin-2025-01.subscription-billing.subset.graphql"
);
const SUPPLEMENT_2025_01: &str =
    include_str!("../../../tests/fixtures/shopify/admin-2025-01.supplement.graphql");
const SUBSET_2026_04: &str = include_str!(
    "../../../tests/fixtures/shopify/admin-2026-04.subscription-billing.subset.graphql"
);
const SUPPLEMENT_2026_04: &str =
    include_str!("../../../tests/fixtures/shopify/admin-2026-04.supplement.graphql");

/// The copied schema of `version` (`2025-01` or `2026-04`).
pub(super) fn copied(version: &str) -> Schema {
    let texts = match version {
        "2025-01" => [SUBSET_2025_01, SUPPLEMENT_2025_01],
        "2026-04" => [SUBSET_2026_04, SUPPLEMENT_2026_04],
        other => panic!("no copied schema for {other}"),
    };
    Schema::parse(&texts)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Object,
    Interface,
    Input,
    Enum,
    Union,
    Scalar,
}

#[derive(Debug, Clone)]
pub(super) struct Field {
    /// The named type (lists and non-null stripped).
    pub(super) ty: String,
    /// Non-null without a default (input fields).
    pub(super) required: bool,
    pub(super) args: Vec<String>,
}

#[derive(Debug, Clone)]
pub(super) struct TypeDef {
    pub(super) kind: Kind,
    pub(super) fields: HashMap<String, Field>,
    /// Union members, interfaces implemented.
    pub(super) related: Vec<String>,
    /// Enum values.
    pub(super) values: Vec<String>,
}

#[derive(Debug, Default)]
pub(super) struct Schema {
    pub(super) types: HashMap<String, TypeDef>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Name(String),
    Punct(char),
    Spread,
    Str,
    Other,
}

/// GraphQL tokens: comments and descriptions (block strings) dropped, other strings as
/// [`Token::Str`], commas ignored.
fn tokens(text: &str) -> Vec<Token> {
    let bytes = text.as_bytes();
    let (mut i, mut out) = (0, Vec::new());
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'#' {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
        } else if bytes[i..].starts_with(b"\"\"\"") {
            let end = (bytes[i + 3..].windows(3))
                .position(|w| w == b"\"\"\"")
                .expect("closed block string");
            i += 3 + end + 3;
        } else if c == b'"' {
            i += 1;
            while bytes[i] != b'"' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push(Token::Str);
        } else if c.is_ascii_whitespace() || c == b',' {
            i += 1;
        } else if bytes[i..].starts_with(b"...") {
            out.push(Token::Spread);
            i += 3;
        } else if c == b'_' || c.is_ascii_alphabetic() {
            let start = i;
            while i < bytes.len() && (bytes[i] == b'_' || bytes[i].is_ascii_alphanumeric()) {
                i += 1;
            }
            out.push(Token::Name(text[start..i].to_owned()));
        } else if c == b'-' || c.is_ascii_digit() {
            i += 1;
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric() || b".+-".contains(&bytes[i]))
            {
                i += 1;
            }
            out.push(Token::Other);
        } else {
            out.push(Token::Punct(c as char));
            i += 1;
        }
    }
    out
}

struct Cursor {
    tokens: Vec<Token>,
    at: usize,
}

impl Cursor {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Token {
        let token = self.tokens.get(self.at).cloned().expect("unexpected end");
        self.at += 1;
        token
    }

    fn is(&self, c: char) -> bool {
        self.peek() == Some(&Token::Punct(c))
    }

    fn eat(&mut self, c: char) -> bool {
        let yes = self.is(c);
        if yes {
            self.at += 1;
        }
        yes
    }

    fn name(&mut self) -> String {
        match self.next() {
            Token::Name(n) => n,
            other => panic!("expected a name, got {other:?} at token {}", self.at),
        }
    }

    /// Skips a balanced `open … close` group starting at the current token.
    fn skip_group(&mut self, open: char, close: char) {
        let mut depth = 0;
        loop {
            match self.next() {
                Token::Punct(c) if c == open => depth += 1,
                Token::Punct(c) if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return;
                    }
                }
                _ => {}
            }
        }
    }

    /// Skips one value (a literal, a variable, a list or an object).
    fn skip_value(&mut self) {
        if self.is('[') {
            self.skip_group('[', ']');
        } else if self.is('{') {
            self.skip_group('{', '}');
        } else if self.eat('$') {
            self.name();
        } else {
            self.next();
        }
    }

    fn skip_directives(&mut self) {
        while self.eat('@') {
            self.name();
            if self.is('(') {
                self.skip_group('(', ')');
            }
        }
    }

    /// A type reference: the named type, and whether it is non-null at the top.
    fn type_ref(&mut self) -> (String, bool) {
        let mut lists = 0;
        while self.eat('[') {
            lists += 1;
        }
        let name = self.name();
        let mut non_null = self.eat('!');
        for _ in 0..lists {
            assert!(self.eat(']'), "closed list type");
            non_null = self.eat('!');
        }
        (name, non_null)
    }

    /// Argument definitions `( name: Type = default @d … )`: their names.
    fn arg_defs(&mut self) -> Vec<String> {
        let mut names = Vec::new();
        if !self.eat('(') {
            return names;
        }
        while !self.eat(')') {
            if self.peek() == Some(&Token::Str) {
                self.next();
                continue;
            }
            names.push(self.name());
            assert!(self.eat(':'));
            self.type_ref();
            if self.eat('=') {
                self.skip_value();
            }
            self.skip_directives();
        }
        names
    }
}

impl Schema {
    /// Parses SDL texts into one schema (later texts add types to earlier ones).
    pub(super) fn parse(texts: &[&str]) -> Schema {
        let mut schema = Schema::default();
        for text in texts {
            let mut c = Cursor {
                tokens: tokens(text),
                at: 0,
            };
            while let Some(token) = c.peek().cloned() {
                let Token::Name(keyword) = token else {
                    c.next();
                    continue;
                };
                c.next();
                let kind = match keyword.as_str() {
                    "type" => Kind::Object,
                    "interface" => Kind::Interface,
                    "input" => Kind::Input,
                    "enum" => Kind::Enum,
                    "union" => Kind::Union,
                    "scalar" => Kind::Scalar,
                    other => panic!("unexpected {other:?} in the schema"),
                };
                let name = c.name();
                let mut def = TypeDef {
                    kind,
                    fields: HashMap::new(),
                    related: Vec::new(),
                    values: Vec::new(),
                };
                if c.peek() == Some(&Token::Name("implements".into())) {
                    c.next();
                    c.eat('&');
                    def.related.push(c.name());
                    while c.eat('&') {
                        def.related.push(c.name());
                    }
                }
                c.skip_directives();
                match kind {
                    Kind::Union => {
                        assert!(c.eat('='), "union {name}");
                        c.eat('|');
                        def.related.push(c.name());
                        while c.eat('|') {
                            def.related.push(c.name());
                        }
                    }
                    Kind::Scalar => {}
                    Kind::Enum => {
                        assert!(c.eat('{'), "enum {name}");
                        while !c.eat('}') {
                            if c.peek() == Some(&Token::Str) {
                                c.next();
                                continue;
                            }
                            def.values.push(c.name());
                            c.skip_directives();
                        }
                    }
                    Kind::Object | Kind::Interface | Kind::Input => {
                        assert!(c.eat('{'), "type {name}");
                        while !c.eat('}') {
                            if c.peek() == Some(&Token::Str) {
                                c.next();
                                continue;
                            }
                            let field = c.name();
                            let args = c.arg_defs();
                            assert!(c.eat(':'), "{name}.{field}");
                            let (ty, non_null) = c.type_ref();
                            let defaulted = c.eat('=');
                            if defaulted {
                                c.skip_value();
                            }
                            c.skip_directives();
                            let required = non_null && !defaulted;
                            def.fields.insert(field, Field { ty, required, args });
                        }
                    }
                }
                schema.types.insert(name, def);
            }
        }
        schema
    }

    pub(super) fn get(&self, name: &str) -> Option<&TypeDef> {
        self.types.get(name)
    }

    fn composite(&self, name: &str) -> bool {
        self.get(name)
            .is_some_and(|t| matches!(t.kind, Kind::Object | Kind::Interface | Kind::Union))
    }

    /// Whether a fragment on `condition` may be spread where `parent` is expected.
    fn applies(&self, parent: &str, condition: &str) -> bool {
        if parent == condition {
            return true;
        }
        let related = |a: &str, b: &str| {
            self.get(a)
                .is_some_and(|t| t.related.iter().any(|r| r == b))
        };
        // A member of the union, an implementation of the interface, or the reverse.
        related(parent, condition) || related(condition, parent)
    }

    /// The problems of a GraphQL document (queries, mutations, fragments) against this
    /// schema, with `QueryRoot` and `Mutation` as the roots; empty when it conforms.
    pub(super) fn check_document(&self, document: &str) -> Vec<String> {
        let mut c = Cursor {
            tokens: tokens(document),
            at: 0,
        };
        let mut problems = Vec::new();
        let mut fragments: HashMap<String, String> = HashMap::new();
        let mut spreads: Vec<(String, String)> = Vec::new();
        while c.peek().is_some() {
            let root = match c.peek() {
                Some(Token::Punct('{')) => "QueryRoot".to_owned(),
                _ => match c.name().as_str() {
                    "query" => "QueryRoot".to_owned(),
                    "mutation" => "Mutation".to_owned(),
                    "fragment" => {
                        let name = c.name();
                        assert_eq!(c.name(), "on");
                        let on = c.name();
                        if !self.composite(&on) {
                            problems.push(format!("fragment {name} on unknown type {on}"));
                        }
                        fragments.insert(name, on.clone());
                        on
                    }
                    other => panic!("unexpected {other:?} in the document"),
                },
            };
            if matches!(c.peek(), Some(Token::Name(_))) {
                c.name();
            }
            if c.is('(') {
                c.skip_group('(', ')');
            }
            c.skip_directives();
            self.selection(&mut c, &root, &mut problems, &mut spreads);
        }
        for (parent, fragment) in spreads {
            match fragments.get(&fragment) {
                None => problems.push(format!("...{fragment} is not defined")),
                Some(on) if !self.applies(&parent, on) => {
                    problems.push(format!("...{fragment} (on {on}) spread in {parent}"))
                }
                Some(_) => {}
            }
        }
        problems
    }

    /// Walks `{ … }` selected on `parent`.
    fn selection(
        &self,
        c: &mut Cursor,
        parent: &str,
        problems: &mut Vec<String>,
        spreads: &mut Vec<(String, String)>,
    ) {
        assert!(c.eat('{'), "a selection set on {parent}");
        let def = self.get(parent);
        while !c.eat('}') {
            if c.peek() == Some(&Token::Spread) {
                c.next();
                let name = c.name();
                if name != "on" {
                    c.skip_directives();
                    spreads.push((parent.to_owned(), name));
                    continue;
                }
                let on = c.name();
                c.skip_directives();
                if !self.composite(&on) || !self.applies(parent, &on) {
                    problems.push(format!("... on {on} inside {parent}"));
                }
                self.selection(c, &on, problems, spreads);
                continue;
            }
            let mut field = c.name();
            if c.eat(':') {
                field = c.name(); // `alias: field`
            }
            let found = if field == "__typename" {
                None
            } else {
                let found = def.and_then(|d| match d.kind {
                    Kind::Object | Kind::Interface => d.fields.get(&field),
                    _ => None,
                });
                if found.is_none() {
                    problems.push(format!("{parent}.{field} does not exist"));
                }
                found
            };
            if c.eat('(') {
                // Arguments: a name and a value each.
                while !c.eat(')') {
                    let arg = c.name();
                    assert!(c.eat(':'));
                    c.skip_value();
                    if found.is_some_and(|f| !f.args.contains(&arg)) {
                        problems.push(format!("{parent}.{field} has no argument {arg}"));
                    }
                }
            }
            c.skip_directives();
            let composite = found.is_some_and(|f| self.composite(&f.ty));
            if c.is('{') {
                let ty = found.map_or("?", |f| f.ty.as_str()).to_owned();
                if found.is_some() && !composite {
                    problems.push(format!(
                        "{parent}.{field} ({ty}) is a leaf with a selection"
                    ));
                }
                self.selection(c, &ty, problems, spreads);
            } else if composite {
                problems.push(format!("{parent}.{field} is selected without its fields"));
            }
        }
    }

    /// The problems of `value` as a value of input type `ty`: unknown fields, required
    /// fields missing, nested input objects checked the same way, enum values known.
    pub(super) fn check_input(&self, ty: &str, value: &Value) -> Vec<String> {
        let Some(def) = self.get(ty) else {
            return Vec::new(); // a scalar: any JSON value
        };
        let mut problems = Vec::new();
        match (def.kind, value) {
            (_, Value::Null) => {}
            (Kind::Enum, Value::String(s)) if def.values.contains(s) => {}
            (Kind::Enum, other) => problems.push(format!("{other} is not a {ty}")),
            (Kind::Input, Value::Object(fields)) => {
                for (name, field) in &def.fields {
                    if field.required && fields.get(name).is_none_or(Value::is_null) {
                        problems.push(format!("{ty}.{name} is required"));
                    }
                }
                for (name, value) in fields {
                    match def.fields.get(name) {
                        None => problems.push(format!("{ty} has no field {name}")),
                        Some(field) => problems.extend(self.check_input(&field.ty, value)),
                    }
                }
            }
            (_, other) => problems.push(format!("{other} is not an input of type {ty}")),
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_copied_schemas_parse_with_what_the_notes_cite() {
        let old = copied("2025-01");
        let new = copied("2026-04");
        let attempt = |s: &Schema| {
            let mut fields: Vec<String> = s.types["SubscriptionBillingAttempt"]
                .fields
                .keys()
                .cloned()
                .collect();
            fields.sort();
            fields
        };
        assert_eq!(attempt(&old).len(), 16, "{:?}", attempt(&old));
        assert!(attempt(&new).contains(&"state".to_owned()));
        assert!(!attempt(&old).contains(&"state".to_owned()));
        let throttled = |s: &Schema| {
            s.types["BillingAttemptUserErrorCode"]
                .values
                .contains(&"THROTTLED".to_owned())
        };
        assert!(throttled(&new) && !throttled(&old));
        assert_eq!(
            new.types["SubscriptionBillingAttemptState"].related.len(),
            4
        );
        assert_eq!(
            new.types["SubscriptionBillingAttemptErrorCode"]
                .values
                .len(),
            54
        );
        assert_eq!(
            old.types["SubscriptionBillingAttemptErrorCode"]
                .values
                .len(),
            24
        );
        assert!(new.types["SubscriptionBillingAttemptInput"].fields["idempotencyKey"].required);
        assert!(!new.types["SubscriptionBillingAttemptInput"].fields["originTime"].required);
    }

    /// The checker finds what it must: it is the ground of the conformance tests.
    #[test]
    fn the_checker_names_what_the_schema_does_not_have() {
        let schema = copied("2026-04");
        let ok = "query Q($id: ID!) { subscriptionBillingAttempt(id: $id) { id alias: createdAt \
                  state { __typename ... on SubscriptionBillingAttemptSuccessState { order { id } } } } }";
        assert_eq!(schema.check_document(ok), Vec::<String>::new());
        let cases = [
            (
                "{ subscriptionBillingAttempt(id: 1) { nope } }",
                "nope does not exist",
            ),
            (
                "{ subscriptionBillingAttempt(idx: 1) { id } }",
                "no argument idx",
            ),
            (
                "{ subscriptionBillingAttempt(id: 1) }",
                "without its fields",
            ),
            (
                "{ subscriptionBillingAttempt(id: 1) { id { x } } }",
                "leaf with a selection",
            ),
            (
                "{ subscriptionBillingAttempt(id: 1) { state { processing } } }",
                "SubscriptionBillingAttemptState.processing does not exist",
            ),
            (
                "{ subscriptionBillingAttempt(id: 1) { state { ... on SubscriptionContract { id } } } }",
                "... on SubscriptionContract",
            ),
            (
                "{ subscriptionBillingAttempt(id: 1) { ...F } }",
                "...F is not defined",
            ),
        ];
        for (document, problem) in cases {
            let found = schema.check_document(document);
            assert!(
                found.iter().any(|p| p.contains(problem)),
                "{document}: {found:?}"
            );
        }
        let input = "SubscriptionBillingAttemptInput";
        assert!(
            schema
                .check_input(input, &json!({ "idempotencyKey": "k" }))
                .is_empty()
        );
        assert_eq!(
            schema
                .check_input(input, &json!({ "originTime": "x", "bogus": 1 }))
                .len(),
            2
        );
        let selector =
            json!({ "idempotencyKey": "k", "billingCycleSelector": { "index": 3, "x": 1 } });
        assert_eq!(
            schema.check_input(input, &selector),
            ["SubscriptionBillingCycleSelector has no field x"]
        );
        let policy = json!({ "idempotencyKey": "k", "inventoryPolicy": "NOPE" });
        assert_eq!(schema.check_input(input, &policy).len(), 1);
    }
}
