//! SQL functions that fleetmesh registers on every query connection.

use std::cmp::Ordering;

use rusqlite::functions::{Context, FunctionFlags};
use rusqlite::types::ValueRef;
use rusqlite::Connection;

use super::version::{deb_version_cmp, generic_version_cmp, rpm_version_cmp};

/// A version comparison over raw bytes.
type Compare = fn(&[u8], &[u8]) -> Ordering;

/// The version comparison functions, by SQL name.
const VERSION_FUNCTIONS: [(&str, Compare); 3] = [
    ("deb_version_cmp", deb_version_cmp),
    ("rpm_version_cmp", rpm_version_cmp),
    ("version_cmp", generic_version_cmp),
];

/// Registers `deb_version_cmp(a, b)`, `rpm_version_cmp(a, b)` and `version_cmp(a, b)` on
/// `conn`.
///
/// Each returns -1, 0 or 1 as `a` is older than, equal to or newer than `b`, and NULL when
/// either argument is NULL. Numbers are compared by their text form, and text and blobs by
/// their bytes, so no argument makes them fail.
pub fn register_functions(conn: &Connection) -> rusqlite::Result<()> {
    let flags = FunctionFlags::SQLITE_UTF8
        | FunctionFlags::SQLITE_DETERMINISTIC
        | FunctionFlags::SQLITE_INNOCUOUS;
    for (name, compare) in VERSION_FUNCTIONS {
        conn.create_scalar_function(name, 2, flags, move |ctx| {
            let (Some(a), Some(b)) = (argument_bytes(ctx, 0), argument_bytes(ctx, 1)) else {
                return Ok(None);
            };
            let result: i64 = match compare(&a, &b) {
                Ordering::Less => -1,
                Ordering::Equal => 0,
                Ordering::Greater => 1,
            };
            Ok(Some(result))
        })?;
    }
    register_text_functions(conn, flags)
}

/// Largest compiled size of a `regexp` pattern, so one pattern cannot take much memory.
const REGEX_SIZE_MAX: usize = 1 << 20;

/// Registers `regexp(pattern, text)`, which SQLite calls for `text REGEXP pattern`, and
/// `config_value(text, key)`.
///
/// `regexp` uses Rust regex syntax (`(?m)` for line anchors, `(?i)` to ignore case) and returns
/// 1 or 0, or NULL when either argument is NULL. `config_value` reads a keyword-value
/// configuration file such as `sshd_config`: it returns the value of the first line whose
/// keyword equals `key` (ignoring case), before any `Match` block, or NULL when no line sets it.
fn register_text_functions(conn: &Connection, flags: FunctionFlags) -> rusqlite::Result<()> {
    conn.create_scalar_function("regexp", 2, flags, |ctx| {
        let pattern: std::sync::Arc<regex::Regex> = ctx.get_or_create_aux(0, |value| {
            let text = value
                .as_str()
                .map_err(|_| "the regexp pattern must be text".to_string())?;
            regex::RegexBuilder::new(text)
                .size_limit(REGEX_SIZE_MAX)
                .build()
                .map_err(|err| format!("invalid regexp pattern {text:?}: {err}"))
        })?;
        let Some(text) = argument_bytes(ctx, 1) else {
            return Ok(None);
        };
        Ok(Some(i64::from(
            pattern.is_match(&String::from_utf8_lossy(&text)),
        )))
    })?;
    conn.create_scalar_function("config_value", 2, flags, |ctx| {
        let (Some(text), Some(key)) = (argument_bytes(ctx, 0), argument_bytes(ctx, 1)) else {
            return Ok(None);
        };
        Ok(config_value(
            &String::from_utf8_lossy(&text),
            &String::from_utf8_lossy(&key),
        ))
    })
}

/// Returns the value of the first `key value` or `key=value` line of `text`, as `config_value`
/// describes. Surrounding quotes are removed.
pub fn config_value(text: &str, key: &str) -> Option<String> {
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let split = line
            .find(|c: char| c.is_whitespace() || c == '=')
            .unwrap_or(line.len());
        let (keyword, rest) = line.split_at(split);
        if keyword.eq_ignore_ascii_case("match") {
            return None;
        }
        if keyword.eq_ignore_ascii_case(key) {
            let value = rest.trim_start().trim_start_matches('=').trim();
            let value = value
                .strip_prefix('"')
                .and_then(|inner| inner.strip_suffix('"'))
                .unwrap_or(value);
            return Some(value.to_string());
        }
    }
    None
}

/// Returns the bytes of argument `index`, or `None` for NULL.
fn argument_bytes(ctx: &Context<'_>, index: usize) -> Option<Vec<u8>> {
    match ctx.get_raw(index) {
        ValueRef::Null => None,
        ValueRef::Integer(n) => Some(n.to_string().into_bytes()),
        ValueRef::Real(f) => Some(f.to_string().into_bytes()),
        ValueRef::Text(bytes) | ValueRef::Blob(bytes) => Some(bytes.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(conn: &Connection, sql: &str) -> Option<String> {
        conn.query_row(sql, [], |row| row.get::<_, Option<String>>(0))
            .expect("query runs")
    }

    #[test]
    fn regexp_and_config_value() {
        let conn = Connection::open_in_memory().expect("memory database");
        register_functions(&conn).expect("functions");
        let sshd = "'# PermitRootLogin no
  PermitRootLogin  yes
PermitRootLogin no
Match User x
  X11Forwarding yes
'";
        assert_eq!(
            one(
                &conn,
                &format!("SELECT config_value({sshd}, 'permitrootlogin')")
            )
            .as_deref(),
            Some("yes")
        );
        assert_eq!(
            one(
                &conn,
                &format!("SELECT config_value({sshd}, 'X11Forwarding')")
            ),
            None
        );
        assert_eq!(
            one(&conn, "SELECT config_value('Port=2222', 'Port')").as_deref(),
            Some("2222")
        );
        let matched: i64 = conn
            .query_row(
                &format!("SELECT {sshd} REGEXP '(?m)^\\s*PermitRootLogin\\s+yes'"),
                [],
                |row| row.get(0),
            )
            .expect("regexp runs");
        assert_eq!(matched, 1);
        let bad = conn.query_row("SELECT 'a' REGEXP '('", [], |row| row.get::<_, i64>(0));
        assert!(bad
            .unwrap_err()
            .to_string()
            .contains("invalid regexp pattern"));
    }

    fn eval(conn: &Connection, sql: &str) -> Option<i64> {
        conn.query_row(sql, [], |row| row.get(0)).expect(sql)
    }

    #[test]
    fn functions_compare_in_sql() {
        let conn = Connection::open_in_memory().expect("in-memory database");
        register_functions(&conn).expect("register");
        assert_eq!(
            eval(&conn, "SELECT deb_version_cmp('1.0~rc1', '1.0')"),
            Some(-1)
        );
        assert_eq!(
            eval(&conn, "SELECT deb_version_cmp('1:0.9', '2.0')"),
            Some(1)
        );
        assert_eq!(
            eval(&conn, "SELECT rpm_version_cmp('1.0^', '1.0')"),
            Some(1)
        );
        assert_eq!(eval(&conn, "SELECT rpm_version_cmp('1.0', '1.0')"), Some(0));
        assert_eq!(
            eval(&conn, "SELECT version_cmp('3.0.13', '3.0.2')"),
            Some(1)
        );
    }

    #[test]
    fn functions_return_null_for_null() {
        let conn = Connection::open_in_memory().expect("in-memory database");
        register_functions(&conn).expect("register");
        for name in ["deb_version_cmp", "rpm_version_cmp", "version_cmp"] {
            assert_eq!(
                eval(&conn, &format!("SELECT {name}(NULL, '1')")),
                None,
                "{name}"
            );
            assert_eq!(
                eval(&conn, &format!("SELECT {name}('1', NULL)")),
                None,
                "{name}"
            );
        }
    }

    #[test]
    fn functions_accept_numbers_and_blobs() {
        let conn = Connection::open_in_memory().expect("in-memory database");
        register_functions(&conn).expect("register");
        assert_eq!(eval(&conn, "SELECT version_cmp(10, '9')"), Some(1));
        assert_eq!(
            eval(&conn, "SELECT deb_version_cmp(x'ff00', x'ff')"),
            Some(1)
        );
    }

    #[test]
    fn functions_reject_wrong_argument_count() {
        let conn = Connection::open_in_memory().expect("in-memory database");
        register_functions(&conn).expect("register");
        let err = conn
            .query_row("SELECT version_cmp('1')", [], |row| row.get::<_, i64>(0))
            .expect_err("one argument must fail");
        assert!(err.to_string().contains("version_cmp"), "{err}");
    }
}
