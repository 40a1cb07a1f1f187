//! Turning byte spans of the TOML text into what an operator can act on: a
//! line and column, and the dotted path of the key at that place.
//!
//! Serde errors from `toml` and the semantic checks of [`crate::config`] both
//! carry a byte span. The key path is found by walking the spanned document
//! tree (`toml::de::DeTable`) and picking the smallest key or value whose span
//! holds the error's span, so a semantic error found long after parsing still
//! names `body[4].outbound.never_share_with[1]`.

use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::error::{Location, PolicyError};

/// The text being read, for locating errors.
pub(crate) struct Source<'a> {
    /// The caller's name for the text.
    pub(crate) name: &'a str,
    /// The text itself.
    pub(crate) text: &'a str,
    /// The parsed document, when parsing got that far.
    pub(crate) root: Option<&'a DeTable<'a>>,
}

impl Source<'_> {
    /// The line and column where `span` starts.
    pub(crate) fn location(&self, span: Option<&Range<usize>>) -> Location {
        let Some(span) = span else {
            return Location {
                source_name: self.name.to_owned(),
                line: 1,
                column: None,
            };
        };
        let mut start = span.start.min(self.text.len());
        while !self.text.is_char_boundary(start) {
            start -= 1;
        }
        let before = &self.text[..start];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        Location {
            source_name: self.name.to_owned(),
            line,
            column: Some(column),
        }
    }

    /// The dotted key path at `span`, or `(top level)`.
    pub(crate) fn key_at(&self, span: Option<&Range<usize>>) -> String {
        let (Some(root), Some(span)) = (self.root, span) else {
            return TOP_LEVEL.to_owned();
        };
        let mut best = Best::default();
        let mut path = Vec::new();
        walk_table(root, span, &mut path, &mut best);
        match best.path {
            Some(p) if !p.is_empty() => render(&p),
            _ => TOP_LEVEL.to_owned(),
        }
    }

    /// An [`PolicyError::Invalid`] at `span`, keyed by the path found there.
    pub(crate) fn invalid(&self, span: &Range<usize>, problem: impl Into<String>) -> PolicyError {
        PolicyError::Invalid {
            location: self.location(Some(span)),
            key: self.key_at(Some(span)),
            problem: problem.into(),
        }
    }

    /// An [`PolicyError::Invalid`] at `span` whose key is given explicitly
    /// (for a key that is missing, so has no span of its own).
    pub(crate) fn invalid_key(
        &self,
        span: Option<&Range<usize>>,
        key: String,
        problem: impl Into<String>,
    ) -> PolicyError {
        PolicyError::Invalid {
            location: self.location(span),
            key,
            problem: problem.into(),
        }
    }
}

/// Shown as the key of errors that are about the whole document.
pub(crate) const TOP_LEVEL: &str = "(top level)";

#[derive(Debug, Clone)]
enum Segment {
    Key(String),
    Index(usize),
}

#[derive(Default)]
struct Best {
    len: usize,
    depth: usize,
    path: Option<Vec<Segment>>,
}

impl Best {
    fn offer(&mut self, candidate: &Range<usize>, target: &Range<usize>, path: &[Segment]) {
        let holds = candidate.start <= target.start && target.end <= candidate.end;
        if !holds {
            return;
        }
        let len = candidate.end - candidate.start;
        // The smallest span wins; on a tie, the deeper path is more specific.
        let better = match self.path {
            None => true,
            Some(_) => len < self.len || (len == self.len && path.len() > self.depth),
        };
        if better {
            self.len = len;
            self.depth = path.len();
            self.path = Some(path.to_vec());
        }
    }
}

fn walk_table(
    table: &DeTable<'_>,
    target: &Range<usize>,
    path: &mut Vec<Segment>,
    best: &mut Best,
) {
    for (key, value) in table.iter() {
        path.push(Segment::Key(key.get_ref().to_string()));
        best.offer(&key.span(), target, path);
        walk_value(value, target, path, best);
        path.pop();
    }
}

fn walk_value(
    value: &Spanned<DeValue<'_>>,
    target: &Range<usize>,
    path: &mut Vec<Segment>,
    best: &mut Best,
) {
    best.offer(&value.span(), target, path);
    match value.get_ref() {
        DeValue::Table(table) => walk_table(table, target, path, best),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push(Segment::Index(i));
                walk_value(item, target, path, best);
                path.pop();
            }
        }
        _ => {}
    }
}

fn render(path: &[Segment]) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
            Segment::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&render_key(k));
            }
        }
    }
    out
}

/// A key as it would be written in TOML: bare when it can be, quoted
/// otherwise (native markings contain spaces).
pub(crate) fn render_key(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        key.to_owned()
    } else {
        format!("\"{}\"", key.escape_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(text: &str) -> Spanned<DeTable<'_>> {
        DeTable::parse(text).expect("test text is valid toml")
    }

    #[test]
    fn finds_line_column_and_key() {
        let text = "a = 1\n[t]\nx = [\"p\", \"q\"]\n[[arr]]\nm = { \"two words\" = 3 }\n";
        let root = source(text);
        let src = Source {
            name: "f.toml",
            text,
            root: Some(root.get_ref()),
        };
        let q = text.find("\"q\"").expect("q in text");
        assert_eq!(src.key_at(Some(&(q..q + 3))), "t.x[1]");
        let loc = src.location(Some(&(q..q + 3)));
        assert_eq!((loc.line, loc.column), (3, Some(11)));
        let three = text.find('3').expect("3 in text");
        assert_eq!(
            src.key_at(Some(&(three..three + 1))),
            "arr[0].m.\"two words\""
        );
        assert_eq!(src.key_at(None), TOP_LEVEL);
    }
}
