//! A node's change history for `fleetmesh history`, read from the `changes` table.
//!
//! The rows come back as [`ChangeRecord`]s, the same type the model builds from a document, so
//! the command prints one shape whether the history came from SQL or from automerge. Tracked
//! file contents carry only their line edits here (see the `changes` table in
//! `crate::query::schema`).

use fleetmesh_model::{Action, ChangeRecord, FactChange, LineEdit};
use rusqlite::types::Type;
use rusqlite::{params, Connection, Row};
use serde::de::DeserializeOwned;
use serde_json::Value as Json;

use super::QueryError;

/// Lists the changes of `node_id` committed between `since` and `until` (Unix seconds, both
/// inclusive, each unbounded when `None`), newest first. A change keeps only the facts that
/// `path` matches (see [`FactChange::matches`]), and a change with none left is dropped.
pub fn node_history(
    conn: &Connection,
    node_id: &str,
    since: Option<i64>,
    until: Option<i64>,
    path: Option<&str>,
) -> Result<Vec<ChangeRecord>, QueryError> {
    let mut stmt = conn.prepare(
        "SELECT seq, time, change_hash, kind, item, field, action, old_value, new_value, lines
         FROM changes
         WHERE node_id = ?1 AND time >= ?2 AND time <= ?3
         ORDER BY seq DESC, rowid",
    )?;
    let rows = stmt.query_map(
        params![
            node_id,
            since.unwrap_or(i64::MIN),
            until.unwrap_or(i64::MAX)
        ],
        |row| {
            let seq: i64 = row.get(0)?;
            let time: i64 = row.get(1)?;
            let hash: String = row.get(2)?;
            Ok((seq, time, hash, fact_from_row(row)?))
        },
    )?;

    let mut out: Vec<ChangeRecord> = Vec::new();
    for row in rows {
        let (seq, time, hash, fact) = row?;
        if path.is_some_and(|filter| !fact.matches(filter)) {
            continue;
        }
        let seq = u64::try_from(seq).unwrap_or(0);
        match out.last_mut() {
            Some(last) if last.seq == seq && last.hash == hash => last.facts.push(fact),
            _ => out.push(ChangeRecord {
                seq,
                time,
                hash,
                facts: vec![fact],
            }),
        }
    }
    Ok(out)
}

/// Reads columns 3 to 9 of a history row.
fn fact_from_row(row: &Row<'_>) -> rusqlite::Result<FactChange> {
    let action: String = row.get(6)?;
    let action: Action = decode(6, &Json::String(action).to_string())?;
    let old: Option<String> = row.get(7)?;
    let new: Option<String> = row.get(8)?;
    let lines: Option<String> = row.get(9)?;
    Ok(FactChange {
        kind: row.get(3)?,
        item: row.get(4)?,
        field: row.get(5)?,
        action,
        old: old.map(|text| decode(7, &text)).transpose()?,
        new: new.map(|text| decode(8, &text)).transpose()?,
        lines: lines
            .map(|text| decode::<Vec<LineEdit>>(9, &text))
            .transpose()?
            .unwrap_or_default(),
    })
}

/// Parses the JSON text of column `index`; text that does not parse is a conversion error.
fn decode<T: DeserializeOwned>(index: usize, text: &str) -> rusqlite::Result<T> {
    serde_json::from_str(text)
        .map_err(|err| rusqlite::Error::FromSqlConversionFailure(index, Type::Text, Box::new(err)))
}
