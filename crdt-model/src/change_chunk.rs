//! Checks of an automerge change chunk that run before automerge parses it.
//!
//! automerge 0.12 trusts two numbers in a change from the network. It inflates a compressed
//! change chunk with no size limit, and it walks every operation that the run-length-encoded
//! columns claim, so a change of about a hundred bytes can claim 2^62 operations and hang the
//! decoder. This module reads the chunk header itself, inflates a compressed chunk with a cap of
//! [`CHANGE_INFLATED_LEN_MAX`], and counts the rows that each column claims without decoding the
//! rows, rejecting a column of more than [`CHANGE_OPS_MAX`] rows. Each check costs time linear in
//! the chunk's bytes (inflated, for a compressed chunk).
//!
//! The layout read here is automerge's binary format as automerge 0.12 parses it
//! (`storage/chunk.rs`, `storage/change.rs` and `storage/columns/raw_column.rs` in its source):
//!
//! ```text
//! chunk:  magic (85 6f 4a 83) | checksum (4 bytes) | type (1 byte) | length (uLEB) | body
//! change: deps (uLEB count, 32 bytes each) | actor (uLEB length, bytes) | seq (uLEB)
//!         | start op (uLEB) | time (sLEB) | message (uLEB length, bytes)
//!         | other actors (uLEB count, each uLEB length, bytes)
//!         | columns (uLEB count, each uLEB spec and uLEB length) | column data | extra bytes
//! ```

use std::borrow::Cow;
use std::io::Read;

use flate2::read::DeflateDecoder;

/// Largest size, in bytes, that a compressed change may inflate to. A compressed chunk that
/// inflates to more is rejected before automerge parses it.
// NOTE: sized as four times the largest change a node accepts from a peer (4 MiB), not from
// measured collections.
pub const CHANGE_INFLATED_LEN_MAX: usize = 16 * 1024 * 1024;

/// Largest number of rows that one column of a change may claim. The action column has one row
/// per operation, so this is also the maximum number of operations in a change, and the
/// predecessor columns have one row per predecessor. automerge's decoding time grows linearly
/// with the operation count, so this bounds it.
pub const CHANGE_OPS_MAX: u64 = 1_000_000;

const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
const CHUNK_TYPE_CHANGE: u8 = 1;
const CHUNK_TYPE_COMPRESSED: u8 = 2;
const HASH_LEN: usize = 32;

/// Column types: the low three bits of a column specification.
const COLUMN_GROUP: u32 = 0;
const COLUMN_ACTOR: u32 = 1;
const COLUMN_INTEGER: u32 = 2;
const COLUMN_DELTA_INTEGER: u32 = 3;
const COLUMN_BOOLEAN: u32 = 4;
const COLUMN_STRING: u32 = 5;
const COLUMN_VALUE_METADATA: u32 = 6;
const COLUMN_DEFLATE_BIT: u32 = 0b1000;

/// Why a change chunk was rejected before automerge parsed it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ChunkError {
    /// The bytes do not follow the change chunk layout.
    #[error("{0}")]
    Malformed(String),
    /// A compressed change inflates to more than [`CHANGE_INFLATED_LEN_MAX`] bytes.
    #[error(
        "compressed change of {compressed_len} bytes inflates to more than \
         {CHANGE_INFLATED_LEN_MAX} bytes, the limit CHANGE_INFLATED_LEN_MAX"
    )]
    InflatedTooLarge {
        /// Length of the compressed chunk body.
        compressed_len: usize,
    },
    /// A column claims more rows than [`CHANGE_OPS_MAX`].
    #[error(
        "column {spec:#x} of the change claims at least {rows} rows, over the limit \
         CHANGE_OPS_MAX of {CHANGE_OPS_MAX} operations"
    )]
    TooManyRows {
        /// The column specification (column id and type).
        spec: u32,
        /// Rows counted when the count went over the limit.
        rows: u64,
    },
}

fn malformed(reason: &str) -> ChunkError {
    ChunkError::Malformed(format!("invalid change chunk: {reason}"))
}

/// Checks `bytes` as a change chunk and returns the chunk to hand to automerge: `bytes` itself
/// for an uncompressed change, or the inflated change re-wrapped as an uncompressed change chunk.
///
/// The re-wrapped chunk keeps the stored checksum and has the same change hash, because
/// automerge hashes a compressed change over its inflated form with the uncompressed chunk type.
pub(crate) fn check(bytes: &[u8]) -> Result<Cow<'_, [u8]>, ChunkError> {
    let mut reader = Reader::new(bytes);
    if reader.take(MAGIC.len())? != MAGIC {
        return Err(malformed(
            "the magic bytes are wrong, so this is not an automerge chunk",
        ));
    }
    let checksum = reader.take(4)?;
    let chunk_type = reader.take(1)?[0];
    let body_len = reader.uleb()?;
    let body = reader.take(to_usize(body_len)?)?;
    if !reader.is_empty() {
        return Err(malformed("bytes follow the end of the chunk"));
    }

    match chunk_type {
        CHUNK_TYPE_CHANGE => {
            check_change_body(body)?;
            Ok(Cow::Borrowed(bytes))
        }
        CHUNK_TYPE_COMPRESSED => {
            let inflated = inflate(body)?;
            check_change_body(&inflated)?;
            let mut chunk = Vec::with_capacity(inflated.len() + 20);
            chunk.extend_from_slice(&MAGIC);
            chunk.extend_from_slice(checksum);
            chunk.push(CHUNK_TYPE_CHANGE);
            write_uleb(inflated.len() as u64, &mut chunk);
            chunk.extend_from_slice(&inflated);
            Ok(Cow::Owned(chunk))
        }
        other => Err(ChunkError::Malformed(format!(
            "invalid change chunk: chunk type {other} is not a change (1) or compressed change (2)"
        ))),
    }
}

/// Inflates a raw DEFLATE stream, reading at most one byte over the cap.
fn inflate(compressed: &[u8]) -> Result<Vec<u8>, ChunkError> {
    let cap = CHANGE_INFLATED_LEN_MAX as u64;
    let mut inflated = Vec::new();
    DeflateDecoder::new(compressed)
        .take(cap + 1)
        .read_to_end(&mut inflated)
        .map_err(|err| {
            ChunkError::Malformed(format!("compressed change does not inflate: {err}"))
        })?;
    if inflated.len() > CHANGE_INFLATED_LEN_MAX {
        return Err(ChunkError::InflatedTooLarge {
            compressed_len: compressed.len(),
        });
    }
    Ok(inflated)
}

/// Walks the header fields of a change body to its column metadata, then counts the rows of
/// each column.
fn check_change_body(body: &[u8]) -> Result<(), ChunkError> {
    let mut reader = Reader::new(body);

    // Header fields. Counts are checked against the bytes left before any loop runs.
    let deps = reader.uleb()?;
    reader.take(
        to_usize(deps)?
            .checked_mul(HASH_LEN)
            .ok_or_else(|| malformed("too many dependencies"))?,
    )?;
    reader.length_prefixed()?; // actor
    reader.uleb()?; // seq
    reader.uleb()?; // start op
    reader.sleb()?; // time
    reader.length_prefixed()?; // message
    let other_actors = reader.uleb()?;
    if other_actors > reader.remaining() as u64 {
        return Err(malformed("more actors than bytes"));
    }
    for _ in 0..other_actors {
        reader.length_prefixed()?;
    }

    // Column metadata: each column takes at least two bytes, a spec and a length.
    let column_count = reader.uleb()?;
    if column_count > reader.remaining() as u64 / 2 {
        return Err(malformed("more columns than bytes"));
    }
    let mut columns = Vec::new();
    for _ in 0..column_count {
        let spec =
            u32::try_from(reader.uleb()?).map_err(|_| malformed("column spec over 32 bits"))?;
        let len = to_usize(reader.uleb()?)?;
        columns.push((spec, len));
    }

    // Column data, in the order of the metadata. Whatever follows is extra bytes.
    for (spec, len) in columns {
        let data = reader.take(len)?;
        if spec & COLUMN_DEFLATE_BIT != 0 {
            return Err(malformed(
                "a change column is compressed, which changes never are",
            ));
        }
        count_rows(spec, data)?;
    }
    Ok(())
}

/// Counts the rows that a column claims, without building them, and rejects a count over
/// [`CHANGE_OPS_MAX`].
fn count_rows(spec: u32, data: &[u8]) -> Result<u64, ChunkError> {
    let mut reader = Reader::new(data);
    let mut rows: u64 = 0;
    let mut add = |count: u64| -> Result<(), ChunkError> {
        rows = rows.saturating_add(count);
        if rows > CHANGE_OPS_MAX {
            return Err(ChunkError::TooManyRows { spec, rows });
        }
        Ok(())
    };

    match spec & 0b111 {
        // A boolean column is a sequence of run lengths, alternating false and true.
        COLUMN_BOOLEAN => {
            while !reader.is_empty() {
                add(reader.uleb()?)?;
            }
        }
        // Run-length encoding: a positive count and one value for a run, a negative count and
        // that many values for literals, or zero and a count of nulls.
        column_type @ (COLUMN_GROUP
        | COLUMN_ACTOR
        | COLUMN_INTEGER
        | COLUMN_DELTA_INTEGER
        | COLUMN_STRING
        | COLUMN_VALUE_METADATA) => {
            while !reader.is_empty() {
                let count = reader.sleb()?;
                if count > 0 {
                    add(count.unsigned_abs())?;
                    reader.rle_value(column_type)?;
                } else if count < 0 {
                    // The count is checked first, so the loop below is bounded by the limit
                    // as well as by the bytes left.
                    add(count.unsigned_abs())?;
                    for _ in 0..count.unsigned_abs() {
                        reader.rle_value(column_type)?;
                    }
                } else {
                    add(reader.uleb()?)?;
                }
            }
        }
        // Raw value bytes: their length comes from the value metadata column, not from rows.
        _ => {}
    }
    Ok(rows)
}

fn to_usize(value: u64) -> Result<usize, ChunkError> {
    usize::try_from(value).map_err(|_| malformed("a length does not fit in memory"))
}

fn write_uleb(mut value: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// A cursor over untrusted bytes. Every read checks the bytes left and returns an error at the
/// end of input.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes }
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn remaining(&self) -> usize {
        self.bytes.len()
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], ChunkError> {
        if len > self.bytes.len() {
            return Err(malformed("a length runs past the end of the input"));
        }
        let (head, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(head)
    }

    fn length_prefixed(&mut self) -> Result<&'a [u8], ChunkError> {
        let len = self.uleb()?;
        self.take(to_usize(len)?)
    }

    /// Reads an unsigned LEB128 number of at most 64 bits.
    fn uleb(&mut self) -> Result<u64, ChunkError> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = self.take(1)?[0];
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(malformed("a LEB128 number is over 64 bits"));
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(malformed("a LEB128 number is over 64 bits"))
    }

    /// Reads a signed LEB128 number of at most 64 bits.
    fn sleb(&mut self) -> Result<i64, ChunkError> {
        let mut value: i64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = self.take(1)?[0];
            let bits = i64::from(byte & 0x7f);
            if shift == 63 && bits != 0 && bits != 0x7f {
                return Err(malformed("a signed LEB128 number is over 64 bits"));
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                if shift < 57 && byte & 0x40 != 0 {
                    value |= -1 << (shift + 7);
                }
                return Ok(value);
            }
        }
        Err(malformed("a signed LEB128 number is over 64 bits"))
    }

    /// Skips one value of a run-length-encoded column.
    fn rle_value(&mut self, column_type: u32) -> Result<(), ChunkError> {
        match column_type {
            COLUMN_STRING => {
                self.length_prefixed()?;
            }
            COLUMN_DELTA_INTEGER => {
                self.sleb()?;
            }
            _ => {
                self.uleb()?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

    use super::*;

    fn uleb(value: u64) -> Vec<u8> {
        let mut out = Vec::new();
        write_uleb(value, &mut out);
        out
    }

    #[test]
    fn leb128_reads_edge_values() {
        for value in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            assert_eq!(Reader::new(&uleb(value)).uleb().unwrap(), value);
        }
        let cases: [(&[u8], i64); 6] = [
            (&[0x00], 0),
            (&[0x7f], -1),
            (&[0x3f], 63),
            (&[0x40], -64),
            (&[0xc0, 0x00], 64),
            (
                &[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x7f],
                i64::MIN,
            ),
        ];
        for (bytes, expected) in cases {
            assert_eq!(Reader::new(bytes).sleb().unwrap(), expected, "{bytes:x?}");
        }
    }

    #[test]
    fn leb128_rejects_over_64_bits() {
        let mut too_long = vec![0xff; 10];
        too_long.push(0x01);
        assert!(Reader::new(&too_long).uleb().is_err());
        assert!(
            Reader::new(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02])
                .uleb()
                .is_err()
        );
        assert!(Reader::new(&[0x80]).uleb().is_err(), "unterminated");
    }

    #[test]
    fn rle_rows_counted_without_decoding() {
        // A run of 5, three literals, and 2^40 nulls.
        let mut column = vec![0x05, 0x01, 0x7d, 0x01, 0x02, 0x03, 0x00];
        column.extend(uleb(1 << 40));
        let spec = (4 << 4) | COLUMN_INTEGER;
        assert_eq!(count_rows(spec, &column[..7 - 1]).unwrap(), 8);
        assert!(matches!(
            count_rows(spec, &column),
            Err(ChunkError::TooManyRows { rows, .. }) if rows == 8 + (1 << 40)
        ));
    }

    #[test]
    fn rle_literal_run_of_i64_min_rejected() {
        let column = [0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x7f];
        assert!(matches!(
            count_rows(COLUMN_ACTOR, &column),
            Err(ChunkError::TooManyRows { .. })
        ));
    }

    #[test]
    fn boolean_rows_counted() {
        let spec = (3 << 4) | COLUMN_BOOLEAN;
        assert_eq!(count_rows(spec, &[0x00, 0x03, 0x02]).unwrap(), 5);
        let mut huge = vec![0x00];
        huge.extend(uleb(CHANGE_OPS_MAX + 1));
        assert!(count_rows(spec, &huge).is_err());
    }

    #[test]
    fn chunk_of_other_type_rejected() {
        let mut chunk = MAGIC.to_vec();
        chunk.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        assert!(matches!(check(&chunk), Err(ChunkError::Malformed(_))));
    }

    #[test]
    fn truncated_and_extended_chunks_rejected() {
        let mut chunk = MAGIC.to_vec();
        chunk.extend_from_slice(&[0, 0, 0, 0, CHUNK_TYPE_CHANGE, 3, 0]);
        assert!(check(&chunk).is_err(), "body shorter than its length");
        chunk.extend_from_slice(&[0, 0, 0]);
        assert!(check(&chunk).is_err(), "bytes after the body");
    }
}
