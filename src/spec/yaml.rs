//! A YAML tree that remembers where each node was written (line and column).
//!
//! The validator needs to point at the exact line and column of a bad value, which
//! `serde_yaml` cannot do for every error. This module builds a small tree from yaml-rust2's
//! event parser with a [`Position`] on every node and on every mapping key.
//!
//! It only accepts the plain subset of YAML that a manifest needs, and refuses the rest with a
//! located [`YamlError`]:
//!
//! - anchors (`&name`), aliases (`*name`) and tags (`!!str`) are refused rather than resolved:
//!   a manifest is short, and a reader should see every value where it applies;
//! - a key written twice in one mapping is refused (YAML forbids it; some parsers keep the last);
//! - a second document (`---`) is refused: one manifest holds one service;
//! - keys must be scalars (no `? [a, b]: c`).
//!
//! No text can make it crash: it pulls yaml-rust2's events in a loop and keeps the open
//! collections on its own stack (yaml-rust2's `Parser::load` would recurse once per level),
//! and it refuses collections nested deeper than [`MAX_DEPTH`]. Since no tree is deeper than
//! that, everything that walks a tree recursively afterwards (the validator, `Drop`, `Clone`,
//! serde) is bounded too. Aliases are never expanded.
//!
//! This module does no I/O and knows nothing about manifests.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A 1-based line and column in the source text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl Position {
    /// yaml-rust2's markers have 1-based lines and 0-based columns.
    fn from_marker(marker: Marker) -> Position {
        Position {
            line: marker.line(),
            column: marker.col() + 1,
        }
    }
}

/// How a scalar was written. A plain `8080` is a number, a quoted `"8080"` is a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScalarStyle {
    /// Written without quotes: its type depends on its text (`3`, `true`, `books`).
    Plain,
    /// Written in single or double quotes: always a string.
    Quoted,
    /// Written as a `|` or `>` block: always a string.
    Block,
}

/// A node of the tree and where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub position: Position,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Keys in the order they were written.
    Mapping(Vec<Entry>),
    Sequence(Vec<Node>),
    Scalar {
        text: String,
        style: ScalarStyle,
    },
    /// `~`, `null`, or nothing at all after `key:`.
    Null,
}

/// One `key: value` pair of a mapping.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: String,
    pub key_position: Position,
    pub value: Node,
}

/// Why the text is not a tree we accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    pub position: Position,
    /// The field path where the problem was found, such as `spec.env`; empty at the top or
    /// when the parser could not tell.
    pub path: String,
    pub message: String,
}

/// What a plain scalar means under the YAML 1.2 core schema (the one `serde_yaml` uses).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Resolved {
    Null,
    Bool(bool),
    Integer(i128),
    Float(f64),
    String,
}

/// Resolves a scalar's type from its text and style: quoted and block scalars are strings.
pub fn resolve(text: &str, style: ScalarStyle) -> Resolved {
    if style != ScalarStyle::Plain {
        return Resolved::String;
    }
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Resolved::Null,
        "true" | "True" | "TRUE" => return Resolved::Bool(true),
        "false" | "False" | "FALSE" => return Resolved::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Resolved::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Resolved::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Resolved::Float(f64::NAN),
        _ => {}
    }
    if let Some(integer) = resolve_integer(text) {
        return Resolved::Integer(integer);
    }
    if looks_like_float(text) {
        if let Ok(float) = text.parse::<f64>() {
            return Resolved::Float(float);
        }
    }
    Resolved::String
}

fn resolve_integer(text: &str) -> Option<i128> {
    if let Some(hex) = text.strip_prefix("0x") {
        return i128::from_str_radix(hex, 16).ok();
    }
    if let Some(octal) = text.strip_prefix("0o") {
        return i128::from_str_radix(octal, 8).ok();
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// The core schema's float: `[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`.
fn looks_like_float(text: &str) -> bool {
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(at) => (&unsigned[..at], Some(&unsigned[at + 1..])),
        None => (unsigned, None),
    };
    let (whole, fraction) = match mantissa.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (mantissa, None),
    };
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match fraction {
        Some(fraction) => {
            all_digits(whole) && all_digits(fraction) && !(whole.is_empty() && fraction.is_empty())
        }
        None => !whole.is_empty() && all_digits(whole),
    };
    let exponent_ok = match exponent {
        Some(exponent) => {
            let digits = exponent.strip_prefix(['-', '+']).unwrap_or(exponent);
            !digits.is_empty() && all_digits(digits)
        }
        None => true,
    };
    mantissa_ok && exponent_ok
}

/// How deep collections may nest. A manifest needs 5 levels (`spec.sideTargets[0].env.X`);
/// the limit keeps every walk of the tree shallow, whatever the text holds.
pub const MAX_DEPTH: usize = 64;

/// How many refusals the YAML stage reports before it stops reading: a text made of nothing
/// but aliases or duplicate keys must not turn into hundreds of thousands of messages.
pub const MAX_ERRORS: usize = 20;

/// Parses one YAML document into a tree. `Ok(None)` means the text holds no document at all
/// (empty, or only comments).
///
/// The parse is iterative: yaml-rust2's events are pulled one at a time and collections are
/// built on an explicit stack, so no input makes it recurse. Aliases are never expanded.
///
/// # Errors
/// A syntax error, or collections nested deeper than [`MAX_DEPTH`], stops the parse and is
/// the only error returned. Otherwise every refused construct (anchor, alias, tag, duplicate
/// key, second document, non-scalar key) is reported, in source order, up to [`MAX_ERRORS`].
pub fn parse(text: &str) -> Result<Option<Node>, Vec<YamlError>> {
    let mut builder = TreeBuilder::default();
    let mut parser = Parser::new_from_str(text);
    loop {
        let (event, marker) = match parser.next_token() {
            Ok(next) => next,
            Err(error) => {
                let position = Position::from_marker(*error.marker());
                return Err(vec![YamlError {
                    position,
                    path: String::new(),
                    message: syntax_message(error.info()),
                }]);
            }
        };
        if event == Event::StreamEnd {
            break;
        }
        let opens = matches!(event, Event::SequenceStart(..) | Event::MappingStart(..));
        if opens && builder.stack.len() >= MAX_DEPTH {
            let position = Position::from_marker(marker);
            return Err(vec![YamlError {
                position,
                path: builder.path_within(4),
                message: nesting_message(),
            }]);
        }
        builder.on_event(event, marker);
        if builder.errors.len() >= MAX_ERRORS {
            break;
        }
    }
    if !builder.errors.is_empty() {
        builder.errors.sort_by_key(|error| error.position);
        if builder.errors.len() >= MAX_ERRORS {
            builder.errors.truncate(MAX_ERRORS);
            let last = builder.errors[MAX_ERRORS - 1].position;
            builder.errors.push(YamlError {
                position: last,
                path: String::new(),
                message: format!(
                    "stopped reading after {MAX_ERRORS} problems; fix these and validate again"
                ),
            });
        }
        return Err(builder.errors);
    }
    Ok(builder.root)
}

fn nesting_message() -> String {
    format!(
        "lists and mappings are nested more than {MAX_DEPTH} levels deep here; a manifest \
         needs a few levels, remove the extra brackets, dashes or indentation"
    )
}

/// The scanner's own words, with advice for the mistakes people make most.
fn syntax_message(info: &str) -> String {
    if info.contains("tab") {
        "invalid YAML: a tab is used for indentation, indent with spaces instead".to_owned()
    } else if info.contains("recursion limit") {
        nesting_message()
    } else if info.contains("unknown anchor") {
        "aliases (*name) are not supported, write the value out in full".to_owned()
    } else {
        format!("invalid YAML: {info}; check the indentation and the quotes around this place")
    }
}

/// A collection being built, waiting for its end event.
enum Frame {
    Mapping {
        position: Position,
        entries: Vec<Entry>,
        /// Each key's index in `entries`, so that a mapping of many keys is checked for
        /// duplicates in linear time.
        indexes: HashMap<String, usize>,
        /// The key read last, waiting for its value.
        pending_key: Option<(String, Position)>,
    },
    Sequence {
        position: Position,
        items: Vec<Node>,
    },
}

#[derive(Default)]
struct TreeBuilder {
    stack: Vec<Frame>,
    root: Option<Node>,
    documents: usize,
    errors: Vec<YamlError>,
}

impl TreeBuilder {
    /// The field path of the node about to be added, such as `spec.routes[1]`.
    fn path_here(&self) -> String {
        self.path_within(self.stack.len())
    }

    /// The field path through the first `frames` open collections, with `...` after it when
    /// there are more.
    fn path_within(&self, frames: usize) -> String {
        let mut path = String::new();
        for frame in self.stack.iter().take(frames) {
            match frame {
                Frame::Mapping {
                    pending_key: Some((key, _)),
                    ..
                } if !key.is_empty() => {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(key);
                }
                Frame::Mapping { .. } => {}
                Frame::Sequence { items, .. } => path.push_str(&format!("[{}]", items.len())),
            }
        }
        if self.stack.len() > frames {
            path.push_str("...");
        }
        path
    }

    fn refuse(&mut self, position: Position, message: String) {
        let path = self.path_here();
        self.errors.push(YamlError {
            position,
            path,
            message,
        });
    }

    /// Adds a finished node to the collection being built, or makes it the root.
    fn add(&mut self, node: Node) {
        let Some(frame) = self.stack.last_mut() else {
            // Only the first document becomes the tree; later ones are refused as they start.
            if self.root.is_none() {
                self.root = Some(node);
            }
            return;
        };
        let refusal = match frame {
            Frame::Sequence { position, items } => {
                // Block collections report their start oddly; the first item is exact.
                *position = (*position).min(node.position);
                items.push(node);
                None
            }
            Frame::Mapping {
                position,
                pending_key: pending_key @ None,
                ..
            } => {
                *position = (*position).min(node.position);
                match node.value {
                    Value::Scalar { text, .. } => {
                        *pending_key = Some((text, node.position));
                        None
                    }
                    Value::Null => {
                        *pending_key = Some((String::new(), node.position));
                        None
                    }
                    Value::Mapping(_) | Value::Sequence(_) => {
                        // Keep the tree well formed: the value of this key is kept under "".
                        *pending_key = Some((String::new(), node.position));
                        let message = "a key must be a plain word such as name, not a list or \
                                       a mapping";
                        Some((node.position, message.to_owned()))
                    }
                }
            }
            Frame::Mapping {
                entries,
                indexes,
                pending_key,
                ..
            } => {
                // The arm above took every mapping without a pending key.
                let Some((key, key_position)) = pending_key.take() else {
                    return;
                };
                match indexes.get(&key) {
                    Some(&first) => {
                        let message = format!(
                            "duplicate key {key:?} (first written at line {}), keep only one",
                            entries[first].key_position.line
                        );
                        Some((key_position, message))
                    }
                    None => {
                        indexes.insert(key.clone(), entries.len());
                        entries.push(Entry {
                            key,
                            key_position,
                            value: node,
                        });
                        None
                    }
                }
            }
        };
        if let Some((position, message)) = refusal {
            self.refuse(position, message);
        }
    }

    /// Refuses anchors and tags on a node; both are reported at the node.
    fn refuse_anchor_and_tag(
        &mut self,
        position: Position,
        anchor: usize,
        tag: Option<&yaml_rust2::parser::Tag>,
    ) {
        if anchor != 0 {
            let message = "anchors (&name) are not supported, write the value out in full \
                           where it is used"
                .to_owned();
            self.refuse(position, message);
        }
        if let Some(tag) = tag {
            let message = format!(
                "tags such as {}{} are not supported, remove the tag (quote the value to make \
                 it a string)",
                if tag.handle == "tag:yaml.org,2002:" {
                    "!!"
                } else {
                    &tag.handle
                },
                tag.suffix
            );
            self.refuse(position, message);
        }
    }
}

impl TreeBuilder {
    /// Takes one event of the parser.
    fn on_event(&mut self, event: Event, marker: Marker) {
        let position = Position::from_marker(marker);
        match event {
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
            Event::DocumentStart => {
                self.documents += 1;
                if self.documents == 2 {
                    let message = "a manifest holds one YAML document, remove this \"---\" and \
                                   put each service in its own file"
                        .to_owned();
                    self.errors.push(YamlError {
                        position,
                        path: String::new(),
                        message,
                    });
                }
            }
            Event::Alias(_) => {
                let message =
                    "aliases (*name) are not supported, write the value out in full".to_owned();
                self.refuse(position, message);
                self.add(Node {
                    position,
                    value: Value::Null,
                });
            }
            Event::Scalar(text, style, anchor, tag) => {
                self.refuse_anchor_and_tag(position, anchor, tag.as_ref());
                let style = match style {
                    TScalarStyle::Plain => ScalarStyle::Plain,
                    TScalarStyle::SingleQuoted | TScalarStyle::DoubleQuoted => ScalarStyle::Quoted,
                    TScalarStyle::Literal | TScalarStyle::Folded => ScalarStyle::Block,
                };
                let value = if resolve(&text, style) == Resolved::Null {
                    Value::Null
                } else {
                    Value::Scalar { text, style }
                };
                self.add(Node { position, value });
            }
            Event::SequenceStart(anchor, tag) => {
                self.refuse_anchor_and_tag(position, anchor, tag.as_ref());
                self.stack.push(Frame::Sequence {
                    position,
                    items: Vec::new(),
                });
            }
            Event::MappingStart(anchor, tag) => {
                self.refuse_anchor_and_tag(position, anchor, tag.as_ref());
                self.stack.push(Frame::Mapping {
                    position,
                    entries: Vec::new(),
                    indexes: HashMap::new(),
                    pending_key: None,
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let node = match self.stack.pop() {
                    Some(Frame::Sequence { position, items }) => Node {
                        position,
                        value: Value::Sequence(items),
                    },
                    Some(Frame::Mapping {
                        position, entries, ..
                    }) => Node {
                        position,
                        value: Value::Mapping(entries),
                    },
                    // The parser balances start and end events.
                    None => return,
                };
                self.add(node);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(line: usize, column: usize) -> Position {
        Position { line, column }
    }

    fn scalar(text: &str, style: ScalarStyle, position: Position) -> Node {
        Node {
            position,
            value: Value::Scalar {
                text: text.to_owned(),
                style,
            },
        }
    }

    #[test]
    fn builds_a_tree_with_positions_and_styles() {
        let text = "a: 8080\nb:\n  c: \"8080\"\n  d: [x, ~]\ne:\n  - f\n";
        let root = parse(text).unwrap().unwrap();
        let expected = Node {
            position: at(1, 1),
            value: Value::Mapping(vec![
                Entry {
                    key: "a".into(),
                    key_position: at(1, 1),
                    value: scalar("8080", ScalarStyle::Plain, at(1, 4)),
                },
                Entry {
                    key: "b".into(),
                    key_position: at(2, 1),
                    value: Node {
                        position: at(3, 3),
                        value: Value::Mapping(vec![
                            Entry {
                                key: "c".into(),
                                key_position: at(3, 3),
                                value: scalar("8080", ScalarStyle::Quoted, at(3, 6)),
                            },
                            Entry {
                                key: "d".into(),
                                key_position: at(4, 3),
                                value: Node {
                                    position: at(4, 6),
                                    value: Value::Sequence(vec![
                                        scalar("x", ScalarStyle::Plain, at(4, 7)),
                                        Node {
                                            position: at(4, 10),
                                            value: Value::Null,
                                        },
                                    ]),
                                },
                            },
                        ]),
                    },
                },
                Entry {
                    key: "e".into(),
                    key_position: at(5, 1),
                    value: Node {
                        position: at(6, 3),
                        value: Value::Sequence(vec![scalar("f", ScalarStyle::Plain, at(6, 5))]),
                    },
                },
            ]),
        };
        assert_eq!(root, expected);
    }

    #[test]
    fn empty_text_has_no_document() {
        for text in ["", "# only a comment\n", "\n\n"] {
            assert_eq!(parse(text), Ok(None), "{text:?}");
        }
    }

    #[test]
    fn refuses_what_a_manifest_does_not_need() {
        for (text, line, column, path, start_of_message) in [
            (
                "a: 1\na: 2\n",
                2,
                1,
                "",
                "duplicate key \"a\" (first written at line 1)",
            ),
            ("a:\n  b: 1\n  b: 2\n", 3, 3, "a", "duplicate key \"b\""),
            ("a: &x 1\n", 1, 7, "a", "anchors (&name) are not supported"),
            (
                "a: 1\nb: *x\n",
                2,
                4,
                "",
                "aliases (*name) are not supported",
            ),
            (
                "a: &x 1\nb: *x\n",
                1,
                7,
                "a",
                "anchors (&name) are not supported",
            ),
            (
                "a: !!str 1\n",
                1,
                10,
                "a",
                "tags such as !!str are not supported",
            ),
            (
                "a: 1\n---\nb: 2\n",
                2,
                1,
                "",
                "a manifest holds one YAML document",
            ),
            (
                "a:\n\tb: 1\n",
                2,
                2,
                "",
                "invalid YAML: a tab is used for indentation",
            ),
            ("a: [1, 2\nb: 3\n", 2, 2, "", "invalid YAML: "),
            ("? [a]\n: 1\n", 1, 3, "", "a key must be a plain word"),
        ] {
            let errors = parse(text).unwrap_err();
            let first = &errors[0];
            assert_eq!(
                (first.position, first.path.as_str()),
                (at(line, column), path),
                "{text:?}: {first:?}"
            );
            assert!(
                first.message.starts_with(start_of_message),
                "{text:?}: {}",
                first.message
            );
        }
    }

    /// Every way of nesting, far past the limit: a located error, never a stack overflow.
    #[test]
    fn deep_nesting_is_refused_where_it_goes_too_deep() {
        let levels = 100_000;
        let mapping_levels: String = (0..1000)
            .map(|level| format!("{}k:\n", " ".repeat(level)))
            .collect();
        for (name, text, line, column) in [
            // The scanner looks ahead through flow collections and stops at its own limit.
            (
                "flow sequences",
                format!("a: {}", "[".repeat(levels)),
                1,
                259,
            ),
            (
                "flow mappings",
                format!("a: {}", "{a: ".repeat(levels)),
                1,
                4 + 4 * 63,
            ),
            (
                "block sequences",
                format!("a:\n  {}x", "- ".repeat(levels)),
                2,
                3 + 2 * 63,
            ),
            ("block mappings", mapping_levels, 65, 66),
        ] {
            let errors = parse(&text).unwrap_err();
            assert_eq!(errors.len(), 1, "{name}: {errors:?}");
            let error = &errors[0];
            assert_eq!(error.position, at(line, column), "{name}: {error:?}");
            assert!(
                error
                    .message
                    .starts_with("lists and mappings are nested more than 64 levels deep here"),
                "{name}: {}",
                error.message
            );
        }
        // At the limit, the tree is built.
        let text = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(parse(&text).unwrap().is_some());
    }

    /// A text of nothing but aliases (or any other refusal) is reported in a few lines.
    #[test]
    fn refusals_stop_after_a_limit() {
        let text = format!("a: &x 1\nb: [{}]\n", "*x, ".repeat(100_000));
        let errors = parse(&text).unwrap_err();
        assert_eq!(errors.len(), MAX_ERRORS + 1, "{errors:?}");
        assert!(
            errors[MAX_ERRORS]
                .message
                .starts_with("stopped reading after 20 problems")
        );
        let text: String = (0..50_000).map(|_| "a: 1\n").collect();
        let errors = parse(&text).unwrap_err();
        assert_eq!(errors.len(), MAX_ERRORS + 1, "{errors:?}");
    }

    #[test]
    fn resolves_plain_scalars_like_the_core_schema() {
        use Resolved::*;
        for (text, style, resolved) in [
            ("8080", ScalarStyle::Plain, Integer(8080)),
            ("8080", ScalarStyle::Quoted, String),
            ("-3", ScalarStyle::Plain, Integer(-3)),
            ("0x10", ScalarStyle::Plain, Integer(16)),
            ("0.5", ScalarStyle::Plain, Float(0.5)),
            (".5", ScalarStyle::Plain, Float(0.5)),
            ("1e3", ScalarStyle::Plain, Float(1000.0)),
            ("true", ScalarStyle::Plain, Bool(true)),
            ("yes", ScalarStyle::Plain, String),
            ("~", ScalarStyle::Plain, Null),
            ("", ScalarStyle::Plain, Null),
            ("three", ScalarStyle::Plain, String),
            ("1.2.3", ScalarStyle::Plain, String),
            ("5s", ScalarStyle::Plain, String),
            (".", ScalarStyle::Plain, String),
        ] {
            assert_eq!(resolve(text, style), resolved, "{text:?} {style:?}");
        }
    }
}
