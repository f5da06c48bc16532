//! serde's pass over the config text, going on past the errors it can step over, so that
//! `switchyard check` lists every error of a file rather than its first: a line whose key or
//! value serde refuses is commented out (positions stay), a required key whose value was
//! taken out gets a stand-in value, and the text is parsed again.

use std::path::Path;

use super::error::{self, ConfigError, ConfigErrors};
use super::locate::{Locator, Pos};
use super::Config;

/// How many errors of the serde pass one file reports at most.
const MAX_SERDE_ERRORS: usize = 20;

/// serde's pass over the file, going on past its first error where that is safe:
/// - an unknown key or a bad value on a plain `key: value` line (a scalar, or a flow
///   collection that closes on that line) is reported and the line commented out (so every
///   position stays); when serde then finds the key missing, a stand-in value
///   ([`STAND_INS`]) takes the line instead;
/// - an unknown key or a bad value inside a flow mapping on one line (the
///   `- { addr: ..., weight: 3 }` of SPEC's upstreams) is reported and that `key: value`
///   pair blanked out with spaces (so every column stays); a required key so taken out ends
///   the pass;
/// - a required key that is missing (but a `name`) is reported and a line with a stand-in
///   value put in its mapping, the positions of the lines below kept as they were in the
///   file ([`Edits`]);
/// - a duplicate key on a plain line is reported and its second occurrence commented out.
///
/// Then the text is parsed again. Any other error (YAML syntax, a list item, a block value,
/// a flow value over several lines, a flow mapping without a required key) ends the pass.
/// Returns the config of the last text if it parsed, the errors, and the lines of the
/// mappings that lost a line for a value or got a stand-in (their semantic errors may be
/// caused by the default or stand-in that replaced it).
pub(super) fn deserialize(
    path: &Path,
    text: &str,
) -> (Option<Config>, Vec<ConfigError>, Vec<Repaired>) {
    let mut edits = Edits {
        lines: text.lines().map(str::to_owned).collect(),
        inserted: Vec::new(),
        removed: Vec::new(),
    };
    // YAML breaks lines at these too, and `lines()` does not: positions would not match.
    let odd_breaks = text
        .replace("\r\n", "\n")
        .contains(['\r', '\u{85}', '\u{2028}', '\u{2029}']);
    let mut errors = Vec::new();
    let mut repaired = Vec::new();
    let mut current = std::borrow::Cow::Borrowed(text);
    loop {
        let err = match serde_yaml_ng::from_str::<Config>(&current) {
            Ok(config) => return (Some(config), errors, repaired),
            Err(err) => err,
        };
        let message = err.to_string();
        if let Some(i) = taken_out_required(&edits.removed, &err) {
            // Only missing because its bad value was taken out, which is already reported:
            // a stand-in value lets serde read the rest of the file. Not for a `name`, which
            // other mappings refer to: its stand-in would show up in their errors.
            let taken = edits.removed.swap_remove(i);
            if taken.key == "name" || !stand_in(&mut edits.lines, &taken) {
                return (None, errors, repaired);
            }
            current = std::borrow::Cow::Owned(edits.lines.join("\n"));
            continue;
        }
        let missing = missing_key(&message);
        if edits
            .removed
            .iter()
            .any(|t| missing == Some(t.key.as_str()))
        {
            // Missing, it seems, because a line was taken out, though not found in that
            // line's mapping (an unusual indentation): stop rather than report it.
            return (None, errors, repaired);
        }
        // Positioned in the text serde read; reported as in the file.
        let found: Vec<ConfigError> = serde_error(path, &current, &err).into_iter().collect();
        let at = found.first().map(|e| Pos {
            line: e.line,
            col: e.col,
        });
        errors.extend(found.into_iter().map(|mut e| {
            e.line = edits.in_file(e.line);
            e
        }));
        let Some(at) = at.filter(|_| errors.len() < MAX_SERDE_ERRORS && !odd_breaks) else {
            return (None, errors, repaired);
        };
        let stepped = if let Some(key) = missing {
            edits
                .put_in(&err, key)
                .map(|mapping| repaired.push(mapping))
        } else if let Some((_, rest)) = message.split_once("duplicate field `") {
            let key = rest.split('`').next().unwrap_or_default();
            edits.drop_duplicate(at.line, key)
        } else {
            // An unknown key meant nothing; a bad value's key now takes its default (or a
            // stand-in), which other keys of its mapping may not agree with.
            let unknown = message.contains("unknown field");
            let at = err.location().map(|l| (l.line(), l.column()));
            match (at, error_key(&message)) {
                (Some((line, _)), Some(key))
                    if line >= 1 && plain_key_line(&edits.lines, line - 1, key) =>
                {
                    let mapping = edits.take_out(line, key);
                    (!unknown).then(|| repaired.push(mapping));
                    Some(())
                }
                (Some((line, col)), Some(key)) if line >= 1 => {
                    let text = edits.lines.get(line - 1);
                    text.and_then(|text| flow_pair(text, key, col)).map(|pair| {
                        let mapping = edits.blank_pair(line, pair, key);
                        (!unknown).then(|| repaired.push(mapping));
                    })
                }
                _ => None,
            }
        };
        if stepped.is_none() {
            return (None, errors, repaired);
        }
        let next = edits.lines.join("\n");
        if !is_yaml(&next) {
            // The line was part of something larger (a flow collection, a multi-line
            // scalar): without it the text is not YAML, and what serde said next would be
            // about that.
            return (None, errors, repaired);
        }
        current = std::borrow::Cow::Owned(next);
    }
}

/// The text [`deserialize`] gives serde, as it changed it, and the way back to the file's
/// line numbers.
struct Edits {
    /// The lines of the text, with lines commented out and lines put in.
    lines: Vec<String>,
    /// Lines (1-based, in `lines`) that stand for the same line of the file as the line
    /// above them: each line put in adds one, so the lines below keep their file numbers.
    inserted: Vec<usize>,
    /// The lines commented out for a bad value, whose key may turn out required.
    removed: Vec<TakenOut>,
}

impl Edits {
    /// The file's line number of line `line` of the edited text.
    fn in_file(&self, line: usize) -> usize {
        line - self.inserted.iter().filter(|&&i| i <= line).count()
    }

    /// The lines of a mapping in the edited text, as lines of the file.
    fn range_in_file(
        &self,
        range: std::ops::RangeInclusive<usize>,
    ) -> std::ops::RangeInclusive<usize> {
        self.in_file(*range.start())..=self.in_file(*range.end())
    }

    /// Comments out line `line` (1-based), whose `key` serde refused; its mapping, in lines
    /// of the file.
    fn take_out(&mut self, line: usize, key: &str) -> Repaired {
        let mapping = enclosing_mapping(&self.lines, line - 1);
        let indent = indent(&self.lines[line - 1]);
        self.removed.push(TakenOut {
            line,
            key: key.to_owned(),
            indent,
            mapping: mapping.clone(),
            flow: false,
        });
        self.lines[line - 1].insert(0, '#');
        Repaired {
            lines: self.range_in_file(mapping),
            indent,
            taken: Some((self.in_file(line), key.to_owned())),
        }
    }

    /// Blanks out the `key: value` pair at bytes `pair` of line `line` (1-based), inside a
    /// one-line flow mapping, with a space for each character so that columns stay; that
    /// line, as the mapping (its other keys' rules are not checked).
    fn blank_pair(&mut self, line: usize, pair: std::ops::Range<usize>, key: &str) -> Repaired {
        let text = &mut self.lines[line - 1];
        let spaces: String = text[pair.clone()].chars().map(|_| ' ').collect();
        text.replace_range(pair, &spaces);
        self.removed.push(TakenOut {
            line,
            key: key.to_owned(),
            indent: 0,
            mapping: line..=line,
            flow: true,
        });
        let in_file = self.in_file(line);
        Repaired {
            lines: in_file..=in_file,
            indent: usize::MAX,
            taken: None,
        }
    }

    /// Comments out the second occurrence of `key`, at line `line`, when it is a plain
    /// `key: value` line; the first occurrence stays.
    fn drop_duplicate(&mut self, line: usize, key: &str) -> Option<()> {
        (line >= 1 && plain_key_line(&self.lines, line - 1, key)).then(|| {
            self.lines[line - 1].insert(0, '#');
        })
    }

    /// Puts `key: STAND-IN` at the start of the block mapping serde found it missing from
    /// (serde places the error at the mapping's first key), for the first of [`STAND_INS`]
    /// serde takes; the lines of that mapping, as lines of the file. A list item's dash
    /// moves to the new line, so the item's first line keeps its columns. `None` (nothing
    /// changed) for a `name` (see [`deserialize`]), a flow mapping, or no stand-in taken.
    fn put_in(&mut self, err: &serde_yaml_ng::Error, key: &str) -> Option<Repaired> {
        let at = err.location()?;
        let (line, col) = (at.line(), at.column());
        if key == "name" || line == 0 || col == 0 {
            return None;
        }
        let first = self.lines.get(line - 1)?;
        let split = first.char_indices().nth(col - 1).map(|(i, _)| i)?;
        let (prefix, rest) = first.split_at(split);
        let dash = match prefix.trim() {
            "" => false,
            "-" => true,
            _ => return None,
        };
        if rest.starts_with(['{', '[', '#']) {
            return None;
        }
        let spaces = " ".repeat(prefix.chars().count());
        let (opening, moved) = match dash {
            true => (prefix.to_owned(), format!("{spaces}{rest}")),
            false => (spaces, first.clone()),
        };
        let value = STAND_INS.iter().find(|value| {
            let mut lines = self.lines.clone();
            lines[line - 1] = format!("{opening}{key}: {value}");
            lines.insert(line, moved.clone());
            let text = lines.join("\n");
            match serde_yaml_ng::from_str::<Config>(&text) {
                Ok(_) => true,
                Err(next) => {
                    let message = next.to_string();
                    let same_place = next
                        .location()
                        .is_some_and(|l| (l.line(), l.column()) == (line, col));
                    let here = next.location().is_some_and(|l| l.line() == line);
                    let refused = here && error_key(&message) == Some(key);
                    let still_missing = same_place && missing_key(&message) == Some(key);
                    !refused && !still_missing && is_yaml(&text)
                }
            }
        })?;
        for i in &mut self.inserted {
            *i += usize::from(*i >= line);
        }
        for taken in &mut self.removed {
            // The new line joins a mapping that starts at `line` (it becomes its first line).
            let (start, end) = (*taken.mapping.start(), *taken.mapping.end());
            taken.line += usize::from(taken.line >= line);
            taken.mapping = start + usize::from(start > line)..=end + usize::from(end >= line);
        }
        self.lines[line - 1] = format!("{opening}{key}: {value}");
        self.lines.insert(line, moved);
        self.inserted.push(line + 1);
        // From the line moved down (a list item's dash line would take in the whole list).
        Some(Repaired {
            lines: self.range_in_file(enclosing_mapping(&self.lines, line)),
            indent: col - 1,
            taken: None,
        })
    }
}

/// Whether `text` is YAML, syntax only: unlike a parse into a `Value`, a key given twice in
/// a mapping (which the pass reports and steps over) does not make it fail.
fn is_yaml(text: &str) -> bool {
    saphyr_parser::Parser::new_from_str(text).all(|event| event.is_ok())
}

/// A mapping that lost a line for a bad value, or got a stand-in: the rules its own keys
/// break may be broken only by the default or stand-in, so those errors are left out.
#[derive(Debug)]
pub(super) struct Repaired {
    /// Its lines, in the file.
    lines: std::ops::RangeInclusive<usize>,
    /// The column of its keys, less one.
    indent: usize,
    /// The line (in the file) and key taken out, when it is known that only the rules of
    /// that key, and of those that depend on it ([`depends_on`]), can be broken by its
    /// default; `None`: any rule of the mapping's own keys can.
    taken: Option<(usize, String)>,
}

impl Repaired {
    /// Whether an error on line `line` of the file, `text`, may be caused by the repair: on
    /// one of this mapping's own keys (not a key of a mapping or list nested in it, which
    /// keep their errors), and, when the key taken out is known, on that key's line or a key
    /// whose rule reads it.
    pub(super) fn covers(&self, line: usize, text: &str) -> bool {
        let key_column = |l: &str| l.len() - l.trim_start_matches([' ', '-']).len();
        let Some(l) = text.lines().nth(line - 1) else {
            return false;
        };
        if !self.lines.contains(&line) || key_column(l) > self.indent {
            return false;
        }
        match &self.taken {
            None => true,
            Some((taken_line, key)) => {
                let line_key = l.trim_start_matches([' ', '-']).split(':').next();
                line == *taken_line || line_key.is_some_and(|k| depends_on(k.trim(), key))
            }
        }
    }
}

/// Whether a rule about key `key` reads key `other` of the same mapping, so that `other`
/// taking its default can break it: `hash_key` is refused beside any strategy but
/// `consistent_hash`, a non-loopback admin `bind` needs a `token`, and two routes may not
/// share a `host` and `path_prefix` (reported at the `match` mapping's first key).
fn depends_on(key: &str, other: &str) -> bool {
    matches!(
        (key, other),
        ("hash_key", "strategy")
            | ("bind", "token")
            | ("host", "path_prefix")
            | ("path_prefix", "host")
    )
}

/// The spaces before a line's first other character.
fn indent(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

/// A `key: value` line [`deserialize`] commented out.
struct TakenOut {
    /// 1-based line.
    line: usize,
    key: String,
    /// Spaces before the key.
    indent: usize,
    /// The lines of the mapping it was in.
    mapping: std::ops::RangeInclusive<usize>,
    /// Blanked out of a flow mapping ([`Edits::blank_pair`]): no stand-in can go back.
    flow: bool,
}

/// Values for a required key whose bad value was taken out, tried in turn until serde
/// takes one. Required keys (but `name`, see [`deserialize`]) hold file paths and
/// addresses (any string; a `bind` wants host:port, and port 0 overlaps no other bind) or
/// lists (`certificates`, `endpoints`). The value is never used: the file has an error,
/// and the rules of the mapping it is in are not checked.
const STAND_INS: [&str; 2] = ["\"127.0.0.1:0\"", "[]"];

/// The key a "missing field" error names.
fn missing_key(message: &str) -> Option<&str> {
    let (_, rest) = message.split_once("missing field `")?;
    rest.split('`').next()
}

/// Which line in `removed`, if any, `err` says is missing: a "missing field" error for its
/// key, positioned at the start of the mapping the line was in.
fn taken_out_required(removed: &[TakenOut], err: &serde_yaml_ng::Error) -> Option<usize> {
    let message = err.to_string();
    let key = missing_key(&message)?;
    let at = err.location()?.line();
    removed
        .iter()
        .rposition(|t| t.key == key && t.mapping.contains(&at))
}

/// Puts the key `taken` removed back in `lines` with the first of [`STAND_INS`] serde
/// accepts for it; false (the line left changed) when it accepts none.
fn stand_in(lines: &mut [String], taken: &TakenOut) -> bool {
    if taken.flow {
        return false;
    }
    let indent = " ".repeat(taken.indent);
    STAND_INS.iter().any(|value| {
        lines[taken.line - 1] = format!("{indent}{}: {value}", taken.key);
        match serde_yaml_ng::from_str::<Config>(&lines.join("\n")) {
            Ok(_) => true,
            Err(err) => {
                let here = err.location().is_some_and(|l| l.line() == taken.line);
                !(here && error_key(&err.to_string()) == Some(taken.key.as_str()))
            }
        }
    })
}

/// The key a serde error is about: the field it names as unknown, or the last key of its
/// path (`routes[1].timeout: invalid duration ...`); `None` for a list item or no path.
fn error_key(message: &str) -> Option<&str> {
    if let Some((_, rest)) = message.split_once("unknown field `") {
        return rest.split('`').next();
    }
    let (path, _) = message.split_once(": ")?;
    let last = path.rsplit('.').next()?;
    let plain = !last.is_empty() && !last.contains([' ', '[', ']', '`']);
    plain.then_some(last)
}

/// Whether line `i` is `key: scalar` for this `key`, inside a mapping (no list item, no
/// block value, no flow value that goes on past the line), so that commenting it out
/// removes that key alone. A one-line flow value (`extra: {}`, `listners: []`) is as
/// safe to take out as a scalar.
fn plain_key_line(lines: &[String], i: usize, key: &str) -> bool {
    let Some(line) = lines.get(i) else {
        return false;
    };
    let body = line.trim_start_matches(' ');
    let Some((line_key, value)) = body.split_once(':') else {
        return false;
    };
    let value = value.trim();
    let indent = line.len() - body.len();
    let block_follows = lines[i + 1..]
        .iter()
        .find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .is_some_and(|next| next.len() - next.trim_start_matches(' ').len() > indent);
    !body.starts_with(['-', '#'])
        && line_key == key
        && !value.is_empty()
        && (!value.starts_with(['{', '[']) || one_line_flow(value))
        && !value.starts_with(['|', '>', '&', '*', '!'])
        && !block_follows
}

/// The bytes of `key: value` in a flow mapping on `line`, with the comma that separates it
/// from the next pair (or from the one before, for the last pair), where serde placed an
/// error about `key` at character column `col` (1-based): the key itself or its value.
/// `None` unless the pair is plainly there and its value ends on this line.
fn flow_pair(line: &str, key: &str, col: usize) -> Option<std::ops::Range<usize>> {
    let at = line.char_indices().nth(col.checked_sub(1)?)?.0;
    let skip_spaces = |i: usize| i + (line[i..].len() - line[i..].trim_start().len());
    let (start, value) = match line[at..].strip_prefix(key) {
        Some(rest) if rest.trim_start().starts_with(':') => {
            let colon = skip_spaces(at + key.len());
            (at, skip_spaces(colon + 1))
        }
        _ => {
            let before = line[..at].trim_end().strip_suffix(':')?.trim_end();
            (before.strip_suffix(key)?.len(), at)
        }
    };
    let opener = line[..start].trim_end();
    let first = opener.ends_with('{');
    if !first && !opener.ends_with(',') {
        return None;
    }
    let end = value_end(line, value)?;
    let next = skip_spaces(end);
    match line[next..].chars().next()? {
        ',' => Some(start..next + 1),
        '}' if first => Some(start..end),
        '}' => Some(opener.len() - 1..end),
        _ => None,
    }
}

/// Where the flow value starting at byte `at` of `line` ends (one past it): a quoted string
/// to its closing quote, a nested collection to its closing bracket, a plain scalar to the
/// next `,`, `}` or `]`. `None` when it does not close on the line.
fn value_end(line: &str, at: usize) -> Option<usize> {
    let bytes = line.as_bytes();
    match *bytes.get(at)? {
        b'[' | b'{' => {
            // A nested collection: to its closing bracket, strings inside it skipped.
            let mut depth = 0usize;
            let mut i = at;
            while i < bytes.len() {
                match bytes[i] {
                    b'[' | b'{' => depth += 1,
                    b']' | b'}' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    b'"' | b'\'' => i = value_end(line, i)? - 1,
                    _ => {}
                }
                i += 1;
            }
            None
        }
        b'"' => {
            let mut i = at + 1;
            while i < bytes.len() {
                match bytes[i] {
                    b'\\' => i += 2,
                    b'"' => return Some(i + 1),
                    _ => i += 1,
                }
            }
            None
        }
        b'\'' => {
            let mut i = at + 1;
            while i < bytes.len() {
                if bytes[i] == b'\'' {
                    if bytes.get(i + 1) == Some(&b'\'') {
                        i += 2;
                        continue;
                    }
                    return Some(i + 1);
                }
                i += 1;
            }
            None
        }
        _ => {
            let stop = line[at..].find([',', '}', ']'])?;
            let value = &line[at..at + stop];
            // A comment before the separator: the mapping goes on on a later line.
            if value.contains(" #") || value.contains("\t#") {
                return None;
            }
            Some(at + value.trim_end().len())
        }
    }
}

/// Whether `value`, a flow collection, closes on its own line: alone, it is whole YAML.
fn one_line_flow(value: &str) -> bool {
    serde_yaml_ng::from_str::<serde_yaml_ng::Value>(value).is_ok()
}

/// The lines (1-based) of the mapping line `i` belongs to: its neighbours at the same
/// indentation, up to the list item that opens it.
fn enclosing_mapping(lines: &[String], i: usize) -> std::ops::RangeInclusive<usize> {
    let indent = |l: &str| l.len() - l.trim_start_matches(' ').len();
    let own = indent(&lines[i]);
    if own == 0 {
        // A top-level scalar: no rule ties it to another key.
        return i + 1..=i + 1;
    }
    let in_mapping =
        |l: &String| l.trim().is_empty() || l.trim_start().starts_with('#') || indent(l) >= own;
    let mut first = i;
    while first > 0 && in_mapping(&lines[first - 1]) && !lines[first].trim_start().starts_with("- ")
    {
        first -= 1;
    }
    if first > 0 && !lines[first].trim_start().starts_with("- ") {
        let above = &lines[first - 1];
        if above.trim_start().starts_with("- ") && indent(above) + 2 == own {
            first -= 1;
        }
    }
    let mut last = i;
    while last + 1 < lines.len() && in_mapping(&lines[last + 1]) {
        last += 1;
    }
    first + 1..=last + 1
}

/// Positions a serde error and drops the " at line L column C" its message repeats. serde
/// places a duplicate key at the start of its mapping: it is moved to the second
/// occurrence of the key in `text`, the text serde read.
fn serde_error(path: &Path, text: &str, err: &serde_yaml_ng::Error) -> ConfigErrors {
    let message = err.to_string();
    let error = match err.location() {
        Some(loc) => {
            let (line, col) = (loc.line(), loc.column());
            let message = message.replacen(&format!(" at line {line} column {col}"), "", 1);
            let message = error::in_config_terms(&message);
            let mut pos = Pos { line, col };
            if let Some((_, rest)) = message.split_once("duplicate field `") {
                let key = rest.split('`').next().unwrap_or_default();
                pos = Locator::new(text).second_key(pos, key).unwrap_or(pos);
            }
            ConfigError::new(path, pos, message)
        }
        None => ConfigError::new(path, Pos::START, error::in_config_terms(&message)),
    };
    error.into()
}
