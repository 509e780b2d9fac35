//! Rendering of query results as an aligned table, JSON, CSV or NDJSON.

use std::fmt::Write as _;
use std::str::FromStr;

use serde_json::Value as Json;

use super::QueryResult;

/// Widest cell of the table format, in characters. Longer values are cut and end with `…`.
pub const TABLE_CELL_WIDTH_MAX: usize = 60;

/// Output format of [`format_result`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Format {
    /// Columns aligned for reading in a terminal, with a row count and, when the row limit cut
    /// the result, a note. Numbers are right-aligned, NULL is empty, control characters are
    /// escaped (`\n`, `\t`) and cells longer than [`TABLE_CELL_WIDTH_MAX`] are cut.
    Table,
    /// One JSON array of objects, one object per row with the columns as keys, in column order.
    Json,
    /// RFC 4180 CSV: a header line, CRLF line ends, fields quoted where needed.
    Csv,
    /// Newline-delimited JSON: one object per row and line.
    Ndjson,
}

/// Error for a format name that is not one of `table`, `json`, `csv` or `ndjson`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown output format {0:?}; use table, json, csv or ndjson")]
pub struct UnknownFormat(pub String);

impl FromStr for Format {
    type Err = UnknownFormat;

    fn from_str(text: &str) -> Result<Format, UnknownFormat> {
        match text {
            "table" => Ok(Format::Table),
            "json" => Ok(Format::Json),
            "csv" => Ok(Format::Csv),
            "ndjson" => Ok(Format::Ndjson),
            other => Err(UnknownFormat(other.to_string())),
        }
    }
}

/// Renders `result` in `format`. The output ends with a newline unless it is empty (CSV and
/// NDJSON of a result with no columns).
pub fn format_result(result: &QueryResult, format: Format) -> String {
    match format {
        Format::Table => table(result),
        Format::Json => json_array(result),
        Format::Csv => csv(result),
        Format::Ndjson => ndjson(result),
    }
}

fn table(result: &QueryResult) -> String {
    let header: Vec<String> = result.columns.iter().map(|c| table_cell(c)).collect();
    let body: Vec<Vec<(String, bool)>> = result
        .rows
        .iter()
        .map(|row| {
            row.iter()
                .map(|value| (table_cell(&display(value)), value.is_number()))
                .collect()
        })
        .collect();

    // Column widths over the header and every cell.
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &body {
        for (width, (cell, _)) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }

    let mut out = String::new();
    let header_cells = header
        .iter()
        .map(|h| (h.clone(), false))
        .collect::<Vec<_>>();
    push_table_line(&mut out, &header_cells, &widths);
    let rule: Vec<(String, bool)> = widths.iter().map(|&w| ("-".repeat(w), false)).collect();
    push_table_line(&mut out, &rule, &widths);
    for row in &body {
        push_table_line(&mut out, row, &widths);
    }

    let count = result.rows.len();
    let _ = writeln!(out, "({count} {})", if count == 1 { "row" } else { "rows" });
    if result.truncated {
        let _ = writeln!(
            out,
            "note: output stopped at the row limit of {count} rows; narrow the query (WHERE, \
             LIMIT) or raise the row limit"
        );
    }
    out
}

fn push_table_line(out: &mut String, cells: &[(String, bool)], widths: &[usize]) {
    let mut line = String::new();
    for (index, ((cell, right_align), &width)) in cells.iter().zip(widths).enumerate() {
        if index > 0 {
            line.push_str("  ");
        }
        let pad = width.saturating_sub(cell.chars().count());
        if *right_align {
            line.extend(std::iter::repeat_n(' ', pad));
            line.push_str(cell);
        } else {
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', pad));
        }
    }
    out.push_str(line.trim_end());
    out.push('\n');
}

/// Escapes control characters and cuts the text to [`TABLE_CELL_WIDTH_MAX`] characters.
fn table_cell(text: &str) -> String {
    let mut out = String::new();
    let mut width = 0;
    for c in text.chars() {
        let escaped: String = match c {
            '\n' => "\\n".into(),
            '\r' => "\\r".into(),
            '\t' => "\\t".into(),
            c if c.is_control() => c.escape_unicode().to_string(),
            c => c.to_string(),
        };
        let len = escaped.chars().count();
        if width + len > TABLE_CELL_WIDTH_MAX {
            // Leave room for the marker, so the cell is at most the maximum wide.
            while width >= TABLE_CELL_WIDTH_MAX {
                out.pop();
                width -= 1;
            }
            out.push('…');
            return out;
        }
        out.push_str(&escaped);
        width += len;
    }
    out
}

/// Text of a value in the table and CSV formats: NULL is empty, strings are unquoted.
fn display(value: &Json) -> String {
    match value {
        Json::Null => String::new(),
        Json::String(text) => text.clone(),
        other => other.to_string(),
    }
}

fn csv(result: &QueryResult) -> String {
    let mut out = String::new();
    if result.columns.is_empty() {
        return out;
    }
    push_csv_record(&mut out, result.columns.iter().map(String::as_str));
    for row in &result.rows {
        let cells: Vec<String> = row.iter().map(display).collect();
        push_csv_record(&mut out, cells.iter().map(String::as_str));
    }
    out
}

fn push_csv_record<'a>(out: &mut String, fields: impl Iterator<Item = &'a str>) {
    for (index, field) in fields.enumerate() {
        if index > 0 {
            out.push(',');
        }
        if field.contains([',', '"', '\r', '\n']) {
            out.push('"');
            out.push_str(&field.replace('"', "\"\""));
            out.push('"');
        } else {
            out.push_str(field);
        }
    }
    out.push_str("\r\n");
}

fn json_array(result: &QueryResult) -> String {
    if result.rows.is_empty() {
        return "[]\n".to_string();
    }
    let keys = object_keys(&result.columns);
    let mut out = String::from("[\n");
    for (index, row) in result.rows.iter().enumerate() {
        out.push_str("  ");
        push_json_object(&mut out, &keys, row);
        out.push_str(if index + 1 < result.rows.len() {
            ",\n"
        } else {
            "\n"
        });
    }
    out.push_str("]\n");
    out
}

fn ndjson(result: &QueryResult) -> String {
    let keys = object_keys(&result.columns);
    let mut out = String::new();
    for row in &result.rows {
        push_json_object(&mut out, &keys, row);
        out.push('\n');
    }
    out
}

/// Writes one row as a JSON object with keys in column order. serde_json's map would sort
/// the keys, so the object is written by hand.
fn push_json_object(out: &mut String, keys: &[String], row: &[Json]) {
    out.push('{');
    for (index, (key, value)) in keys.iter().zip(row).enumerate() {
        if index > 0 {
            out.push(',');
        }
        out.push_str(&Json::String(key.clone()).to_string());
        out.push(':');
        out.push_str(&value.to_string());
    }
    out.push('}');
}

/// Object keys for the columns. A repeated column name (`SELECT a.name, b.name`) gets a
/// suffix `_2`, `_3`, ... so that no value is lost to a duplicate key.
fn object_keys(columns: &[String]) -> Vec<String> {
    let mut keys: Vec<String> = Vec::with_capacity(columns.len());
    for column in columns {
        let mut key = column.clone();
        let mut suffix = 2;
        while keys.contains(&key) || (key != *column && columns.contains(&key)) {
            key = format!("{column}_{suffix}");
            suffix += 1;
        }
        keys.push(key);
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample(truncated: bool) -> QueryResult {
        QueryResult {
            columns: vec!["hostname".into(), "packages".into(), "note".into()],
            rows: vec![
                vec![json!("web01"), json!(712), json!(null)],
                vec![
                    json!("db-primary"),
                    json!(9),
                    json!("say \"hi\", then\nleave"),
                ],
            ],
            truncated,
        }
    }

    #[test]
    fn table_aligns_columns_and_counts_rows() {
        let out = format_result(&sample(false), Format::Table);
        let expected = "\
hostname    packages  note
----------  --------  ---------------------
web01            712
db-primary         9  say \"hi\", then\\nleave
(2 rows)
";
        assert_eq!(out, expected);
    }

    #[test]
    fn table_notes_truncation() {
        let out = format_result(&sample(true), Format::Table);
        assert!(
            out.contains("note: output stopped at the row limit of 2 rows"),
            "{out}"
        );
    }

    #[test]
    fn table_cuts_long_cells() {
        let long = "x".repeat(500);
        let result = QueryResult {
            columns: vec!["content".into()],
            rows: vec![vec![json!(long)]],
            truncated: false,
        };
        let out = format_result(&result, Format::Table);
        let line = out.lines().nth(2).expect("data line");
        assert_eq!(line.chars().count(), TABLE_CELL_WIDTH_MAX);
        assert!(line.ends_with('…'), "{line}");
    }

    #[test]
    fn csv_quotes_per_rfc_4180() {
        let out = format_result(&sample(false), Format::Csv);
        let expected = "hostname,packages,note\r\n\
                        web01,712,\r\n\
                        db-primary,9,\"say \"\"hi\"\", then\nleave\"\r\n";
        assert_eq!(out, expected);
    }

    #[test]
    fn json_keeps_column_order() {
        let out = format_result(&sample(false), Format::Json);
        let expected = "[\n  {\"hostname\":\"web01\",\"packages\":712,\"note\":null},\n  \
                        {\"hostname\":\"db-primary\",\"packages\":9,\"note\":\"say \\\"hi\\\", then\\nleave\"}\n]\n";
        assert_eq!(out, expected);
        let parsed: Json = serde_json::from_str(&out).expect("valid JSON");
        assert_eq!(parsed[1]["packages"], json!(9));
    }

    #[test]
    fn json_of_no_rows_is_empty_array() {
        let result = QueryResult {
            columns: vec!["a".into()],
            rows: vec![],
            truncated: false,
        };
        assert_eq!(format_result(&result, Format::Json), "[]\n");
        assert_eq!(format_result(&result, Format::Ndjson), "");
        assert_eq!(format_result(&result, Format::Csv), "a\r\n");
    }

    #[test]
    fn ndjson_writes_one_object_per_line() {
        let out = format_result(&sample(false), Format::Ndjson);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2);
        for line in lines {
            let parsed: Json = serde_json::from_str(line).expect("valid JSON line");
            assert!(parsed.is_object());
        }
    }

    #[test]
    fn json_renames_repeated_columns() {
        let columns: Vec<String> = ["name", "name", "name_2"].map(String::from).into();
        assert_eq!(object_keys(&columns), ["name", "name_3", "name_2"]);
    }

    #[test]
    fn format_names_parse() {
        assert_eq!("csv".parse::<Format>(), Ok(Format::Csv));
        let err = "xml".parse::<Format>().expect_err("xml is not a format");
        assert!(err.to_string().contains("\"xml\""), "{err}");
    }
}
