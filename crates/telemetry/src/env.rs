//! Environment overrides of a configuration file, as container platforms
//! and systemd drop-ins set them: `LIAISON_HUB__LISTEN=0.0.0.0:7400`
//! replaces `listen` of the hub's file, `LIAISON_NODE__METRICS__LISTEN`
//! replaces `listen` in the node's `[metrics]` table. Segments are
//! separated by two underscores and lowercased. A value is read as a TOML
//! value when it is one (`true`, `42`, `["bob", "carol"]`, `"quoted"`),
//! else as a string (`127.0.0.1:7400`, `/var/lib/liaison`).

use toml::{Table, Value};

/// The file text with every override in `vars` whose name starts with
/// `prefix` applied, and the names applied; `None` when there are none (the
/// text is then used as it is, so that errors keep its line numbers).
///
/// # Errors
/// A variable that names no key, or a key under a value that is not a
/// table, or text that is not TOML; the message names the variable.
pub fn apply(
    text: &str,
    prefix: &str,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Option<(String, Vec<String>)>, String> {
    let mut wanted: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(name, _)| name.starts_with(prefix))
        .collect();
    if wanted.is_empty() {
        return Ok(None);
    }
    wanted.sort();
    let mut table: Table = text
        .parse()
        .map_err(|e: toml::de::Error| e.message().to_owned())?;
    let mut names = Vec::with_capacity(wanted.len());
    for (name, raw) in wanted {
        let path: Vec<String> = name[prefix.len()..]
            .split("__")
            .map(str::to_lowercase)
            .collect();
        if path.iter().any(String::is_empty) {
            return Err(format!(
                "environment variable {name} names no key; write {prefix}KEY or {prefix}TABLE__KEY"
            ));
        }
        set(&mut table, &path, value_of(&raw))
            .map_err(|problem| format!("environment variable {name}: {problem}"))?;
        names.push(name);
    }
    let text = toml::to_string(&table).map_err(|e| e.to_string())?;
    Ok(Some((text, names)))
}

/// A parse error's problem without its `line N, column M: ` prefix, which
/// would point into the merged text, not the file.
pub fn without_position(problem: &str) -> &str {
    match problem.split_once(": ") {
        Some((head, rest)) if head.starts_with("line ") && head.contains(", column ") => rest,
        _ => problem,
    }
}

/// `raw` as a TOML value if it is one, else as a string.
fn value_of(raw: &str) -> Value {
    format!("v = {raw}")
        .parse::<Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(raw.to_owned()))
}

fn set(table: &mut Table, path: &[String], value: Value) -> Result<(), String> {
    let (last, tables) = path.split_last().expect("a path has a key");
    let mut at = table;
    for (i, key) in tables.iter().enumerate() {
        let next = at
            .entry(key.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        at = match next {
            Value::Table(t) => t,
            _ => {
                return Err(format!(
                    "{} is a value, not a table",
                    tables[..=i].join(".")
                ))
            }
        };
    }
    at.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    #[test]
    fn overrides_replace_and_add_keys_at_any_depth() {
        let text = "listen = \"127.0.0.1:1\"\n[limits]\nrequest_timeout_ms = 5\n";
        let (out, names) = apply(
            text,
            "LIAISON_HUB__",
            vars(&[
                ("LIAISON_HUB__LISTEN", "0.0.0.0:7400"),
                ("LIAISON_HUB__LIMITS__REQUEST_TIMEOUT_MS", "30000"),
                ("LIAISON_HUB__METRICS__TLS", "true"),
                ("LIAISON_HUB__RELEASE__APPROVERS", "[\"bob\", \"carol\"]"),
                ("LIAISON_NODE__BODY", "europol"),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap()
        .unwrap();
        let t: Table = out.parse().unwrap();
        assert_eq!(t["listen"].as_str(), Some("0.0.0.0:7400"));
        assert_eq!(t["limits"]["request_timeout_ms"].as_integer(), Some(30000));
        assert_eq!(t["metrics"]["tls"].as_bool(), Some(true));
        assert_eq!(t["release"]["approvers"].as_array().unwrap().len(), 2);
        assert!(!t.contains_key("body"), "another process's prefix");
        assert_eq!(names.len(), 4);
    }

    #[test]
    fn no_override_leaves_the_text_alone_and_bad_ones_are_named() {
        assert_eq!(
            apply("a = 1", "LIAISON_HUB__", vars(&[("HOME", "/")])),
            Ok(None)
        );
        let e = apply("a = 1", "LIAISON_HUB__", vars(&[("LIAISON_HUB__", "x")])).unwrap_err();
        assert!(e.contains("LIAISON_HUB__ names no key"), "{e}");
        let e = apply(
            "a = 1",
            "LIAISON_HUB__",
            vars(&[("LIAISON_HUB__A__B", "x")]),
        )
        .unwrap_err();
        assert!(
            e.contains("LIAISON_HUB__A__B") && e.contains("a is a value"),
            "{e}"
        );
        let e = apply("a = ", "LIAISON_HUB__", vars(&[("LIAISON_HUB__A", "1")])).unwrap_err();
        assert!(!e.is_empty());
        // A quoted value stays a string.
        let (out, _) = apply("", "P__", vars(&[("P__BODY", "\"123\"")]))
            .unwrap()
            .unwrap();
        assert_eq!(out.parse::<Table>().unwrap()["body"].as_str(), Some("123"));
    }
}
