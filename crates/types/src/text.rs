//! Free text: what a field may hold, and how text is shown to a person.
//!
//! Every text field of a message, a request or a record is one of two
//! shapes. A *line* (a title, a marking, a reason, an indicator) is shown on
//! one line of a listing, so it may hold no control character at all, no
//! line or paragraph separator and no bidirectional override: otherwise a
//! sender could forge a line, or reorder one, in another body's `liaison
//! inbox`. A *text* (a summary, an assessment, an alert's text) may span
//! lines and hold tabs, and nothing else that is a control character.
//!
//! Output goes through [`escape_line`] or [`escape_text`], so that even text
//! stored before these rules (or sent by a server we do not trust) cannot
//! move a terminal's cursor, change its colours or forge a line.

use std::borrow::Cow;

use crate::ValidationError;

/// Longest reason (for a retraction, a refusal, a state change), in bytes.
pub const MAX_REASON: usize = 500;

/// Whether `c` would break, reorder or hide a line shown to a person: a
/// control character (C0, DEL, C1), a Unicode line or paragraph separator, a
/// bidirectional embedding, override or isolate.
pub fn breaks_line(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// Whether `c` may not appear in a multi-line text: as [`breaks_line`], but
/// a newline and a tab are allowed.
fn breaks_text(c: char) -> bool {
    c != '\n' && c != '\t' && breaks_line(c)
}

fn check(
    field: &str,
    s: &str,
    min: usize,
    max: usize,
    bad: impl Fn(char) -> bool,
    what: &str,
) -> Result<(), ValidationError> {
    if s.trim().len() < min {
        return Err(ValidationError::new(field, "empty; this field is required"));
    }
    if s.len() > max {
        return Err(ValidationError::new(
            field,
            format!("{} bytes is over the limit of {max} bytes", s.len()),
        ));
    }
    // Printable ASCII is always allowed: most text is nothing else, and
    // this loop over bytes is much faster than one over characters.
    if s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Ok(());
    }
    if let Some(c) = s.chars().find(|c| bad(*c)) {
        return Err(ValidationError::new(
            field,
            format!("contains {}; {what}", escape_char(c)),
        ));
    }
    Ok(())
}

/// Checks a single-line field: at least `min` bytes once trimmed, at most
/// `max`, and nothing that [`breaks_line`].
pub fn check_line(field: &str, s: &str, min: usize, max: usize) -> Result<(), ValidationError> {
    check(
        field,
        s,
        min,
        max,
        breaks_line,
        "this field is one line of plain text",
    )
}

/// Checks a multi-line field: as [`check_line`], but newlines and tabs are
/// allowed.
pub fn check_text(field: &str, s: &str, min: usize, max: usize) -> Result<(), ValidationError> {
    check(
        field,
        s,
        min,
        max,
        breaks_text,
        "use plain text (newlines and tabs are allowed)",
    )
}

/// A reason given for an action (a retraction, a refusal, a state change):
/// trimmed, one line of at most [`MAX_REASON`] bytes, and not empty when
/// `required`. Returns the trimmed reason.
pub fn reason(field: &str, value: &str, required: bool) -> Result<String, ValidationError> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return if required {
            Err(ValidationError::new(
                field,
                format!("empty; give the reason in 1 to {MAX_REASON} printable characters"),
            ))
        } else {
            Ok(String::new())
        };
    }
    check_line(field, trimmed, 1, MAX_REASON)?;
    Ok(trimmed.to_owned())
}

/// `c` as a person can read it in an error message: `U+000A (line feed)`.
fn escape_char(c: char) -> String {
    let name = match c {
        '\n' => " (line feed)",
        '\r' => " (carriage return)",
        '\t' => " (tab)",
        '\u{1b}' => " (escape)",
        '\u{2028}' => " (line separator)",
        '\u{2029}' => " (paragraph separator)",
        '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => " (bidirectional control)",
        _ => " (control character)",
    };
    format!("U+{:04X}{name}", u32::from(c))
}

fn escape(s: &str, bad: fn(char) -> bool) -> Cow<'_, str> {
    if !s.chars().any(bad) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if bad(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `s` for one line of human output: every character that [`breaks_line`]
/// is shown as a `\u{..}` escape.
pub fn escape_line(s: &str) -> Cow<'_, str> {
    escape(s, breaks_line)
}

/// At most the first `max_chars` characters of `s`, escaped as by
/// [`escape_line`]: how a caller's id is echoed back when it may be what is
/// wrong (too long, or not printable).
pub fn escape_line_prefix(s: &str, max_chars: usize) -> String {
    escape_line(&s.chars().take(max_chars).collect::<String>()).into_owned()
}

/// `s` for multi-line human output: as [`escape_line`], but newlines and
/// tabs are kept.
pub fn escape_text(s: &str) -> Cow<'_, str> {
    escape(s, breaks_text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_is_cut_by_characters_then_escaped() {
        assert_eq!(escape_line_prefix("é\nabc", 3), "é\\u{a}a");
        assert_eq!(escape_line_prefix("short", 64), "short");
        assert_eq!(escape_line_prefix(&"x".repeat(100), 64).len(), 64);
    }

    #[test]
    fn a_line_refuses_every_line_break_and_control() {
        for bad in [
            "a\nb",
            "a\rb",
            "a\tb",
            "a\u{1b}[31mb",
            "a\u{7f}b",
            "a\u{85}b",
            "a\u{2028}b",
            "a\u{2029}b",
            "a\u{202e}b",
            "a\u{2067}b",
        ] {
            let err = check_line("body.title", bad, 1, 100).expect_err(bad);
            assert_eq!(err.field, "body.title");
            assert!(err.problem.contains("one line"), "{err}");
        }
        check_line("body.title", "Opération Trident — 2026", 1, 100).unwrap();
    }

    #[test]
    fn a_text_allows_newlines_and_tabs_only() {
        check_text("body.alert.text", "line one\n\tline two", 1, 100).unwrap();
        for bad in ["a\rb", "a\u{1b}b", "a\u{2028}b", "a\u{202e}b"] {
            check_text("body.alert.text", bad, 1, 100).expect_err(bad);
        }
    }

    #[test]
    fn errors_name_the_character_without_echoing_it() {
        let err = check_line("t", "a\nb", 1, 10).unwrap_err();
        assert!(err.problem.contains("U+000A (line feed)"), "{err}");
        assert!(!err.to_string().contains('\n'));
    }

    proptest::proptest! {
        /// The fast path over printable ASCII decides as the rule does.
        #[test]
        fn a_field_is_refused_exactly_when_a_character_breaks_it(
            s in r"(?s)[ -~]{0,40}([\x00-\x1f\x7f-\x{9f}\x{2028}-\x{202e}\x{2066}-\x{2069}é€]|.){0,2}[ -~\t\n]{0,40}"
        ) {
            proptest::prop_assert_eq!(
                check_line("f", &s, 0, usize::MAX).is_ok(),
                !s.chars().any(breaks_line)
            );
            proptest::prop_assert_eq!(
                check_text("f", &s, 0, usize::MAX).is_ok(),
                !s.chars().any(breaks_text)
            );
        }
    }

    #[test]
    fn lengths_are_checked() {
        assert!(check_line("t", "  ", 1, 10).is_err());
        check_line("t", "", 0, 10).unwrap();
        assert!(check_line("t", "abcdefghijk", 1, 10).is_err());
    }

    #[test]
    fn reasons_are_trimmed_lines() {
        assert_eq!(
            reason("reason", "  wrong body  ", true).unwrap(),
            "wrong body"
        );
        assert_eq!(reason("reason", "   ", false).unwrap(), "");
        assert!(reason("reason", "", true).is_err());
        assert!(reason("reason", "two\nlines", false).is_err());
        assert!(reason("reason", &"x".repeat(MAX_REASON + 1), true).is_err());
        assert!(reason("reason", &"x".repeat(MAX_REASON), true).is_ok());
    }

    #[test]
    fn output_escapes_what_could_forge_or_hide_a_line() {
        assert_eq!(escape_line("plain"), Cow::Borrowed("plain"));
        assert_eq!(escape_line("a\nb"), "a\\u{a}b");
        assert_eq!(escape_line("\u{1b}[2J"), "\\u{1b}[2J");
        assert_eq!(escape_text("a\nb\u{1b}"), "a\nb\\u{1b}");
        assert_eq!(escape_text("a\u{202e}b"), "a\\u{202e}b");
    }
}
