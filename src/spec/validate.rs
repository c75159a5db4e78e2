//! Turning manifest text into a [`Service`], with every error found at once.
//!
//! The pipeline, in order; each step runs only if the one before found nothing wrong:
//!
//! 1. Size: a text over [`MAX_VALUE_BYTES`] is refused before it is read (Consul's limit).
//! 2. YAML: the text becomes a tree with positions (`yaml.rs`); syntax errors, anchors,
//!    aliases, tags, duplicate keys and extra documents are reported.
//! 3. Schema: the tree is walked against the schema (`schema.rs`), reporting every unknown
//!    field, missing field, wrong type and out-of-range value, with its line and column. The
//!    walk also produces a clean `serde_yaml::Value` (null objects as empty mappings, numbers
//!    and strings as the schema wants them).
//! 4. Types: that value is deserialized into a [`Service`], which cannot fail once step 3 passed.
//! 5. Cross-field rules on the typed value (timeout within interval, distinct routes, the name
//!    against the KV key), located through the positions recorded in step 3.
//!
//! [`check_set`] and [`parse_services`] add the rules between services: no two services may
//! claim the same route or the same name.
//!
//! Nothing here does I/O.

use std::collections::BTreeMap;
use std::fmt;

use serde_yaml::Value as YamlValue;

use super::schema::{Field, Kind, MANIFEST, SIGNALS};
use super::yaml::{self, Node, Position, Resolved, ScalarStyle, Value};
use super::{CanaryStep, Duration, MAX_VALUE_BYTES, Memory, NetworkMode, Service, Strategy};

/// One thing wrong with a manifest, located so that a person can fix it at a glance.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Diagnostic {
    /// Where the text came from: a file path or a Consul KV key.
    pub source: String,
    /// 1-based line and column of the offending node; 0 when the problem has no place.
    pub line: usize,
    pub column: usize,
    /// The field path, such as `spec.health.interval` or `spec.routes[1].host`.
    pub path: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.source, self.line, self.column)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in one or more manifests, in source order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Diagnostic> {
        self.0.iter()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// Parses and validates one manifest. `source` names where the text came from (a file path or
/// a KV key) and is repeated in every diagnostic.
///
/// When `source` is a KV key (see [`name_from_key`]), `metadata.name` must equal its last
/// segment. A file path is never taken for a key, because its last segment has an extension
/// (`books.yaml`) or its parent is not named `services`.
///
/// # Errors
/// Every problem found, in source order, each with its line, column and field path. Problems
/// are found in stages (size, YAML syntax, schema, cross-field rules); a later stage runs only
/// when the earlier ones found nothing, so fixing a YAML error may reveal schema errors.
pub fn parse_service(source: &str, text: &str) -> Result<Service, Diagnostics> {
    parse_located(source, text).map(|(service, _positions)| service)
}

/// Parses and validates several manifests together: each one as [`parse_service`] does, then
/// the rules between them ([`check_set`]), this time with lines and columns. `files` pairs
/// each source with its text. This is what `cutover validate` and `cutover sync` need.
///
/// # Errors
/// The problems of every manifest, file by file in the order given, then the conflicts
/// between services.
pub fn parse_services(files: &[(&str, &str)]) -> Result<Vec<Service>, Diagnostics> {
    let mut diagnostics = Vec::new();
    let mut parsed = Vec::new();
    for (source, text) in files {
        match parse_located(source, text) {
            Ok((service, positions)) => parsed.push((*source, service, positions)),
            Err(errors) => diagnostics.extend(errors.0),
        }
    }
    let located: Vec<LocatedService> = parsed
        .iter()
        .map(|(source, service, positions)| LocatedService {
            source,
            service,
            positions: Some(positions),
        })
        .collect();
    diagnostics.extend(set_diagnostics(&located));
    if diagnostics.is_empty() {
        Ok(parsed.into_iter().map(|(_, service, _)| service).collect())
    } else {
        Err(Diagnostics(diagnostics))
    }
}

/// The service name a KV key implies, or `None` when `source` is not such a key.
///
/// A source is a KV key when its last segment has no `.` (so `books.yaml` is a file) and the
/// segment before it is `services`: `cutover/services/books` gives `books`. A file stored
/// without extension in a folder named `services` is held to the same rule.
pub fn name_from_key(source: &str) -> Option<&str> {
    let (parent, last) = source.rsplit_once('/')?;
    let parent_is_services = parent == "services" || parent.ends_with("/services");
    (parent_is_services && !last.is_empty() && !last.contains('.')).then_some(last)
}

/// Checks what only shows when several services are known together: two services claiming
/// the same route, or the same `metadata.name`. `services` pairs each service with its source.
///
/// The diagnostics name the field path but have no line and column (0:0), since a `Service`
/// does not remember its text; [`parse_services`] gives the same checks with positions.
pub fn check_set(services: &[(&str, &Service)]) -> Diagnostics {
    let located: Vec<LocatedService> = services
        .iter()
        .map(|(source, service)| LocatedService {
            source,
            service,
            positions: None,
        })
        .collect();
    Diagnostics(set_diagnostics(&located))
}

/// Where each field was written: field path to the position of its value.
type Positions = BTreeMap<String, Position>;

fn parse_located(source: &str, text: &str) -> Result<(Service, Positions), Diagnostics> {
    let fail = |position: Position, path: &str, message: String| {
        Diagnostics(vec![diagnostic(source, position, path, message)])
    };
    if text.len() > MAX_VALUE_BYTES {
        let message = format!(
            "the manifest is {} bytes, over Consul's limit of {MAX_VALUE_BYTES} bytes (512 KiB) \
             for one value; make it smaller",
            text.len()
        );
        return Err(fail(Position::default(), "", message));
    }
    let root = match yaml::parse(text) {
        Ok(Some(root)) => root,
        Ok(None) => {
            let message = "the manifest is empty, write at least apiVersion, kind, \
                           metadata.name and spec.image"
                .to_owned();
            return Err(fail(Position::default(), "", message));
        }
        Err(errors) => {
            let diagnostics = errors
                .into_iter()
                .map(|error| diagnostic(source, error.position, &error.path, error.message))
                .collect();
            return Err(Diagnostics(diagnostics));
        }
    };

    let mut walker = Walker {
        source,
        diagnostics: Vec::new(),
        positions: Positions::new(),
    };
    let value = walker.walk(&root, &Kind::Object(MANIFEST), "", root.position);
    let positions = walker.positions;
    let value = match value {
        Some(value) if walker.diagnostics.is_empty() => value,
        _ => return Err(sorted_and_limited(walker.diagnostics)),
    };
    let service: Service = serde_yaml::from_value(value).map_err(|error| {
        // The schema and the types disagree: a bug in cutover, not in the manifest.
        let message = format!(
            "internal error, please report it: the schema accepted a value \
                               the types refuse: {error}"
        );
        fail(root.position, "", message)
    })?;

    let diagnostics = cross_field_diagnostics(source, &service, &positions);
    if diagnostics.is_empty() {
        Ok((service, positions))
    } else {
        Err(sorted_and_limited(diagnostics))
    }
}

/// How many diagnostics one manifest reports at most. The daemon writes them into the
/// service's status key, which Consul caps at 512 KiB like any value.
pub const MAX_DIAGNOSTICS: usize = 50;

/// How long one diagnostic's message may be, in characters. A message quotes the bad value,
/// and a value can be nearly as long as the manifest.
pub const MAX_MESSAGE_CHARS: usize = 600;

/// Sorts the diagnostics into source order and keeps the first [`MAX_DIAGNOSTICS`], with a
/// last one saying how many were left out.
fn sorted_and_limited(mut diagnostics: Vec<Diagnostic>) -> Diagnostics {
    diagnostics.sort();
    if diagnostics.len() > MAX_DIAGNOSTICS {
        let left_out = diagnostics.len() - MAX_DIAGNOSTICS;
        diagnostics.truncate(MAX_DIAGNOSTICS);
        let last = &diagnostics[MAX_DIAGNOSTICS - 1];
        let note = Diagnostic {
            source: last.source.clone(),
            line: last.line,
            column: last.column,
            path: String::new(),
            message: format!(
                "{left_out} more problems are not shown; fix these and validate again"
            ),
        };
        diagnostics.push(note);
    }
    Diagnostics(diagnostics)
}

/// Shortens a message over [`MAX_MESSAGE_CHARS`] in its middle, where a long quoted value
/// is; the start (what is wrong) and the end (the fix) are kept.
fn shortened(message: String) -> String {
    let chars = message.chars().count();
    if chars <= MAX_MESSAGE_CHARS {
        return message;
    }
    let keep = MAX_MESSAGE_CHARS / 2;
    let head: String = message.chars().take(keep).collect();
    let tail: String = message.chars().skip(chars - keep).collect();
    format!(
        "{head}[... {} characters left out ...]{tail}",
        chars - 2 * keep
    )
}

fn diagnostic(source: &str, position: Position, path: &str, message: String) -> Diagnostic {
    Diagnostic {
        source: source.to_owned(),
        line: position.line,
        column: position.column,
        path: shortened(path.to_owned()),
        message: shortened(message),
    }
}

/// Walks the tree against the schema, collecting diagnostics and positions.
struct Walker<'a> {
    source: &'a str,
    diagnostics: Vec<Diagnostic>,
    positions: Positions,
}

impl Walker<'_> {
    fn report(&mut self, position: Position, path: &str, message: String) {
        self.diagnostics
            .push(diagnostic(self.source, position, path, message));
    }

    /// Checks `node` against `kind` and returns the value to hand to serde, or `None` when
    /// something was reported. `key_position` is where the node's key was written (the node's
    /// own position for list items and the root); missing fields are reported there.
    fn walk(
        &mut self,
        node: &Node,
        kind: &Kind,
        path: &str,
        key_position: Position,
    ) -> Option<YamlValue> {
        // An empty value (`image:`) has no place of its own; its key stands for it.
        let position = match node.value {
            Value::Null => key_position,
            _ => node.position,
        };
        self.positions.insert(path.to_owned(), position);
        match kind {
            Kind::Object(fields) => self.walk_object(node, fields, path, key_position),
            Kind::OneOf(fields) => self.walk_one_of(node, fields, None, path, key_position),
            Kind::ObjectList(fields) => self.walk_object_list(node, fields, path, position),
            Kind::OneOfList { fields, example } => {
                self.walk_one_of_list(node, kind, (fields, example), path, position)
            }
            Kind::DurationOrEmpty { min, max } => {
                self.walk_duration_or_empty(node, kind, (*min, *max), path, position)
            }
            Kind::TextMap { .. } => self.walk_text_map(node, kind, path, position),
            Kind::TextList { .. } => self.walk_text_list(node, kind, path, position),
            _ => self.walk_scalar(node, kind, path, position),
        }
    }

    fn walk_object(
        &mut self,
        node: &Node,
        fields: &'static [Field],
        path: &str,
        key_position: Position,
    ) -> Option<YamlValue> {
        let entries = match &node.value {
            Value::Mapping(entries) => entries.as_slice(),
            // `health:` with nothing after it means "all defaults".
            Value::Null => &[],
            _ => {
                self.report_mismatch(node, &Kind::Object(fields), path, node.position);
                return None;
            }
        };
        let mut output = serde_yaml::Mapping::new();
        let mut valid = true;
        for entry in entries {
            let Some(field) = fields.iter().find(|field| field.name == entry.key) else {
                self.report(entry.key_position, path, unknown_field(&entry.key, fields));
                valid = false;
                continue;
            };
            let child_path = join(path, &entry.key);
            let is_object = matches!(field.kind, Kind::Object(_));
            if let (Value::Null, Some(example), false) =
                (&entry.value.value, field.required_example, is_object)
            {
                let message = format!("has no value, write one such as {example}");
                self.report(entry.key_position, &child_path, message);
                valid = false;
                continue;
            }
            match self.walk(&entry.value, &field.kind, &child_path, entry.key_position) {
                Some(value) => {
                    output.insert(YamlValue::String(entry.key.clone()), value);
                }
                None => valid = false,
            }
        }
        for field in fields {
            let Some(example) = field.required_example else {
                continue;
            };
            if !entries.iter().any(|entry| entry.key == field.name) {
                let message = format!(
                    "missing required field {:?}, add a line such as {example}",
                    field.name
                );
                self.report(key_position, path, message);
                valid = false;
            }
        }
        valid.then_some(YamlValue::Mapping(output))
    }

    /// An object with exactly one of its fields set, such as `strategy`. `example` is what a
    /// message suggests when none is set (else `<first field>: {}`).
    fn walk_one_of(
        &mut self,
        node: &Node,
        fields: &'static [Field],
        example: Option<&str>,
        path: &str,
        key_position: Position,
    ) -> Option<YamlValue> {
        let output = self.walk_object(node, fields, path, key_position);
        let entries = match &node.value {
            Value::Mapping(entries) => entries.as_slice(),
            Value::Null => &[],
            _ => return None,
        };
        let chosen: Vec<_> = entries
            .iter()
            .filter(|entry| fields.iter().any(|field| field.name == entry.key))
            .collect();
        let names = field_names(fields, " or ");
        match chosen.as_slice() {
            [_] => output,
            [] => {
                let example = example.map_or_else(
                    || format!("{}: {{}}", fields.first().map_or("", |f| f.name)),
                    str::to_owned,
                );
                let message = format!("choose exactly one of {names}, such as {example}");
                self.report(key_position, path, message);
                None
            }
            [first, second, ..] => {
                let message = format!(
                    "{:?} cannot be used together with {:?}, keep only one of {names}",
                    second.key, first.key
                );
                self.report(second.key_position, path, message);
                None
            }
        }
    }

    /// The items of a list (none for an empty value), or `None` once it reported that the
    /// value is no list.
    fn list_items<'n>(
        &mut self,
        node: &'n Node,
        kind: &Kind,
        path: &str,
        position: Position,
    ) -> Option<&'n [Node]> {
        match &node.value {
            Value::Sequence(items) => Some(items.as_slice()),
            Value::Null => Some(&[]),
            _ => {
                self.report_mismatch(node, kind, path, position);
                None
            }
        }
    }

    fn walk_object_list(
        &mut self,
        node: &Node,
        fields: &'static [Field],
        path: &str,
        position: Position,
    ) -> Option<YamlValue> {
        let items = self.list_items(node, &Kind::ObjectList(fields), path, position)?;
        let mut output = Vec::new();
        let mut valid = true;
        for (index, item) in items.iter().enumerate() {
            let item_path = format!("{path}[{index}]");
            match self.walk(item, &Kind::Object(fields), &item_path, item.position) {
                Some(value) => output.push(value),
                None => valid = false,
            }
        }
        valid.then_some(YamlValue::Sequence(output))
    }

    /// A list, never empty, of mappings with exactly one of `fields` each (a canary's
    /// steps); `example` is one item as written in a block list.
    fn walk_one_of_list(
        &mut self,
        node: &Node,
        kind: &Kind,
        (fields, example): (&'static [Field], &str),
        path: &str,
        position: Position,
    ) -> Option<YamlValue> {
        let items = self.list_items(node, kind, path, position)?;
        // The example as the value of one item: "- weight: 10" gives "weight: 10".
        let item_example = example.trim_start_matches("- ");
        if items.is_empty() {
            let message = format!("must not be empty, write at least one item such as {example}");
            self.report(position, path, message);
            return None;
        }
        let mut output = Vec::new();
        let mut valid = true;
        for (index, item) in items.iter().enumerate() {
            let item_path = format!("{path}[{index}]");
            self.positions.insert(item_path.clone(), item.position);
            if !matches!(item.value, Value::Mapping(_)) {
                let message = format!(
                    "expected a mapping with one of {}, such as {{{item_example}}}, found {}",
                    field_names(fields, " or "),
                    describe_node(item)
                );
                self.report(item.position, &item_path, message);
                valid = false;
                continue;
            }
            match self.walk_one_of(item, fields, Some(item_example), &item_path, item.position) {
                Some(value) => output.push(value),
                None => valid = false,
            }
        }
        valid.then_some(YamlValue::Sequence(output))
    }

    /// A duration within `range`, or `{}` or nothing for none (the value is then an empty
    /// mapping).
    fn walk_duration_or_empty(
        &mut self,
        node: &Node,
        kind: &Kind,
        (min, max): (Duration, Duration),
        path: &str,
        position: Position,
    ) -> Option<YamlValue> {
        match &node.value {
            Value::Null => Some(YamlValue::Mapping(serde_yaml::Mapping::new())),
            Value::Mapping(entries) if entries.is_empty() => {
                Some(YamlValue::Mapping(serde_yaml::Mapping::new()))
            }
            Value::Scalar { .. } => {
                self.walk_scalar(node, &Kind::Duration { min, max }, path, position)
            }
            Value::Mapping(_) | Value::Sequence(_) => {
                self.report_mismatch(node, kind, path, position);
                None
            }
        }
    }

    fn walk_text_map(
        &mut self,
        node: &Node,
        kind: &Kind,
        path: &str,
        position: Position,
    ) -> Option<YamlValue> {
        let Kind::TextMap {
            noun,
            key: check_key,
            value: check_value,
            quote_values,
        } = kind
        else {
            unreachable!("walk sends only text maps here");
        };
        let entries = match &node.value {
            Value::Mapping(entries) => entries.as_slice(),
            Value::Null => &[],
            _ => {
                self.report_mismatch(node, kind, path, position);
                return None;
            }
        };
        let mut output = serde_yaml::Mapping::new();
        let mut valid = true;
        for entry in entries {
            let entry_path = join_key(path, &entry.key);
            let value = &entry.value;
            let value_position = match value.value {
                Value::Null => entry.key_position,
                _ => value.position,
            };
            self.positions.insert(entry_path.clone(), value_position);
            if let Err(message) = check_key(&entry.key) {
                self.report(entry.key_position, &entry_path, message);
                valid = false;
            }
            let text = match string_of(value) {
                Ok(text) => text,
                Err(found) => {
                    let message = match &value.value {
                        Value::Null => {
                            format!("{noun} values must be strings, write \"\" for an empty value")
                        }
                        Value::Scalar { text, .. } if *quote_values => {
                            format!("{noun} values must be strings, write {text:?} in quotes")
                        }
                        Value::Scalar { .. } => {
                            format!("{noun} values must be strings, put the value in quotes")
                        }
                        _ => format!("{noun} values must be strings, found {found}"),
                    };
                    self.report(value_position, &entry_path, message);
                    valid = false;
                    continue;
                }
            };
            if let Err(message) = check_value(text) {
                self.report(value.position, &entry_path, message);
                valid = false;
                continue;
            }
            output.insert(
                YamlValue::String(entry.key.clone()),
                YamlValue::String(text.to_owned()),
            );
        }
        valid.then_some(YamlValue::Mapping(output))
    }

    fn walk_text_list(
        &mut self,
        node: &Node,
        kind: &Kind,
        path: &str,
        position: Position,
    ) -> Option<YamlValue> {
        let Kind::TextList {
            noun,
            item: check_item,
            example,
            allow_empty,
        } = kind
        else {
            unreachable!("walk sends only text lists here");
        };
        let items = self.list_items(node, kind, path, position)?;
        if items.is_empty() && !allow_empty {
            let message = format!(
                "must not be empty, write at least one item such as {example}, or remove {noun}"
            );
            self.report(position, path, message);
            return None;
        }
        let mut output = Vec::new();
        let mut valid = true;
        for (index, item) in items.iter().enumerate() {
            let item_path = format!("{path}[{index}]");
            self.positions.insert(item_path.clone(), item.position);
            let text = match string_of(item) {
                Ok(text) => text,
                Err(found) => {
                    let message = match &item.value {
                        Value::Scalar { text, .. } => {
                            format!("items of {noun} must be strings, write {text:?} in quotes")
                        }
                        Value::Null => format!(
                            "items of {noun} must be strings, found an empty item; write a \
                             value after the \"-\" or remove it"
                        ),
                        _ => format!("items of {noun} must be strings, found {found}"),
                    };
                    self.report(item.position, &item_path, message);
                    valid = false;
                    continue;
                }
            };
            match check_item(text) {
                Ok(()) => output.push(YamlValue::String(text.to_owned())),
                Err(message) => {
                    self.report(item.position, &item_path, message);
                    valid = false;
                }
            }
        }
        valid.then_some(YamlValue::Sequence(output))
    }

    /// Strings, choices, numbers, booleans, durations and memory sizes.
    fn walk_scalar(
        &mut self,
        node: &Node,
        kind: &Kind,
        path: &str,
        position: Position,
    ) -> Option<YamlValue> {
        let Value::Scalar { text, style } = &node.value else {
            self.report_mismatch(node, kind, path, position);
            return None;
        };
        let resolved = yaml::resolve(text, *style);
        let quoted_would_be = yaml::resolve(text, ScalarStyle::Plain);
        let result: Result<YamlValue, String> = match kind {
            Kind::Text(check) => match resolved {
                Resolved::String => check(text).map(|()| YamlValue::String(text.clone())),
                _ => Err(format!(
                    "expected a string, found {text}, write {text:?} in quotes"
                )),
            },
            Kind::Choice(choices) => {
                if resolved == Resolved::String && choices.contains(&text.as_str()) {
                    Ok(YamlValue::String(text.clone()))
                } else {
                    let mut message = format!("must be {}, found {text:?}", choices.join(" or "));
                    if let Some(close) = closest(text, choices.iter().copied()) {
                        message.push_str(&format!(", did you mean {close:?}?"));
                    }
                    Err(message)
                }
            }
            Kind::Integer { min, max } => match resolved {
                Resolved::Integer(number) if (*min..=*max).contains(&number) => {
                    Ok(YamlValue::Number(serde_yaml::Number::from(number as i64)))
                }
                Resolved::Integer(number) => {
                    Err(format!("must be between {min} and {max}, found {number}"))
                }
                Resolved::String if matches!(quoted_would_be, Resolved::Integer(_)) => {
                    Err(format!(
                        "expected a whole number, found the string {text:?}, remove the quotes"
                    ))
                }
                Resolved::String => Err(format!("expected a whole number, found {text:?}")),
                _ => Err(format!("expected a whole number, found {text}")),
            },
            Kind::Number { min, max } => {
                let number = match resolved {
                    Resolved::Integer(number) => Some(number as f64),
                    Resolved::Float(number) if number.is_finite() => Some(number),
                    _ => None,
                };
                match number {
                    Some(number) if (*min..=*max).contains(&number) => {
                        Ok(YamlValue::Number(serde_yaml::Number::from(number)))
                    }
                    Some(_) => Err(format!("must be between {min} and {max}, found {text}")),
                    None if resolved == Resolved::String
                        && matches!(quoted_would_be, Resolved::Integer(_) | Resolved::Float(_)) =>
                    {
                        Err(format!(
                            "expected a number, found the string {text:?}, remove the quotes"
                        ))
                    }
                    None if resolved == Resolved::String => {
                        Err(format!("expected a number such as 0.5, found {text:?}"))
                    }
                    None => Err(format!("expected a number such as 0.5, found {text}")),
                }
            }
            Kind::Bool => match resolved {
                Resolved::Bool(value) => Ok(YamlValue::Bool(value)),
                Resolved::String if matches!(quoted_would_be, Resolved::Bool(_)) => Err(format!(
                    "expected true or false, found the string {text:?}, remove the quotes"
                )),
                _ => {
                    let lower = text.to_ascii_lowercase();
                    let hint = match lower.as_str() {
                        "yes" | "y" | "on" => ", write true",
                        "no" | "n" | "off" => ", write false",
                        _ => "",
                    };
                    Err(format!("expected true or false, found {text:?}{hint}"))
                }
            },
            Kind::Duration { min, max } => match text.parse::<Duration>() {
                Err(error) => Err(error.to_string()),
                Ok(duration) if duration < *min || duration > *max => {
                    Err(duration_range_message(*min, *max, duration))
                }
                Ok(_) => Ok(YamlValue::String(text.clone())),
            },
            Kind::Memory { min } => match text.parse::<Memory>() {
                Err(error) => Err(error.to_string()),
                Ok(memory) if memory < *min => Err(format!(
                    "must be at least {min} (Docker's smallest memory limit), found {text}"
                )),
                Ok(_) if resolved == Resolved::String => Ok(YamlValue::String(text.clone())),
                Ok(memory) => Ok(YamlValue::Number(serde_yaml::Number::from(memory.bytes()))),
            },
            Kind::Signal => match resolved {
                Resolved::String => match super::schema::signal_name(text) {
                    Some(name) => Ok(YamlValue::String(name)),
                    None => Err(unknown_signal(text)),
                },
                Resolved::Integer(number) => {
                    let name = [
                        (1, "SIGHUP"),
                        (2, "SIGINT"),
                        (3, "SIGQUIT"),
                        (9, "SIGKILL"),
                        (10, "SIGUSR1"),
                        (12, "SIGUSR2"),
                        (15, "SIGTERM"),
                        (28, "SIGWINCH"),
                    ]
                    .into_iter()
                    .find(|(n, _)| *n == number)
                    .map_or_else(
                        || "a name such as SIGTERM".to_owned(),
                        |(_, name)| name.to_owned(),
                    );
                    Err(format!(
                        "expected a signal name, found the number {number}; write {name}"
                    ))
                }
                _ => Err(format!(
                    "expected a signal name such as SIGTERM, found {text}"
                )),
            },
            _ => unreachable!("collections are walked elsewhere"),
        };
        match result {
            Ok(value) => Some(value),
            Err(message) => {
                self.report(position, path, message);
                None
            }
        }
    }

    /// Reports a node of the wrong shape, `expected <kind>, found <node>`, at `position`.
    fn report_mismatch(&mut self, node: &Node, kind: &Kind, path: &str, position: Position) {
        let expected = describe_kind(kind);
        let message = match node.value {
            Value::Null => format!("has no value, write {expected}"),
            Value::Mapping(_) | Value::Sequence(_) | Value::Scalar { .. } => {
                let mut message = format!("expected {expected}, found {}", describe_node(node));
                if matches!(kind, Kind::ObjectList(_) | Kind::OneOfList { .. })
                    && matches!(node.value, Value::Mapping(_))
                {
                    message.push_str(", start each item with \"- \"");
                }
                message
            }
        };
        self.report(position, path, message);
    }
}

/// `spec` + `image` gives `spec.image`; the root's children have no leading dot.
fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

/// A map key in a path: `spec.env.PORT`, or `metadata.labels["example.com/team"]` when the
/// key has characters that would make the path ambiguous.
fn join_key(path: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain {
        join(path, key)
    } else {
        format!("{path}[{key:?}]")
    }
}

/// The text of a node that is a string, or a description of what it is instead.
fn string_of(node: &Node) -> Result<&str, String> {
    match &node.value {
        Value::Scalar { text, style } if yaml::resolve(text, *style) == Resolved::String => {
            Ok(text)
        }
        _ => Err(describe_node(node)),
    }
}

/// What a node is, for "found ..." in messages: `"three"`, `500`, `true`, `a list`.
fn describe_node(node: &Node) -> String {
    match &node.value {
        Value::Mapping(_) => "a mapping".to_owned(),
        Value::Sequence(_) => "a list".to_owned(),
        Value::Null => "nothing".to_owned(),
        Value::Scalar { text, style } => match yaml::resolve(text, *style) {
            Resolved::String => format!("{text:?}"),
            _ => text.clone(),
        },
    }
}

/// `"SIGTREM" is not a signal Docker knows, did you mean "SIGTERM"?`
fn unknown_signal(text: &str) -> String {
    let upper = text.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    // Signal names are short: a swap of two letters (TREM) is two edits and still a typo.
    let close = SIGNALS
        .iter()
        .map(|signal| (edit_distance(bare, signal), *signal))
        .filter(|(distance, _)| *distance <= 2 && bare.len() >= 3)
        .min_by_key(|(distance, _)| *distance);
    let suggestion = match close {
        Some((_, close)) => format!("did you mean \"SIG{close}\"?"),
        None => "write a name such as SIGTERM, SIGINT, SIGQUIT or SIGUSR1".to_owned(),
    };
    format!("{text:?} is not a signal Docker knows, {suggestion}")
}

/// What a kind expects, for "expected ..." in messages.
fn describe_kind(kind: &Kind) -> String {
    match kind {
        Kind::Text(_) => "a string".to_owned(),
        Kind::Choice(choices) => choices.join(" or "),
        Kind::Integer { .. } => "a whole number".to_owned(),
        Kind::Number { .. } => "a number such as 0.5".to_owned(),
        Kind::Bool => "true or false".to_owned(),
        Kind::Duration { .. } => "a duration such as 5s".to_owned(),
        Kind::Memory { .. } => "a memory size such as 256Mi".to_owned(),
        Kind::Signal => "a signal name such as SIGTERM".to_owned(),
        Kind::TextMap { .. } => "a mapping of names to strings, such as {NAME: value}".to_owned(),
        Kind::TextList { example, .. } => format!("a list of strings such as {example}"),
        Kind::Object([]) => "an empty mapping, {}".to_owned(),
        Kind::Object(fields) => format!("a mapping with the fields {}", field_names(fields, ", ")),
        Kind::ObjectList(_) => "a list of mappings".to_owned(),
        Kind::OneOf(fields) => format!("a mapping with one of {}", field_names(fields, " or ")),
        Kind::OneOfList { fields, .. } => format!(
            "a list of mappings with one of {} each",
            field_names(fields, " or ")
        ),
        Kind::DurationOrEmpty { .. } => {
            "a duration such as 30s, or {} to wait for `cutover promote`".to_owned()
        }
    }
}

fn field_names(fields: &[Field], separator: &str) -> String {
    let names: Vec<&str> = fields.iter().map(|field| field.name).collect();
    names.join(separator)
}

/// `unknown field "replica", did you mean "replicas"?`, or the list of valid fields.
fn unknown_field(key: &str, fields: &[Field]) -> String {
    if fields.is_empty() {
        return format!("unknown field {key:?}, this mapping takes no fields, write {{}}");
    }
    match closest(key, fields.iter().map(|field| field.name)) {
        Some(close) => format!("unknown field {key:?}, did you mean {close:?}?"),
        None => format!(
            "unknown field {key:?}, valid fields are {}",
            field_names(fields, ", ")
        ),
    }
}

/// The candidate closest to `word` (ignoring case), if it is close enough to be a typo.
fn closest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let word = word.to_lowercase();
    let length = word.chars().count();
    let close_enough = |candidate: &str| (candidate.len() / 3).max(1);
    candidates
        // A word much longer or shorter than a candidate is no typo of it; skipping it keeps
        // a key of half a megabyte from costing a quadratic distance.
        .filter(|candidate| length.abs_diff(candidate.len()) <= close_enough(candidate))
        .map(|candidate| (edit_distance(&word, &candidate.to_lowercase()), candidate))
        .filter(|(distance, candidate)| *distance <= close_enough(candidate))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance, counted in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, a_char) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, b_char) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(a_char != *b_char);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// `must be between 100ms and 5m, found 10m`, or `must be at most 10m` when the range starts
/// at zero.
fn duration_range_message(min: Duration, max: Duration, found: Duration) -> String {
    if min == Duration::from_millis(0) {
        format!("must be at most {max}, found {found}")
    } else {
        format!("must be between {min} and {max}, found {found}")
    }
}

/// The rules that involve more than one field, run on a service that passed the schema.
fn cross_field_diagnostics(
    source: &str,
    service: &Service,
    positions: &Positions,
) -> Vec<Diagnostic> {
    let mut diagnostics = Vec::new();
    let mut report = |path: &str, message: String| {
        let position = positions.get(path).copied().unwrap_or_default();
        diagnostics.push(diagnostic(source, position, path, message));
    };
    // A value the user did not write is shown with ", the default".
    let default_note = |path: &str| {
        if positions.contains_key(path) {
            ""
        } else {
            ", the default"
        }
    };
    let spec = &service.spec;

    if let Some(key_name) = name_from_key(source) {
        if service.metadata.name != key_name {
            let message = format!(
                "{:?} must equal the key's last segment {key_name:?}; rename the service or \
                 store it under the key ending in /services/{}",
                service.metadata.name, service.metadata.name
            );
            report("metadata.name", message);
        }
    }

    let health = &spec.health;
    if health.timeout > health.interval {
        if positions.contains_key("spec.health.timeout") {
            let message = format!(
                "must not be longer than spec.health.interval ({}{}), found {}; shorten the \
                 timeout or lengthen the interval",
                health.interval,
                default_note("spec.health.interval"),
                health.timeout
            );
            report("spec.health.timeout", message);
        } else {
            let message = format!(
                "must not be shorter than spec.health.timeout ({}, the default), found {}; \
                 lengthen the interval or set a shorter timeout",
                health.timeout, health.interval
            );
            report("spec.health.interval", message);
        }
    }

    let release = match &spec.strategy {
        Strategy::BlueGreen(bg) => Some((
            "spec.strategy.blueGreen",
            bg.progress_deadline,
            bg.analysis.as_ref(),
        )),
        Strategy::Canary(canary) => Some((
            "spec.strategy.canary",
            canary.progress_deadline,
            canary.analysis.as_ref(),
        )),
        Strategy::Recreate(_) => None,
    };
    if let Some((strategy_path, progress_deadline, analysis)) = release {
        // previewReplicas above replicas is capped, not refused: `cutover scale web 0`
        // must not turn a valid spec invalid.
        let deadline_path = format!("{strategy_path}.progressDeadline");
        if progress_deadline <= health.start_period {
            if positions.contains_key(&deadline_path) {
                let message = format!(
                    "must be longer than spec.health.startPeriod ({}), found {}, or every \
                     rollout would be aborted before its health checks count",
                    health.start_period, progress_deadline
                );
                report(&deadline_path, message);
            } else {
                let message = format!(
                    "must be shorter than {deadline_path} ({}, the default), found {}; shorten \
                     it or set a longer progressDeadline",
                    progress_deadline, health.start_period
                );
                report("spec.health.startPeriod", message);
            }
        }
        if let Some(analysis) = analysis {
            analysis_diagnostics(&format!("{strategy_path}.analysis"), analysis, &mut report);
        }
    }
    if let Strategy::Canary(canary) = &spec.strategy {
        canary_diagnostics(canary, &mut report);
    }

    // On the host's network every replica listens on the same host port, so two containers
    // of one service can never run at once: not two replicas, and not two colors.
    if spec.network_mode == NetworkMode::Host {
        let mut problems = Vec::new();
        if spec.replicas > 1 {
            problems.push(format!("replicas is {}", spec.replicas));
        }
        match spec.strategy {
            Strategy::BlueGreen(_) => {
                let default = if positions.contains_key("spec.strategy") {
                    ""
                } else {
                    " (the default)"
                };
                problems.push(format!("the strategy is blueGreen{default}"));
            }
            Strategy::Canary(_) => problems.push("the strategy is canary".to_owned()),
            Strategy::Recreate(_) => {}
        }
        if !problems.is_empty() {
            let message = format!(
                "host networking runs one container of the service at a time (each would \
                 listen on host port {}), but {}; set replicas to 1 and strategy to \
                 {{recreate: {{}}}}, or use networkMode: bridge",
                spec.port,
                problems.join(" and ")
            );
            report("spec.networkMode", message);
        }
    }

    let mut seen_volume_targets: BTreeMap<&str, usize> = BTreeMap::new();
    for (index, volume) in spec.volumes.iter().enumerate() {
        let Some(mount) = super::parse_volume(volume) else {
            continue;
        };
        if let Some(first) = seen_volume_targets.insert(mount.target, index) {
            let message = format!(
                "mounts on {} like spec.volumes[{first}]; each path in the container takes \
                 one volume",
                mount.target
            );
            report(&format!("spec.volumes[{index}]"), message);
        }
    }

    let mut seen_routes: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for (index, route) in spec.routes.iter().enumerate() {
        let path = format!("spec.routes[{index}]");
        if route.host.is_none() && route.path_prefix.is_none() {
            let message =
                "a route needs a pathPrefix, a host or both, such as pathPrefix: /api".to_owned();
            report(&path, message);
            continue;
        }
        if let Some(first) = seen_routes.insert(route_key(route), index) {
            let first_path = format!("spec.routes[{first}]");
            let line = positions
                .get(&first_path)
                .map_or(0, |position| position.line);
            let message = format!(
                "matches the same requests as {first_path} (line {line}), remove one of them"
            );
            report(&path, message);
        }
    }

    let mut seen_names: BTreeMap<&str, usize> = BTreeMap::new();
    for (index, side_target) in spec.side_targets.iter().enumerate() {
        if let Some(first) = seen_names.insert(&side_target.name, index) {
            let first_path = format!("spec.sideTargets[{first}]");
            let line = positions
                .get(&first_path)
                .map_or(0, |position| position.line);
            let message = format!(
                "{:?} is already the name of {first_path} (line {line}), choose another name",
                side_target.name
            );
            report(&format!("spec.sideTargets[{index}].name"), message);
        }
    }

    diagnostics
}

/// The rules of an `analysis` (a bake window or a canary step) at `path`.
fn analysis_diagnostics(
    path: &str,
    analysis: &super::Analysis,
    report: &mut impl FnMut(&str, String),
) {
    if analysis.max_error_ratio.is_none() && analysis.max_response_time.is_none() {
        report(
            path,
            "judges nothing: set maxErrorRatio (such as 0.05) or maxResponseTime (such as \
             500ms), or remove analysis"
                .to_owned(),
        );
    }
    if analysis.interval >= analysis.window {
        let message = format!(
            "must be shorter than {path}.window ({}), found {}; the counters would be read \
             once at most",
            analysis.window, analysis.interval
        );
        report(&format!("{path}.interval"), message);
    }
}

/// The rules between a canary's steps: weights only grow, an analysis judges a weight, and
/// nothing follows a pause that waits for `cutover promote` (which skips every step left).
fn canary_diagnostics(canary: &super::Canary, report: &mut impl FnMut(&str, String)) {
    let steps_path = "spec.strategy.canary.steps";
    let has_weight = canary
        .steps
        .iter()
        .any(|step| matches!(step, CanaryStep::Weight(_)));
    if !has_weight {
        report(
            steps_path,
            "has no weight step, so the new revision would get no share of the traffic before \
             the full switch; add a step such as - weight: 10, or use blueGreen"
                .to_owned(),
        );
    }
    let mut last_weight: Option<(usize, u32)> = None;
    let mut waits_for_promote: Option<usize> = None;
    let mut told_unreachable = false;
    for (index, step) in canary.steps.iter().enumerate() {
        let path = format!("{steps_path}[{index}]");
        if let Some(pause) = waits_for_promote
            && !told_unreachable
        {
            told_unreachable = true;
            let message = format!(
                "never runs: the pause of {steps_path}[{pause}] waits for `cutover promote`, \
                 which skips every step after it; give that pause a duration such as 1m, or \
                 remove the steps after it"
            );
            report(&path, message);
        }
        match step {
            CanaryStep::Weight(weight) => {
                if let Some((before, previous)) = last_weight
                    && *weight < previous
                {
                    let message = format!(
                        "{weight} is lower than {steps_path}[{before}].weight ({previous}): a \
                         canary's share of the traffic only grows; reorder the steps"
                    );
                    report(&format!("{path}.weight"), message);
                }
                last_weight = Some((index, *weight));
            }
            CanaryStep::Pause(pause) => {
                if pause.duration.is_none() && waits_for_promote.is_none() {
                    waits_for_promote = Some(index);
                }
            }
            CanaryStep::Analysis(analysis) => {
                let analysis_path = format!("{path}.analysis");
                if has_weight && last_weight.is_none() {
                    report(
                        &analysis_path,
                        "judges no traffic: no weight step comes before it, so the new \
                         revision gets no live requests yet; put a step such as - weight: 10 \
                         before it"
                            .to_owned(),
                    );
                }
                analysis_diagnostics(&analysis_path, analysis, report);
            }
        }
    }
}

/// What a route matches: its host (`None` for any host) and its path prefix, where no prefix
/// means `/`. Two routes with the same key send the same requests to their service.
fn route_key(route: &super::Route) -> (&str, &str) {
    (
        route.host.as_deref().unwrap_or(""),
        route.path_prefix.as_deref().unwrap_or("/"),
    )
}

fn describe_route(route: &super::Route) -> String {
    let (host, prefix) = route_key(route);
    if host.is_empty() {
        format!("path prefix {prefix} on any host")
    } else {
        format!("path prefix {prefix} on host {host}")
    }
}

/// A service and, when its text is known, where each of its fields was written.
struct LocatedService<'a> {
    source: &'a str,
    service: &'a Service,
    positions: Option<&'a Positions>,
}

impl LocatedService<'_> {
    fn diagnostic(&self, path: &str, message: String) -> Diagnostic {
        let position = self
            .positions
            .and_then(|positions| positions.get(path).copied())
            .unwrap_or_default();
        diagnostic(self.source, position, path, message)
    }

    /// `service "library" in manifests/library.yaml`
    fn describe(&self) -> String {
        format!("service {:?} in {}", self.service.name(), self.source)
    }
}

/// Route and name conflicts between services. Each conflict is reported on every service
/// involved, naming the others.
fn set_diagnostics(services: &[LocatedService]) -> Vec<Diagnostic> {
    let mut diagnostics = Vec::new();

    // Which (service, route) pairs claim each route key.
    let mut claims: BTreeMap<(&str, &str), Vec<(usize, usize)>> = BTreeMap::new();
    for (service_index, located) in services.iter().enumerate() {
        for (route_index, route) in located.service.spec.routes.iter().enumerate() {
            claims
                .entry(route_key(route))
                .or_default()
                .push((service_index, route_index));
        }
    }
    for claimants in claims.values() {
        for &(service_index, route_index) in claimants {
            let others: Vec<String> = claimants
                .iter()
                .filter(|(other, _)| *other != service_index)
                .map(|(other, _)| services[*other].describe())
                .collect();
            if others.is_empty() {
                continue;
            }
            let located = &services[service_index];
            let route = &located.service.spec.routes[route_index];
            let message = format!(
                "{} is also claimed by {}; give one of them another host or path prefix",
                describe_route(route),
                others.join(" and ")
            );
            diagnostics.push(located.diagnostic(&format!("spec.routes[{route_index}]"), message));
        }
    }

    let mut by_name: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (index, located) in services.iter().enumerate() {
        by_name
            .entry(located.service.name())
            .or_default()
            .push(index);
    }
    for indexes in by_name.values() {
        for &index in indexes {
            let others: Vec<&str> = indexes
                .iter()
                .filter(|other| **other != index)
                .map(|other| services[*other].source)
                .collect();
            if others.is_empty() {
                continue;
            }
            let located = &services[index];
            let message = format!(
                "{:?} is also the name of the service in {}; each service needs its own name",
                located.service.name(),
                others.join(" and ")
            );
            diagnostics.push(located.diagnostic("metadata.name", message));
        }
    }

    diagnostics.sort();
    diagnostics
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{PullPolicy, defaults};

    const MINIMAL: &str = "apiVersion: cutover.dev/v1\nkind: Service\nmetadata: {name: books}\n\
                           spec: {image: books:1.4.2}\n";

    /// A manifest for `name` with the given routes, each written as a flow mapping.
    fn with_routes(name: &str, routes: &[&str]) -> String {
        let mut text = format!(
            "apiVersion: cutover.dev/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  \
             image: {name}:1\n  routes:\n"
        );
        for route in routes {
            text.push_str(&format!("    - {route}\n"));
        }
        text
    }

    #[test]
    fn a_minimal_manifest_gets_the_documented_defaults() {
        let service = parse_service("books.yaml", MINIMAL).unwrap();
        let spec = &service.spec;
        let blue_green = service
            .blue_green()
            .expect("blue/green is the default strategy");
        for (field, actual, expected) in [
            (
                "imagePullPolicy",
                format!("{:?}", spec.image_pull_policy),
                format!("{:?}", PullPolicy::IfNotPresent),
            ),
            ("replicas", spec.replicas.to_string(), "1".into()),
            ("port", spec.port.to_string(), "80".into()),
            ("health.path", spec.health.path.clone(), "/".into()),
            (
                "health.interval",
                spec.health.interval.to_string(),
                "1s".into(),
            ),
            (
                "health.timeout",
                spec.health.timeout.to_string(),
                "500ms".into(),
            ),
            (
                "health.healthyThreshold",
                spec.health.healthy_threshold.to_string(),
                "1".into(),
            ),
            (
                "health.unhealthyThreshold",
                spec.health.unhealthy_threshold.to_string(),
                "3".into(),
            ),
            (
                "health.startPeriod",
                spec.health.start_period.to_string(),
                "0s".into(),
            ),
            (
                "blueGreen.autoPromote",
                blue_green.auto_promote.to_string(),
                "true".into(),
            ),
            (
                "blueGreen.previewReplicas",
                format!("{:?}", blue_green.preview_replicas),
                "None".into(),
            ),
            (
                "blueGreen.scaleDownDelay",
                blue_green.scale_down_delay.to_string(),
                "10s".into(),
            ),
            (
                "blueGreen.progressDeadline",
                blue_green.progress_deadline.to_string(),
                "2m".into(),
            ),
            (
                "blueGreen.revisionHistoryLimit",
                blue_green.revision_history_limit.to_string(),
                "2".into(),
            ),
            ("env", format!("{:?}", spec.env), "{}".into()),
            ("command", format!("{:?}", spec.command), "None".into()),
            (
                "resources",
                format!("{:?}", spec.resources.is_empty()),
                "true".into(),
            ),
            ("routes", format!("{:?}", spec.routes), "[]".into()),
            (
                "sideTargets",
                format!("{:?}", spec.side_targets),
                "[]".into(),
            ),
        ] {
            assert_eq!(actual, expected, "{field}");
        }
        assert_eq!(spec.replicas, defaults::replicas());
    }

    #[test]
    fn stop_signal_grace_period_and_probe_host_have_defaults_and_normalised_values() {
        let service = parse_service("books.yaml", MINIMAL).unwrap();
        assert_eq!(service.spec.stop_signal(), "SIGTERM");
        assert_eq!(
            service.spec.stop_grace_period(),
            std::time::Duration::from_secs(10)
        );
        assert_eq!(service.spec.stop_grace_period_secs(), 10);
        assert_eq!(service.health_host(), "books");
        // Not written, not serialized: the YAML of an existing spec is what it was.
        let yaml = service.to_yaml();
        for field in ["stopSignal", "stopGracePeriod", "host"] {
            assert!(!yaml.contains(field), "{yaml}");
        }

        for (signal, grace, host, expected) in [
            (
                "usr1",
                "1500ms",
                "books.example.com:8080",
                ("SIGUSR1", 1_500, 2),
            ),
            ("SIGKILL", "0s", "localhost", ("SIGKILL", 0, 0)),
            ("Winch", "1h", "a-b.c", ("SIGWINCH", 3_600_000, 3_600)),
            ("RTMIN+3", "1ms", "x", ("SIGRTMIN+3", 1, 1)),
        ] {
            let text = MINIMAL.replace(
                "spec: {image: books:1.4.2}",
                &format!(
                    "spec: {{image: books:1, stopSignal: {signal}, stopGracePeriod: {grace}, \
                     health: {{host: \"{host}\"}}}}"
                ),
            );
            let service = parse_service("books.yaml", &text).unwrap_or_else(|e| panic!("{e}"));
            let spec = &service.spec;
            assert_eq!(
                (
                    spec.stop_signal(),
                    spec.stop_grace_period().as_millis() as u64,
                    spec.stop_grace_period_secs()
                ),
                expected,
                "{signal} {grace}"
            );
            assert_eq!(service.health_host(), host);
            let again = parse_service("books.yaml", &service.to_yaml()).unwrap();
            assert_eq!(again, service);
        }
    }

    #[test]
    fn a_parsed_manifest_survives_to_yaml_and_back() {
        let books = include_str!("../../manifests/books.yaml");
        let ledger = include_str!("../../manifests/ledger.yaml");
        let search = include_str!("../../manifests/search.yaml");
        let demo = include_str!("../../manifests/demo.yaml");
        let checkout = include_str!("../../manifests/checkout.yaml");
        let canary = include_str!("../../tests/fixtures/valid/canary.yaml");
        let canary_flow = include_str!("../../tests/fixtures/valid/canary-flow.yaml");
        for (name, text) in [
            ("minimal", MINIMAL),
            ("books", books),
            ("ledger", ledger),
            ("search", search),
            ("demo", demo),
            ("checkout", checkout),
            ("canary", canary),
            ("canary-flow", canary_flow),
        ] {
            let service = parse_service(name, text).unwrap_or_else(|e| panic!("{e}"));
            let yaml = service.to_yaml();
            let again = parse_service(name, &yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
            assert_eq!(again, service, "{name} through YAML:\n{yaml}");
            // The daemon and the CLI also carry services as JSON.
            let json = serde_json::to_string(&service).unwrap();
            let from_json: Service = serde_json::from_str(&json).unwrap();
            assert_eq!(from_json, service, "{name} through JSON: {json}");
        }
    }

    #[test]
    fn kv_keys_name_their_service_and_file_paths_do_not() {
        for (source, name) in [
            ("cutover/services/books", Some("books")),
            ("services/books", Some("books")),
            ("a/b/services/books", Some("books")),
            ("cutover/services/books.yaml", None),
            ("manifests/books.yaml", None),
            ("books", None),
            ("cutover/status/books", None),
            ("cutover/services/", None),
            ("cutover/myservices/books", None),
        ] {
            assert_eq!(name_from_key(source), name, "{source}");
        }
    }

    #[test]
    fn the_name_must_match_the_kv_key() {
        assert!(parse_service("cutover/services/books", MINIMAL).is_ok());
        assert!(parse_service("manifests/library.yaml", MINIMAL).is_ok());
        let error = parse_service("cutover/services/library", MINIMAL).unwrap_err();
        assert_eq!(
            error.to_string(),
            "cutover/services/library:3:18: metadata.name: \"books\" must equal the key's last \
             segment \"library\"; rename the service or store it under the key ending in \
             /services/books"
        );
    }

    #[test]
    fn oversize_text_is_refused_before_parsing() {
        let text = format!("{MINIMAL}#{}\n", "x".repeat(MAX_VALUE_BYTES));
        let error = parse_service("big.yaml", &text).unwrap_err();
        assert_eq!(error.len(), 1);
        let start = format!("big.yaml:0:0: the manifest is {} bytes, over", text.len());
        assert!(error.to_string().starts_with(&start), "{error}");
        // Exactly at the limit is still accepted.
        let padding = MAX_VALUE_BYTES - MINIMAL.len() - 2;
        let text = format!("{MINIMAL}#{}\n", "x".repeat(padding));
        assert_eq!(text.len(), MAX_VALUE_BYTES);
        assert!(parse_service("big.yaml", &text).is_ok());
    }

    /// Every character HAProxy's CLI, its map files or its configuration treats specially is
    /// refused in every spec value that reaches HAProxy, with its place and the fix.
    #[test]
    fn values_that_reach_haproxy_refuse_its_metacharacters() {
        let metacharacters = [
            ";", "\\", " ", "\t", "\n", "\r", "\r\n", "\0", "#", "\"", "'", "<<", ">", "`",
            "\u{7f}", "\u{85}", "\u{2028}", "é",
        ];
        for m in metacharacters {
            for (field, path, value) in [
                (
                    "routes: [{pathPrefix: VALUE}]",
                    "spec.routes[0].pathPrefix",
                    format!("/x{m}reload"),
                ),
                (
                    "routes: [{host: VALUE}]",
                    "spec.routes[0].host",
                    format!("x{m}reload.example.com"),
                ),
                (
                    "health: {path: VALUE}",
                    "spec.health.path",
                    format!("/x{m}y"),
                ),
                (
                    "health: {host: VALUE}",
                    "spec.health.host",
                    format!("x{m}y.example.com"),
                ),
            ] {
                // A JSON string is a YAML double-quoted scalar, escapes included.
                let quoted = serde_json::to_string(&value).unwrap();
                let text = format!(
                    "apiVersion: cutover.dev/v1\nkind: Service\nmetadata: {{name: x}}\nspec:\n  \
                     image: x:1\n  {}\n",
                    field.replace("VALUE", &quoted)
                );
                let error = match parse_service("x.yaml", &text) {
                    Ok(_) => panic!("{value:?} in {path} was accepted"),
                    Err(error) => error,
                };
                let first = &error.0[0];
                assert_eq!(
                    (error.len(), first.line, first.path.as_str()),
                    (1, 6, path),
                    "{value:?}: {error}"
                );
                let fix = [
                    "URL-encoded",
                    "percent-encoded",
                    "host name",
                    "remove it",
                    "remove the query",
                ];
                assert!(
                    fix.iter().any(|fix| first.message.contains(fix)),
                    "{value:?}: {error}"
                );
            }
        }
    }

    /// The repro of a stack overflow that killed every daemon: 20,000 levels of "- ".
    #[test]
    fn deep_nesting_is_a_located_diagnostic() {
        let text = format!(
            "apiVersion: cutover.dev/v1\nkind: Service\nmetadata: {{name: x}}\nspec:\n  image: \
             x:1\n  command:\n    {}x\n",
            "- ".repeat(20_000)
        );
        let error = parse_service("cutover/services/x", &text).unwrap_err();
        assert_eq!(
            error.to_string(),
            "cutover/services/x:7:129: spec.command[0][0]...: lists and mappings are nested more \
             than 64 levels deep here; a manifest needs a few levels, remove the extra \
             brackets, dashes or indentation"
        );
    }

    /// A status key holds every diagnostic, so a hostile text must not make them huge.
    #[test]
    fn diagnostics_stay_small_whatever_the_text() {
        let image = "X".repeat(400_000);
        let text = MINIMAL.replace("books:1.4.2", &image);
        let error = parse_service("big.yaml", &text).unwrap_err();
        assert_eq!(error.len(), 1);
        let message = &error.0[0].message;
        assert!(
            message.chars().count() < MAX_MESSAGE_CHARS + 50,
            "{message}"
        );
        assert!(message.starts_with("\"XXXX"), "{message}");
        assert!(message.contains("characters left out"), "{message}");
        // The fix at the end is kept: it quotes the image in lowercase.
        assert!(message.ends_with("xxxx\""), "{message}");

        let keys: String = (0..20_000).map(|i| format!("  k{i}: 1\n")).collect();
        let text = format!("{MINIMAL}{keys}")
            .replace("spec: {image: books:1.4.2}\n", "spec:\n  image: books:1\n");
        let error = parse_service("many.yaml", &text).unwrap_err();
        assert_eq!(error.len(), MAX_DIAGNOSTICS + 1, "{error}");
        assert_eq!(
            error.0[MAX_DIAGNOSTICS].message,
            "19950 more problems are not shown; fix these and validate again"
        );
        assert!(error.to_string().len() < 20_000);
    }

    #[test]
    fn check_set_reports_conflicts_on_every_service_involved() {
        for (case, manifests, expected) in [
            (
                "different routes do not conflict",
                vec![
                    (
                        "a.yaml",
                        with_routes("a", &["{pathPrefix: /a}", "{host: a.example.com}"]),
                    ),
                    (
                        "b.yaml",
                        with_routes("b", &["{pathPrefix: /b}", "{host: b.example.com}"]),
                    ),
                ],
                vec![],
            ),
            (
                "the same prefix on different hosts does not conflict",
                vec![
                    (
                        "a.yaml",
                        with_routes("a", &["{host: a.example.com, pathPrefix: /api}"]),
                    ),
                    (
                        "b.yaml",
                        with_routes("b", &["{host: b.example.com, pathPrefix: /api}"]),
                    ),
                ],
                vec![],
            ),
            (
                "the same path prefix",
                vec![
                    (
                        "a.yaml",
                        with_routes("a", &["{pathPrefix: /a}", "{pathPrefix: /api}"]),
                    ),
                    ("b.yaml", with_routes("b", &["{pathPrefix: /api}"])),
                ],
                vec![
                    "a.yaml:9:7: spec.routes[1]: path prefix /api on any host is also claimed by \
                     service \"b\" in b.yaml; give one of them another host or path prefix",
                    "b.yaml:8:7: spec.routes[0]: path prefix /api on any host is also claimed by \
                     service \"a\" in a.yaml; give one of them another host or path prefix",
                ],
            ),
            (
                "a host alone and the same host with prefix / are the same route",
                vec![
                    ("a.yaml", with_routes("a", &["{host: x.example.com}"])),
                    (
                        "b.yaml",
                        with_routes("b", &["{host: x.example.com, pathPrefix: /}"]),
                    ),
                    (
                        "c.yaml",
                        with_routes("c", &["{host: x.example.com, pathPrefix: /c}"]),
                    ),
                ],
                vec![
                    "a.yaml:8:7: spec.routes[0]: path prefix / on host x.example.com is also \
                     claimed by service \"b\" in b.yaml; give one of them another host or path \
                     prefix",
                    "b.yaml:8:7: spec.routes[0]: path prefix / on host x.example.com is also \
                     claimed by service \"a\" in a.yaml; give one of them another host or path \
                     prefix",
                ],
            ),
            (
                "the same name in two sources",
                vec![
                    ("one/a.yaml", with_routes("a", &["{pathPrefix: /one}"])),
                    ("two/a.yaml", with_routes("a", &["{pathPrefix: /two}"])),
                ],
                vec![
                    "one/a.yaml:4:9: metadata.name: \"a\" is also the name of the service in \
                     two/a.yaml; each service needs its own name",
                    "two/a.yaml:4:9: metadata.name: \"a\" is also the name of the service in \
                     one/a.yaml; each service needs its own name",
                ],
            ),
        ] {
            let files: Vec<(&str, &str)> = manifests
                .iter()
                .map(|(source, text)| (*source, text.as_str()))
                .collect();
            let actual: Vec<String> = match parse_services(&files) {
                Ok(services) => {
                    assert_eq!(services.len(), files.len(), "{case}");
                    vec![]
                }
                Err(diagnostics) => diagnostics.iter().map(ToString::to_string).collect(),
            };
            assert_eq!(actual, expected, "{case}");

            // check_set finds the same conflicts on typed services, without positions.
            let services: Vec<(&str, Service)> = files
                .iter()
                .map(|(source, text)| (*source, parse_service(source, text).unwrap()))
                .collect();
            let borrowed: Vec<(&str, &Service)> = services
                .iter()
                .map(|(source, service)| (*source, service))
                .collect();
            let unlocated: Vec<String> = check_set(&borrowed)
                .iter()
                .map(|d| format!("{}: {}: {}", d.source, d.path, d.message))
                .collect();
            let expected_unlocated: Vec<String> = expected
                .iter()
                .map(|line| {
                    let (source, rest) = line.split_once(':').unwrap();
                    let rest = rest.splitn(3, ':').nth(2).unwrap();
                    format!("{source}:{rest}")
                })
                .collect();
            assert_eq!(unlocated, expected_unlocated, "{case} (check_set)");
        }
    }

    #[test]
    fn parse_services_reports_every_file() {
        let broken = MINIMAL.replace("books:1.4.2", "Books");
        let files = [("good.yaml", MINIMAL), ("broken.yaml", broken.as_str())];
        let error = parse_services(&files).unwrap_err();
        assert_eq!(error.len(), 1);
        assert_eq!(error.0[0].source, "broken.yaml");
    }

    #[test]
    fn a_canary_has_its_steps_in_order_and_the_release_settings_of_blue_green() {
        let text = include_str!("../../tests/fixtures/valid/canary.yaml");
        let service = parse_service("canary.yaml", text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(service.spec.strategy.name(), "canary");
        assert!(service.blue_green().is_none());
        let canary = service.canary().expect("a canary");
        let steps: Vec<String> = canary
            .steps
            .iter()
            .map(|step| match step {
                CanaryStep::Weight(w) => format!("weight {w}"),
                CanaryStep::Pause(p) => format!("pause {:?}", p.duration.map(|d| d.to_string())),
                CanaryStep::Analysis(a) => format!("analysis {}", a.window),
            })
            .collect();
        assert_eq!(
            steps,
            [
                "weight 10",
                "pause Some(\"5m\")",
                "weight 25",
                "analysis 2m",
                "weight 50",
                "pause None",
            ]
        );
        let release = service
            .release()
            .expect("canary releases through two colors");
        assert!(release.auto_promote);
        assert_eq!(release.preview_replicas, None);
        assert_eq!(release.scale_down_delay.to_string(), "30s");
        assert_eq!(release.progress_deadline.to_string(), "5m");
        assert_eq!(release.revision_history_limit, 3);
        assert_eq!(
            release.analysis.map(|a| a.window.to_string()),
            Some("5m".into())
        );
        assert_eq!(release.steps.len(), 6);
        // The defaults are blue/green's.
        let flow = include_str!("../../tests/fixtures/valid/canary-flow.yaml");
        let release = parse_service("flow.yaml", flow).unwrap();
        let release = release.release().unwrap();
        assert_eq!(release.scale_down_delay, defaults::scale_down_delay());
        assert_eq!(release.progress_deadline, defaults::progress_deadline());
        assert_eq!(
            release.revision_history_limit,
            defaults::revision_history_limit()
        );
        assert_eq!(release.analysis, None);
        // A pause without a duration is written back as {}, with one as the duration.
        let yaml = service.to_yaml();
        assert!(yaml.contains("- pause: {}"), "{yaml}");
        assert!(yaml.contains("- pause: 5m"), "{yaml}");
        assert!(yaml.contains("- weight: 10"), "{yaml}");
        // Blue/green gives its own settings and no steps; recreate none.
        let blue_green = parse_service("m.yaml", MINIMAL).unwrap();
        let release = blue_green.release().unwrap();
        assert!(release.steps.is_empty());
        assert_eq!(release.auto_promote, defaults::auto_promote());
        let recreate = MINIMAL.replace(
            "spec: {image: books:1.4.2}",
            "spec: {image: books:1, strategy: {recreate: {}}}",
        );
        assert!(
            parse_service("r.yaml", &recreate)
                .unwrap()
                .release()
                .is_none()
        );
    }

    #[test]
    fn typos_get_a_suggestion_and_other_words_do_not() {
        let fields = [
            "image",
            "imagePullPolicy",
            "replicas",
            "port",
            "env",
            "healthyThreshold",
        ];
        for (word, suggestion) in [
            ("replica", Some("replicas")),
            ("Replicas", Some("replicas")),
            ("imagePullPolice", Some("imagePullPolicy")),
            ("ports", Some("port")),
            ("envs", Some("env")),
            ("healthThreshold", Some("healthyThreshold")),
            ("privileged", None),
            ("name", None),
            ("x", None),
        ] {
            assert_eq!(closest(word, fields.iter().copied()), suggestion, "{word}");
        }
    }
}
