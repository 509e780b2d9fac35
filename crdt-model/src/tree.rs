//! Minimal-diff writing of JSON trees into automerge maps, and reading them back.
//!
//! Facts arrive as serde structures. They are turned into `serde_json::Value` trees and written
//! key by key: a scalar that is already equal is not written, a map is walked recursively, keys
//! that are gone are deleted, and a list is replaced whole only when it differs. So writing the
//! same tree twice produces no operations at all, and a single changed field produces one.
//! JSON `null` means "absent": the key is deleted, and reading an absent key gives nothing.

use automerge::{
    transaction::Transactable, AutoCommit, AutomergeError, ChangeHash, ObjId, ObjType, ReadDoc,
    ScalarValue, Value,
};
use serde_json::{Map, Number, Value as Json};

/// Writes `new` into the map `obj` so that it reads back equal to `new`, touching only keys
/// that differ.
pub(crate) fn write_map(
    doc: &mut AutoCommit,
    obj: &ObjId,
    new: &Map<String, Json>,
) -> Result<(), AutomergeError> {
    // Delete keys that are gone or now null.
    let stale: Vec<String> = doc
        .keys(obj)
        .filter(|key| new.get(key).is_none_or(Json::is_null))
        .collect();
    for key in stale {
        doc.delete(obj, key.as_str())?;
    }

    for (key, value) in new {
        write_entry(doc, obj, key, value)?;
    }
    Ok(())
}

/// Writes the entries of `new` into the map `obj` like [`write_map`], but leaves keys that
/// `new` does not name alone. A `null` value deletes its key.
pub(crate) fn write_keys(
    doc: &mut AutoCommit,
    obj: &ObjId,
    new: &Map<String, Json>,
) -> Result<(), AutomergeError> {
    for (key, value) in new {
        if value.is_null() {
            if doc.get(obj, key.as_str())?.is_some() {
                doc.delete(obj, key.as_str())?;
            }
        } else {
            write_entry(doc, obj, key, value)?;
        }
    }
    Ok(())
}

fn write_entry(
    doc: &mut AutoCommit,
    obj: &ObjId,
    key: &str,
    value: &Json,
) -> Result<(), AutomergeError> {
    let existing = doc.get(obj, key)?;
    match value {
        Json::Null => Ok(()),
        Json::Object(map) => {
            let child = match existing {
                Some((Value::Object(ObjType::Map), id)) => id,
                _ => doc.put_object(obj, key, ObjType::Map)?,
            };
            write_map(doc, &child, map)
        }
        Json::Array(items) => {
            if let Some((Value::Object(ObjType::List), id)) = &existing {
                if read_list(doc, id, None)? == *items {
                    return Ok(());
                }
            }
            let list = doc.put_object(obj, key, ObjType::List)?;
            for (index, item) in items.iter().enumerate() {
                insert_list_item(doc, &list, index, item)?;
            }
            Ok(())
        }
        scalar => {
            let wanted = to_scalar(scalar);
            if let Some((Value::Scalar(current), _)) = &existing {
                if current.as_ref() == &wanted {
                    return Ok(());
                }
            }
            doc.put(obj, key, wanted)
        }
    }
}

fn insert_list_item(
    doc: &mut AutoCommit,
    list: &ObjId,
    index: usize,
    item: &Json,
) -> Result<(), AutomergeError> {
    match item {
        Json::Object(map) => {
            let child = doc.insert_object(list, index, ObjType::Map)?;
            write_map(doc, &child, map)
        }
        Json::Array(items) => {
            let child = doc.insert_object(list, index, ObjType::List)?;
            for (inner, value) in items.iter().enumerate() {
                insert_list_item(doc, &child, inner, value)?;
            }
            Ok(())
        }
        scalar => doc.insert(list, index, to_scalar(scalar)),
    }
}

fn to_scalar(value: &Json) -> ScalarValue {
    match value {
        Json::Bool(b) => ScalarValue::Boolean(*b),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                ScalarValue::Int(i)
            } else if let Some(u) = n.as_u64() {
                ScalarValue::Uint(u)
            } else {
                ScalarValue::F64(n.as_f64().unwrap_or(0.0))
            }
        }
        Json::String(s) => ScalarValue::Str(s.as_str().into()),
        // Objects and arrays are handled by the callers; null is never written.
        _ => ScalarValue::Null,
    }
}

fn from_scalar(value: &ScalarValue) -> Json {
    match value {
        ScalarValue::Str(s) => Json::String(s.to_string()),
        ScalarValue::Int(i) => Json::Number((*i).into()),
        ScalarValue::Uint(u) => Json::Number((*u).into()),
        ScalarValue::F64(f) => Number::from_f64(*f).map_or(Json::Null, Json::Number),
        ScalarValue::Boolean(b) => Json::Bool(*b),
        ScalarValue::Timestamp(t) => Json::Number((*t).into()),
        ScalarValue::Counter(c) => Json::Number(i64::from(c).into()),
        ScalarValue::Bytes(b) => Json::String(hex_encode(b)),
        ScalarValue::Unknown { .. } | ScalarValue::Null => Json::Null,
    }
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads the map `obj` as a JSON object, at `heads` if given.
pub(crate) fn read_map(
    doc: &AutoCommit,
    obj: &ObjId,
    heads: Option<&[ChangeHash]>,
) -> Result<Map<String, Json>, AutomergeError> {
    // One pass over the map's entries; a lookup per key would search the map again each time.
    let entries = match heads {
        Some(heads) => doc.map_range_at(obj, .., heads),
        None => doc.map_range(obj, ..),
    };
    let mut out = Map::new();
    for entry in entries {
        let id = entry.id();
        let value = Value::from(entry.value);
        out.insert(entry.key.into_owned(), read_value(doc, value, &id, heads)?);
    }
    Ok(out)
}

fn read_list(
    doc: &AutoCommit,
    obj: &ObjId,
    heads: Option<&[ChangeHash]>,
) -> Result<Vec<Json>, AutomergeError> {
    let len = match heads {
        Some(heads) => doc.length_at(obj, heads),
        None => doc.length(obj),
    };
    let mut out = Vec::with_capacity(len);
    for index in 0..len {
        let entry = match heads {
            Some(heads) => doc.get_at(obj, index, heads)?,
            None => doc.get(obj, index)?,
        };
        if let Some((value, id)) = entry {
            out.push(read_value(doc, value, &id, heads)?);
        }
    }
    Ok(out)
}

fn read_value(
    doc: &AutoCommit,
    value: Value<'_>,
    id: &ObjId,
    heads: Option<&[ChangeHash]>,
) -> Result<Json, AutomergeError> {
    Ok(match value {
        Value::Scalar(scalar) => from_scalar(&scalar),
        Value::Object(ObjType::Map) | Value::Object(ObjType::Table) => {
            Json::Object(read_map(doc, id, heads)?)
        }
        Value::Object(ObjType::List) => Json::Array(read_list(doc, id, heads)?),
        Value::Object(ObjType::Text) => {
            let text = match heads {
                Some(heads) => doc.text_at(id, heads)?,
                None => doc.text(id)?,
            };
            Json::String(text)
        }
    })
}

/// Reads the value at `key` of the root map, at `heads` if given.
pub(crate) fn read_root_key(
    doc: &AutoCommit,
    key: &str,
    heads: Option<&[ChangeHash]>,
) -> Result<Option<Json>, AutomergeError> {
    let root = automerge::ROOT;
    let entry = match heads {
        Some(heads) => doc.get_at(&root, key, heads)?,
        None => doc.get(&root, key)?,
    };
    entry
        .map(|(value, id)| read_value(doc, value, &id, heads))
        .transpose()
}

/// Reads the value at `path` (map keys from the root), at `heads` if given. Returns `None` when
/// any step is missing or is not a map.
pub(crate) fn read_path(
    doc: &AutoCommit,
    path: &[String],
    heads: Option<&[ChangeHash]>,
) -> Result<Option<Json>, AutomergeError> {
    let mut obj = automerge::ROOT;
    for (index, key) in path.iter().enumerate() {
        let entry = match heads {
            Some(heads) => doc.get_at(&obj, key.as_str(), heads)?,
            None => doc.get(&obj, key.as_str())?,
        };
        let Some((value, id)) = entry else {
            return Ok(None);
        };
        if index + 1 == path.len() {
            return read_value(doc, value, &id, heads).map(Some);
        }
        match value {
            Value::Object(ObjType::Map) | Value::Object(ObjType::Table) => obj = id,
            _ => return Ok(None),
        }
    }
    Ok(Some(Json::Object(read_map(doc, &obj, heads)?)))
}
