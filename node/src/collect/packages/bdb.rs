//! Berkeley DB hash databases, as rpm's `bdb` backend writes `Packages` (RHEL and CentOS 7 and
//! 8). Only what is needed to list the stored values is read.
//!
//! Layout:
//! - page 0 is the hash metadata page, with the magic `0x061561` at offset 12 and the page size
//!   at 20;
//! - every page starts with a 26-byte header: page number at 8, next page at 16, entry count at
//!   20, free-area offset at 22, page type at 25;
//! - hash pages (types 2 and 13) contain an array of 16-bit item offsets after the header,
//!   alternating key and value;
//! - an item is either stored in place (type 1) or points to a chain of overflow pages (type 3,
//!   with the first page number at 4 and the total length at 8);
//! - on an overflow page (type 7), the free-area offset field contains the number of bytes on
//!   that page.
//!
//! Integers are in the byte order of the machine that wrote the file, which the magic reveals.

use crate::collect::Parsed;

const HASH_MAGIC: u32 = 0x0006_1561;
const PAGE_HEADER_LEN: usize = 26;
const PAGE_TYPE_HASH_UNSORTED: u8 = 2;
const PAGE_TYPE_OVERFLOW: u8 = 7;
const PAGE_TYPE_HASH_META: u8 = 8;
const PAGE_TYPE_HASH: u8 = 13;
const ITEM_KEYDATA: u8 = 1;
const ITEM_OFFPAGE: u8 = 3;
/// Page sizes Berkeley DB allows (512 B to 64 KiB, powers of two).
const PAGE_SIZE_RANGE: std::ops::RangeInclusive<usize> = 512..=65536;

/// Byte order of the file.
#[derive(Clone, Copy)]
struct Order {
    big_endian: bool,
}

impl Order {
    fn u16(self, bytes: &[u8], at: usize) -> Option<u16> {
        let slice: [u8; 2] = bytes.get(at..at.checked_add(2)?)?.try_into().ok()?;
        Some(if self.big_endian {
            u16::from_be_bytes(slice)
        } else {
            u16::from_le_bytes(slice)
        })
    }

    fn u32(self, bytes: &[u8], at: usize) -> Option<u32> {
        let slice: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(if self.big_endian {
            u32::from_be_bytes(slice)
        } else {
            u32::from_le_bytes(slice)
        })
    }
}

/// Returns every value stored in a Berkeley DB hash database, in page order. Damaged pages and
/// overflow chains are problems and are skipped.
pub fn read_hash_values(bytes: &[u8]) -> Parsed<Vec<Vec<u8>>> {
    let mut parsed = Parsed::<Vec<Vec<u8>>>::default();

    // Metadata page.
    let magic_le = Order { big_endian: false }.u32(bytes, 12);
    let magic_be = Order { big_endian: true }.u32(bytes, 12);
    let order = if magic_le == Some(HASH_MAGIC) {
        Order { big_endian: false }
    } else if magic_be == Some(HASH_MAGIC) {
        Order { big_endian: true }
    } else {
        parsed
            .problems
            .push("unsupported rpmdb format: not a Berkeley DB hash database".to_string());
        return parsed;
    };
    let page_size = order.u32(bytes, 20).unwrap_or(0) as usize;
    if !PAGE_SIZE_RANGE.contains(&page_size) || !page_size.is_power_of_two() {
        parsed.problems.push(format!(
            "unsupported rpmdb format: invalid page size {page_size}"
        ));
        return parsed;
    }
    if bytes.get(25) != Some(&PAGE_TYPE_HASH_META) {
        parsed
            .problems
            .push("unsupported rpmdb format: page 0 is not a hash metadata page".to_string());
        return parsed;
    }
    if !bytes.len().is_multiple_of(page_size) {
        parsed.problems.push(format!(
            "file of {} bytes is not a whole number of {page_size}-byte pages; it may be truncated",
            bytes.len()
        ));
    }

    // Hash pages.
    let page_count = bytes.len() / page_size;
    for page_number in 1..page_count {
        let page = &bytes[page_number * page_size..(page_number + 1) * page_size];
        let page_type = page[25];
        if page_type != PAGE_TYPE_HASH && page_type != PAGE_TYPE_HASH_UNSORTED {
            continue;
        }
        let entries = order.u16(page, 20).unwrap_or(0) as usize;
        for item in (1..entries).step_by(2) {
            match read_item(bytes, page, item, page_size, order) {
                Ok(Some(value)) => parsed.value.push(value),
                Ok(None) => {}
                Err(reason) => parsed
                    .problems
                    .push(format!("page {page_number} item {item}: {reason}")),
            }
        }
    }
    parsed
}

/// Reads item `item` of a hash page. Returns `None` for item types that hold no plain value.
fn read_item(
    file: &[u8],
    page: &[u8],
    item: usize,
    page_size: usize,
    order: Order,
) -> Result<Option<Vec<u8>>, String> {
    let offset_at = PAGE_HEADER_LEN + item * 2;
    let start = order
        .u16(page, offset_at)
        .ok_or("item offset lies past the page")? as usize;
    // Items fill the page from its end, so an item ends where the one before it starts.
    let end = if item == 0 {
        page_size
    } else {
        order
            .u16(page, offset_at - 2)
            .ok_or("item offset lies past the page")? as usize
    };
    let data = page
        .get(start..end)
        .filter(|data| !data.is_empty())
        .ok_or_else(|| format!("item bounds {start}..{end} are invalid"))?;

    match data[0] {
        ITEM_KEYDATA => Ok(Some(data[1..].to_vec())),
        ITEM_OFFPAGE => {
            let first_page = order.u32(data, 4).ok_or("overflow item is too short")? as usize;
            let total = order.u32(data, 8).ok_or("overflow item is too short")? as usize;
            read_overflow(file, first_page, total, page_size, order).map(Some)
        }
        _ => Ok(None),
    }
}

/// Follows a chain of overflow pages and joins their contents.
fn read_overflow(
    file: &[u8],
    first_page: usize,
    total: usize,
    page_size: usize,
    order: Order,
) -> Result<Vec<u8>, String> {
    let page_count = file.len() / page_size;
    if total > file.len() {
        return Err(format!(
            "overflow value of {total} bytes is larger than the file"
        ));
    }
    let mut value = Vec::with_capacity(total);
    let mut page_number = first_page;
    // A chain visits at most as many pages as the file has, which also ends a chain that loops.
    for _ in 0..page_count {
        if page_number == 0 || page_number >= page_count {
            return Err(format!(
                "overflow chain points to page {page_number}, past the file"
            ));
        }
        let page = &file[page_number * page_size..(page_number + 1) * page_size];
        if page[25] != PAGE_TYPE_OVERFLOW {
            return Err(format!(
                "overflow chain reaches page {page_number}, which is no overflow page"
            ));
        }
        let length = order.u16(page, 22).unwrap_or(0) as usize;
        let chunk = page
            .get(PAGE_HEADER_LEN..PAGE_HEADER_LEN + length)
            .ok_or_else(|| format!("overflow page {page_number} claims {length} bytes"))?;
        value.extend_from_slice(chunk);
        if value.len() >= total {
            value.truncate(total);
            return Ok(value);
        }
        page_number = order.u32(page, 16).unwrap_or(0) as usize;
    }
    Err("overflow chain is longer than the file".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_other_files() {
        let parsed = read_hash_values(b"RpmP\0\0\0\0");
        assert!(parsed.value.is_empty());
        assert!(parsed.problems[0].starts_with("unsupported rpmdb format"));
    }
}
