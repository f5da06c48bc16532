//! Maps a key path like `routes[2].pool` back to a line and column in the YAML text.
//!
//! serde gives us typed structs but forgets where each value came from, and semantic errors
//! ("unknown pool", "duplicate name") are found after serde is done. So we read the text a
//! second time with `saphyr-parser`'s event stream, which carries a [`Span`] per node, and keep
//! a small tree of positions. Lookups fall back to the closest existing parent, so every error
//! gets a position even for a key the file leaves out.

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

/// A 1-based line and column, as printed in `FILE:LINE:COL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Pos {
    /// 1-based line.
    pub(crate) line: usize,
    /// 1-based column, in characters.
    pub(crate) col: usize,
}

impl Pos {
    /// The start of the file, for errors that have no better place.
    pub(crate) const START: Pos = Pos { line: 1, col: 1 };

    fn from_span(span: Span) -> Pos {
        // saphyr's `Marker::line` is 1-based and `Marker::col` is 0-based.
        Pos {
            line: span.start.line().max(1),
            col: span.start.col() + 1,
        }
    }
}

/// One step of a key path: a mapping key or a sequence index.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Seg<'a> {
    /// A mapping key.
    Key(&'a str),
    /// A sequence index, 0-based.
    Index(usize),
}

impl<'a> From<&'a str> for Seg<'a> {
    fn from(key: &'a str) -> Self {
        Seg::Key(key)
    }
}

impl From<usize> for Seg<'_> {
    fn from(index: usize) -> Self {
        Seg::Index(index)
    }
}

/// Builds a `[Seg; N]` from keys and indices: `&key_path!["routes", i, "pool"]`.
macro_rules! key_path {
    ($($seg:expr),* $(,)?) => { [$($crate::config::locate::Seg::from($seg)),*] };
}
pub(crate) use key_path;

/// The positions of every node of the first YAML document in a text.
#[derive(Debug, Default)]
pub(crate) struct Locator {
    root: Option<Node>,
}

#[derive(Debug)]
struct Node {
    pos: Pos,
    /// An implicit null (`key:` with nothing after it): point at the key instead.
    empty: bool,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Scalar(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
    Other,
}

/// A mapping or sequence being filled, with the key waiting for its value.
struct Frame {
    node: Node,
    key: Option<Node>,
}

// === impl Locator ===

impl Locator {
    /// Reads `text`; on a YAML error the tree is left empty and every lookup gives 1:1.
    pub(crate) fn new(text: &str) -> Locator {
        Locator {
            root: build(text).unwrap_or(None),
        }
    }

    /// Position of the value at `path`, of its key when the value is empty, or of the
    /// closest existing parent when the path does not exist.
    pub(crate) fn find(&self, path: &[Seg<'_>]) -> Pos {
        let Some(mut node) = self.root.as_ref() else {
            return Pos::START;
        };
        let mut pos = node.pos;
        for seg in path {
            let (key, value) = match (seg, &node.kind) {
                (Seg::Key(want), Kind::Map(entries)) => {
                    match entries.iter().find(|(k, _)| k.is_scalar(want)) {
                        Some((k, v)) => (Some(k), v),
                        None => break,
                    }
                }
                (Seg::Index(i), Kind::Seq(items)) => match items.get(*i) {
                    Some(v) => (None, v),
                    None => break,
                },
                _ => break,
            };
            pos = match (key, value.empty) {
                (Some(k), true) => k.pos,
                _ => value.pos,
            };
            node = value;
        }
        pos
    }

    /// Position of the second `key` of the mapping that starts at `start`, if it has two:
    /// serde positions a duplicate key at the start of its mapping.
    pub(crate) fn second_key(&self, start: Pos, key: &str) -> Option<Pos> {
        let entries = self.root.as_ref()?.mapping_at(start)?;
        let mut keys = entries.iter().filter(|(k, _)| k.is_scalar(key));
        keys.nth(1).map(|(k, _)| k.pos)
    }
}

impl Node {
    fn is_scalar(&self, want: &str) -> bool {
        matches!(&self.kind, Kind::Scalar(s) if s == want)
    }

    /// The entries of the mapping at `pos`, this node or one inside it.
    fn mapping_at(&self, pos: Pos) -> Option<&[(Node, Node)]> {
        match &self.kind {
            Kind::Map(entries) if self.pos == pos => Some(entries),
            Kind::Map(entries) => entries.iter().find_map(|(_, v)| v.mapping_at(pos)),
            Kind::Seq(items) => items.iter().find_map(|v| v.mapping_at(pos)),
            Kind::Scalar(_) | Kind::Other => None,
        }
    }
}

/// Turns the event stream into a tree; `Err` on a YAML error (serde reports those).
fn build(text: &str) -> Result<Option<Node>, saphyr_parser::ScanError> {
    let mut stack: Vec<Frame> = Vec::new();
    let mut root = None;
    for event in Parser::new_from_str(text) {
        let (event, span) = event?;
        let pos = Pos::from_span(span);
        let container = |kind| Frame {
            node: Node {
                pos,
                empty: false,
                kind,
            },
            key: None,
        };
        let node = match event {
            Event::Scalar(value, style, ..) => Node {
                pos,
                empty: value.is_empty() && style == ScalarStyle::Plain,
                kind: Kind::Scalar(value.into_owned()),
            },
            Event::Alias(_) => Node {
                pos,
                empty: false,
                kind: Kind::Other,
            },
            Event::SequenceStart(..) => {
                stack.push(container(Kind::Seq(Vec::new())));
                continue;
            }
            Event::MappingStart(..) => {
                stack.push(container(Kind::Map(Vec::new())));
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(frame) => frame.node,
                None => continue,
            },
            // Only the first document matters: serde rejects files with several.
            Event::DocumentEnd if root.is_some() => break,
            _ => continue,
        };
        attach(&mut stack, &mut root, node);
    }
    Ok(root)
}

/// Adds a finished node to the innermost open container, or makes it the root.
fn attach(stack: &mut [Frame], root: &mut Option<Node>, node: Node) {
    let Some(frame) = stack.last_mut() else {
        root.get_or_insert(node);
        return;
    };
    match &mut frame.node.kind {
        Kind::Seq(items) => items.push(node),
        Kind::Map(entries) => match frame.key.take() {
            Some(key) => entries.push((key, node)),
            None => frame.key = Some(node),
        },
        Kind::Scalar(_) | Kind::Other => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "\
# comment
routes:
  - name: a
    pool:
  - { name: b, pool: web }
empty: {}
";

    fn find(path: &[Seg<'_>]) -> (usize, usize) {
        let pos = Locator::new(YAML).find(path);
        (pos.line, pos.col)
    }

    #[test]
    fn values_are_found_with_1_based_lines_and_columns() {
        assert_eq!(find(&key_path!["routes", 0, "name"]), (3, 11));
        assert_eq!(find(&key_path!["routes", 1, "pool"]), (5, 22));
        assert_eq!(find(&key_path!["routes", 1]), (5, 5));
    }

    #[test]
    fn an_empty_value_points_at_its_key() {
        assert_eq!(find(&key_path!["routes", 0, "pool"]), (4, 5));
    }

    #[test]
    fn a_missing_path_falls_back_to_the_closest_parent() {
        assert_eq!(find(&key_path!["routes", 1, "match", "host"]), (5, 5));
        assert_eq!(find(&key_path!["routes", 7, "pool"]), (3, 3));
        assert_eq!(find(&key_path!["empty", "x"]), (6, 8));
        assert_eq!(find(&key_path!["nothing"]), (2, 1));
    }

    #[test]
    fn the_second_of_two_equal_keys_is_found_from_its_mapping() {
        let yaml = "a: 1\nb:\n  - name: x\n    pool: p\n    pool: q\n  - { k: 1, k: 2 }\na: 2\n";
        let second = |line, col, key| {
            let pos = Locator::new(yaml).second_key(Pos { line, col }, key);
            pos.map(|p| (p.line, p.col))
        };
        assert_eq!(second(1, 1, "a"), Some((7, 1)));
        assert_eq!(second(3, 5, "pool"), Some((5, 5)));
        assert_eq!(second(6, 5, "k"), Some((6, 13)));
        assert_eq!(second(3, 5, "name"), None);
        assert_eq!(second(2, 1, "a"), None);
    }

    #[test]
    fn invalid_yaml_gives_the_start_of_the_file() {
        let pos = Locator::new("a: [").find(&key_path!["a"]);
        assert_eq!(pos, Pos::START);
    }
}
