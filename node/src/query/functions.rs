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
    Ok(())
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
