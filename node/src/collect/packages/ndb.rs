//! NDB, the package database format of rpm's `ndb` backend (`Packages.db`, used by SUSE).
//!
//! Layout, all integers little-endian:
//! - a 32-byte file header: magic `RpmP`, format version 0, generation, number of 4 KiB slot
//!   pages, next package index, reserved words;
//! - slot entries of 16 bytes from offset 32 to the end of the slot pages: magic `Slot`,
//!   package index (0 for a free slot), block offset and block count in 16-byte blocks;
//! - at each slot's block offset, a blob: a 16-byte head (magic `BlbS`, package index,
//!   generation, blob length), the header blob, padding, and a 12-byte tail (Adler-32 of
//!   everything from the head to the tail, blob length, magic `BlbE`).

use crate::collect::Parsed;

const FILE_MAGIC: &[u8; 4] = b"RpmP";
const SLOT_MAGIC: &[u8; 4] = b"Slot";
const BLOB_MAGIC: &[u8; 4] = b"BlbS";
const BLOB_END_MAGIC: &[u8; 4] = b"BlbE";
const FILE_HEADER_LEN: usize = 32;
const SLOT_LEN: usize = 16;
const SLOT_PAGE_LEN: usize = 4096;
const BLOCK_LEN: usize = 16;
const BLOB_HEAD_LEN: usize = 16;
const BLOB_TAIL_LEN: usize = 12;

/// Returns the header blobs of an NDB file with their package indexes, in slot order.
/// A blob that fails its checks is a problem and is skipped.
pub fn read_blobs(bytes: &[u8]) -> Parsed<Vec<(u32, &[u8])>> {
    let mut parsed = Parsed::<Vec<(u32, &[u8])>>::default();
    if bytes.len() < FILE_HEADER_LEN || &bytes[..4] != FILE_MAGIC {
        parsed
            .problems
            .push("not an NDB package database (no RpmP magic)".to_string());
        return parsed;
    }
    let version = read_u32_le(bytes, 4).unwrap_or(u32::MAX);
    if version != 0 {
        parsed
            .problems
            .push(format!("unsupported NDB format version {version}"));
        return parsed;
    }
    let slot_pages = read_u32_le(bytes, 12).unwrap_or(0) as usize;
    let slots_end = slot_pages.saturating_mul(SLOT_PAGE_LEN);
    if slots_end > bytes.len() {
        parsed.problems.push(format!(
            "file of {} bytes is shorter than its {slot_pages} slot pages; reading what is there",
            bytes.len()
        ));
    }
    let slots_end = slots_end.min(bytes.len());

    let mut at = FILE_HEADER_LEN;
    while at + SLOT_LEN <= slots_end {
        let slot = &bytes[at..at + SLOT_LEN];
        at += SLOT_LEN;
        if &slot[..4] != SLOT_MAGIC {
            parsed.problems.push(format!(
                "slot at offset {} has no Slot magic",
                at - SLOT_LEN
            ));
            continue;
        }
        let index = read_u32_le(slot, 4).unwrap_or(0);
        let block_offset = read_u32_le(slot, 8).unwrap_or(0) as usize;
        let block_count = read_u32_le(slot, 12).unwrap_or(0) as usize;
        if index == 0 {
            continue;
        }
        match read_blob(bytes, index, block_offset, block_count) {
            Ok(blob) => parsed.value.push((index, blob)),
            Err(reason) => parsed.problems.push(format!("package {index}: {reason}")),
        }
    }
    parsed
}

fn read_blob(
    bytes: &[u8],
    index: u32,
    block_offset: usize,
    block_count: usize,
) -> Result<&[u8], String> {
    let start = block_offset.saturating_mul(BLOCK_LEN);
    let end = start.saturating_add(block_count.saturating_mul(BLOCK_LEN));
    let area = bytes
        .get(start..end)
        .ok_or_else(|| format!("blob at offset {start} lies past the end of the file"))?;
    if area.len() < BLOB_HEAD_LEN + BLOB_TAIL_LEN || &area[..4] != BLOB_MAGIC {
        return Err(format!("no BlbS magic at offset {start}"));
    }
    if read_u32_le(area, 4) != Some(index) {
        return Err("blob belongs to another package index".to_string());
    }
    let length = read_u32_le(area, 12).unwrap_or(u32::MAX) as usize;
    let tail_at = area.len() - BLOB_TAIL_LEN;
    if BLOB_HEAD_LEN.saturating_add(length) > tail_at {
        return Err(format!(
            "blob length {length} does not fit its {block_count} blocks"
        ));
    }
    let tail = &area[tail_at..];
    if &tail[8..12] != BLOB_END_MAGIC || read_u32_le(tail, 4) != Some(length as u32) {
        return Err("blob tail is missing or does not match its head".to_string());
    }
    if read_u32_le(tail, 0) != Some(adler32(&area[..tail_at])) {
        return Err("blob checksum does not match".to_string());
    }
    Ok(&area[BLOB_HEAD_LEN..BLOB_HEAD_LEN + length])
}

fn read_u32_le(bytes: &[u8], at: usize) -> Option<u32> {
    let slice = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(slice.try_into().ok()?))
}

/// Adler-32 checksum (RFC 1950), as rpm computes it over each blob.
fn adler32(bytes: &[u8]) -> u32 {
    const MODULUS: u32 = 65521;
    // 5552 is the largest run that cannot overflow the 32-bit sums before the reduction.
    let (mut a, mut b) = (1u32, 0u32);
    for chunk in bytes.chunks(5552) {
        for byte in chunk {
            a += u32::from(*byte);
            b += a;
        }
        a %= MODULUS;
        b %= MODULUS;
    }
    (b << 16) | a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adler32_known_value() {
        // Computed independently with Python's zlib.adler32(b"Wikipedia").
        assert_eq!(adler32(b"Wikipedia"), 0x11E6_0398);
    }

    #[test]
    fn rejects_other_files() {
        assert_eq!(read_blobs(b"SQLite format 3\0").value.len(), 0);
        assert_eq!(read_blobs(b"").problems.len(), 1);
    }
}
