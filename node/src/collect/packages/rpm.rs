//! rpm: the installed-package database, read natively in all three formats rpm has used.
//!
//! | file | format | used by |
//! | --- | --- | --- |
//! | `rpmdb.sqlite` | SQLite, table `Packages(hnum, blob)` | Fedora 33+, RHEL 9, CBL-Mariner |
//! | `Packages.db` | NDB, rpm's own format ([`super::ndb`]) | SUSE since SLE 15 SP3 |
//! | `Packages` | Berkeley DB hash ([`super::bdb`]) | RHEL and CentOS 7 and 8 |
//!
//! The databases are looked for in `/var/lib/rpm` and `/usr/lib/sysimage/rpm`; the first one
//! found is read, in the order of the table. Each record is an rpm header blob, parsed by
//! [`parse_header`].

use std::collections::BTreeMap;

use fleetmesh_model::facts::Package;
use fleetmesh_model::Facts;
use rusqlite::{Connection, OpenFlags};

use super::{bdb, insert_all, ndb};
use crate::collect::add_error;
use crate::collect::context::{Context, ReadError};
use crate::collect::Parsed;

const NAME: &str = "packages.rpm";

/// Largest database read (1 GiB); a large RHEL host's Berkeley DB is a few hundred MiB.
const DATABASE_MAX_BYTES: u64 = 1024 * 1024 * 1024;

/// Directories that hold the rpm database.
const DATABASE_DIRS: [&str; 2] = ["/var/lib/rpm", "/usr/lib/sysimage/rpm"];

/// Largest index count rpm accepts in a header.
const HEADER_TAGS_MAX: usize = 0xffff;
/// Largest data store rpm accepts in a header (256 MiB).
const HEADER_DATA_MAX: usize = 0x0fff_ffff;

const TAG_NAME: u32 = 1000;
const TAG_VERSION: u32 = 1001;
const TAG_RELEASE: u32 = 1002;
const TAG_EPOCH: u32 = 1003;
const TAG_INSTALLTIME: u32 = 1008;
const TAG_ARCH: u32 = 1022;
const TAG_SOURCERPM: u32 = 1044;

const TYPE_INT32: u32 = 4;
const TYPE_STRING: u32 = 6;
const TYPE_STRING_ARRAY: u32 = 8;
const TYPE_I18NSTRING: u32 = 9;

/// Reads the packages of one database file, recording problems as error facts.
type DatabaseReader = fn(&Context, &mut Facts, &str) -> Option<Vec<Package>>;

/// Header blobs by `hnum`, plus the error that ended reading early, if any.
type SqliteBlobs = (Vec<(u32, Vec<u8>)>, Option<String>);

/// Adds the packages of the first rpm database found to `packages`.
pub fn collect(ctx: &Context, facts: &mut Facts, packages: &mut BTreeMap<String, Package>) {
    let formats: [(&str, DatabaseReader); 3] = [
        ("rpmdb.sqlite", read_sqlite),
        ("Packages.db", read_ndb),
        ("Packages", read_bdb),
    ];
    for dir in DATABASE_DIRS {
        for (file, read) in formats {
            let path = format!("{dir}/{file}");
            if !ctx.resolve(&path).exists() {
                continue;
            }
            if let Some(found) = read(ctx, facts, &path) {
                insert_all(packages, found);
            }
            return;
        }
    }
}

fn read_file(ctx: &Context, facts: &mut Facts, path: &str) -> Option<Vec<u8>> {
    match ctx.read(path, DATABASE_MAX_BYTES) {
        Ok(bytes) => Some(bytes),
        Err(ReadError::NotFound) => None,
        Err(ReadError::Failed(message)) => {
            add_error(facts, NAME, Some(path), message);
            None
        }
    }
}

fn read_ndb(ctx: &Context, facts: &mut Facts, path: &str) -> Option<Vec<Package>> {
    let bytes = read_file(ctx, facts, path)?;
    Some(parse_ndb(&bytes).into_value(facts, NAME, path))
}

fn read_bdb(ctx: &Context, facts: &mut Facts, path: &str) -> Option<Vec<Package>> {
    let bytes = read_file(ctx, facts, path)?;
    Some(parse_bdb(&bytes).into_value(facts, NAME, path))
}

/// Parses the packages of an NDB `Packages.db`.
pub fn parse_ndb(bytes: &[u8]) -> Parsed<Vec<Package>> {
    let blobs = ndb::read_blobs(bytes);
    parse_headers(
        blobs.value.iter().map(|(index, blob)| (*index, *blob)),
        blobs.problems,
    )
}

/// Parses the packages of a Berkeley DB `Packages`.
pub fn parse_bdb(bytes: &[u8]) -> Parsed<Vec<Package>> {
    let values = bdb::read_hash_values(bytes);
    let headers = values
        .value
        .iter()
        .enumerate()
        // The record with key 0 contains rpm's next package number, not a header.
        .filter(|(_, value)| value.len() >= 8)
        .map(|(index, value)| (index as u32, value.as_slice()));
    parse_headers(headers, values.problems)
}

fn parse_headers<'a>(
    blobs: impl Iterator<Item = (u32, &'a [u8])>,
    mut problems: Vec<String>,
) -> Parsed<Vec<Package>> {
    let mut packages = Vec::new();
    for (index, blob) in blobs {
        match parse_header(blob) {
            Ok(package) => packages.push(package),
            Err(reason) => problems.push(format!("header {index}: {reason}")),
        }
    }
    Parsed {
        value: packages,
        problems,
    }
}

/// Reads `rpmdb.sqlite`.
///
/// rpm keeps the database in WAL mode, and SQLite creates `-wal` and `-shm` files beside a WAL
/// database even for a read-only connection when it may write there (root may write almost
/// anywhere). So a captured tree is opened with `immutable=1`, which never writes. A live
/// system is opened with `mode=ro` first, which also reads changes still in the WAL, and with
/// `immutable=1` when that fails.
///
/// NOTE: in a captured tree, changes still in a non-empty `-wal` file are not seen.
fn read_sqlite(ctx: &Context, facts: &mut Facts, path: &str) -> Option<Vec<Package>> {
    let host = ctx.resolve(path);
    let Some(host) = host.to_str() else {
        add_error(
            facts,
            NAME,
            Some(path),
            "path is not UTF-8, so SQLite cannot open it",
        );
        return None;
    };
    let escaped = host
        .replace('%', "%25")
        .replace('?', "%3f")
        .replace('#', "%23");

    let attempts: &[&str] = if ctx.live() {
        &["mode=ro", "immutable=1"]
    } else {
        &["immutable=1"]
    };
    let mut last_error = String::new();
    for parameters in attempts {
        match query_sqlite_blobs(&format!("file:{escaped}?{parameters}")) {
            Ok((blobs, query_error)) => {
                let mut parsed = parse_headers(
                    blobs.iter().map(|(hnum, blob)| (*hnum, blob.as_slice())),
                    Vec::new(),
                );
                if let Some(error) = query_error {
                    parsed.problems.push(format!(
                        "reading stopped after {} records: {error}",
                        blobs.len()
                    ));
                }
                return Some(parsed.into_value(facts, NAME, path));
            }
            Err(err) => last_error = err,
        }
    }
    add_error(
        facts,
        NAME,
        Some(path),
        format!("SQLite database could not be read: {last_error}"),
    );
    None
}

/// Returns the header blobs in `hnum` order, plus the error that ended reading early, if any.
/// Fails when the database cannot be opened or queried at all.
fn query_sqlite_blobs(uri: &str) -> Result<SqliteBlobs, String> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let connection = Connection::open_with_flags(uri, flags).map_err(|err| err.to_string())?;
    let mut statement = connection
        .prepare("SELECT hnum, blob FROM Packages ORDER BY hnum")
        .map_err(|err| err.to_string())?;
    let mut rows = statement.query([]).map_err(|err| err.to_string())?;
    let mut blobs = Vec::new();
    loop {
        match rows.next() {
            Ok(Some(row)) => {
                let hnum: i64 = row.get(0).unwrap_or(-1);
                let blob: Vec<u8> = row.get(1).unwrap_or_default();
                blobs.push((u32::try_from(hnum).unwrap_or(u32::MAX), blob));
            }
            Ok(None) => return Ok((blobs, None)),
            Err(err) if blobs.is_empty() => return Err(err.to_string()),
            Err(err) => return Ok((blobs, Some(err.to_string()))),
        }
    }
}

/// One entry of a header's index.
struct IndexEntry {
    tag: u32,
    kind: u32,
    offset: usize,
}

/// Parses an rpm header blob as stored in the database (index count, data length, index
/// entries, data store; all big-endian) into a package.
pub fn parse_header(blob: &[u8]) -> Result<Package, String> {
    let index_count = read_u32_be(blob, 0).ok_or("blob is shorter than 8 bytes")? as usize;
    let data_len = read_u32_be(blob, 4).ok_or("blob is shorter than 8 bytes")? as usize;
    if index_count == 0 || index_count > HEADER_TAGS_MAX || data_len > HEADER_DATA_MAX {
        return Err(format!(
            "implausible header size ({index_count} tags, {data_len} data bytes)"
        ));
    }
    let data_start = 8 + index_count * 16;
    let data = blob.get(data_start..data_start + data_len).ok_or_else(|| {
        format!(
            "blob of {} bytes is shorter than its header says",
            blob.len()
        )
    })?;

    let mut entries = Vec::with_capacity(8);
    for i in 0..index_count {
        let at = 8 + i * 16;
        let tag = read_u32_be(blob, at).unwrap_or(0);
        if matches!(
            tag,
            TAG_NAME
                | TAG_VERSION
                | TAG_RELEASE
                | TAG_EPOCH
                | TAG_INSTALLTIME
                | TAG_ARCH
                | TAG_SOURCERPM
        ) {
            entries.push(IndexEntry {
                tag,
                kind: read_u32_be(blob, at + 4).unwrap_or(0),
                offset: read_u32_be(blob, at + 8).unwrap_or(u32::MAX) as usize,
            });
        }
    }
    let string = |tag: u32| -> Option<String> {
        let entry = entries.iter().find(|entry| entry.tag == tag)?;
        if !matches!(
            entry.kind,
            TYPE_STRING | TYPE_STRING_ARRAY | TYPE_I18NSTRING
        ) {
            return None;
        }
        let rest = data.get(entry.offset..)?;
        let end = rest.iter().position(|byte| *byte == 0)?;
        Some(String::from_utf8_lossy(&rest[..end]).into_owned())
    };
    let int32 = |tag: u32| -> Option<u32> {
        let entry = entries.iter().find(|entry| entry.tag == tag)?;
        (entry.kind == TYPE_INT32).then(|| read_u32_be(data, entry.offset))?
    };

    let name = string(TAG_NAME)
        .filter(|name| !name.is_empty())
        .ok_or("no NAME tag")?;
    let version =
        string(TAG_VERSION).ok_or_else(|| format!("package {name} has no VERSION tag"))?;
    let release =
        string(TAG_RELEASE).ok_or_else(|| format!("package {name} has no RELEASE tag"))?;
    let source = string(TAG_SOURCERPM)
        .and_then(|rpm| source_name(&rpm))
        .filter(|source| *source != name);
    Ok(Package {
        version,
        release: Some(release),
        epoch: int32(TAG_EPOCH).map(u64::from),
        arch: string(TAG_ARCH).filter(|arch| !arch.is_empty()),
        source,
        manager: "rpm".to_string(),
        install_time: int32(TAG_INSTALLTIME).map(i64::from),
        name,
    })
}

/// Returns the package name of a source rpm file name (`curl-7.76.0-6.cm2.src.rpm` -> `curl`).
pub fn source_name(file_name: &str) -> Option<String> {
    let stem = file_name
        .strip_suffix(".src.rpm")
        .or_else(|| file_name.strip_suffix(".nosrc.rpm"))?;
    let mut parts = stem.rsplitn(3, '-');
    let _release = parts.next()?;
    let _version = parts.next()?;
    parts
        .next()
        .filter(|name| !name.is_empty())
        .map(str::to_string)
}

fn read_u32_be(bytes: &[u8], at: usize) -> Option<u32> {
    let slice = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes(slice.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a header blob from (tag, type, data) entries.
    pub(crate) fn header(entries: &[(u32, u32, Vec<u8>)]) -> Vec<u8> {
        let mut index = Vec::new();
        let mut data = Vec::new();
        for (tag, kind, bytes) in entries {
            index.extend_from_slice(&tag.to_be_bytes());
            index.extend_from_slice(&kind.to_be_bytes());
            index.extend_from_slice(&(data.len() as u32).to_be_bytes());
            index.extend_from_slice(&1u32.to_be_bytes());
            data.extend_from_slice(bytes);
        }
        let mut blob = Vec::new();
        blob.extend_from_slice(&(entries.len() as u32).to_be_bytes());
        blob.extend_from_slice(&(data.len() as u32).to_be_bytes());
        blob.extend_from_slice(&index);
        blob.extend_from_slice(&data);
        blob
    }

    fn text(value: &str) -> Vec<u8> {
        let mut bytes = value.as_bytes().to_vec();
        bytes.push(0);
        bytes
    }

    #[test]
    fn header_fields() {
        let blob = header(&[
            (TAG_NAME, TYPE_STRING, text("curl")),
            (TAG_VERSION, TYPE_STRING, text("7.76.0")),
            (TAG_RELEASE, TYPE_STRING, text("6.cm2")),
            (TAG_ARCH, TYPE_STRING, text("x86_64")),
            (
                TAG_SOURCERPM,
                TYPE_STRING,
                text("curl-7.76.0-6.cm2.src.rpm"),
            ),
            (TAG_EPOCH, TYPE_INT32, 2u32.to_be_bytes().to_vec()),
        ]);
        let package = parse_header(&blob).expect("valid header");
        assert_eq!(package.name, "curl");
        assert_eq!(package.full_version(), "2:7.76.0-6.cm2");
        assert_eq!(package.key(), "curl:x86_64");
        assert_eq!(package.source, None);
    }

    #[test]
    fn header_truncated() {
        let blob = header(&[(TAG_NAME, TYPE_STRING, text("curl"))]);
        assert!(parse_header(&blob[..blob.len() - 2]).is_err());
        assert!(parse_header(&[0, 0]).is_err());
    }

    #[test]
    fn source_rpm_names() {
        assert_eq!(
            source_name("glibc-2.31-9.3.2.src.rpm").as_deref(),
            Some("glibc")
        );
        assert_eq!(
            source_name("python-rpm-macros-3-1.nosrc.rpm").as_deref(),
            Some("python-rpm-macros")
        );
        assert_eq!(source_name("bad.src.rpm"), None);
    }
}
