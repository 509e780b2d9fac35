//! Checksummed text: `prefix | base32(payload | checksum)`, lower case, no padding.
//!
//! The checksum is the first 4 bytes of SHA-256 over `prefix | payload`, so one mistyped
//! character, a dropped tail or a fleet id pasted where a token belongs each fail with a clear
//! error. Decoding ignores ASCII whitespace (a line wrapped by a mail client still parses) and
//! letter case.

use sha2::{Digest, Sha256};

use super::MembershipError;

const CHECKSUM_LEN: usize = 4;

fn checksum(prefix: &str, payload: &[u8]) -> [u8; CHECKSUM_LEN] {
    let digest = Sha256::new()
        .chain_update(prefix.as_bytes())
        .chain_update(payload)
        .finalize();
    let mut out = [0u8; CHECKSUM_LEN];
    out.copy_from_slice(&digest[..CHECKSUM_LEN]);
    out
}

/// Encodes `payload` with `prefix` and a checksum.
pub(super) fn encode(prefix: &str, payload: &[u8]) -> String {
    let mut data = Vec::with_capacity(payload.len() + CHECKSUM_LEN);
    data.extend_from_slice(payload);
    data.extend_from_slice(&checksum(prefix, payload));
    let body = data_encoding::BASE32_NOPAD
        .encode(&data)
        .to_ascii_lowercase();
    format!("{prefix}{body}")
}

/// Decodes text written by [`encode`] and returns the payload. `len_max` bounds the text length
/// in characters before any decoding work.
pub(super) fn decode(
    kind: &'static str,
    prefix: &str,
    text: &str,
    len_max: usize,
) -> Result<Vec<u8>, MembershipError> {
    let invalid = |reason: String| MembershipError::InvalidText { kind, reason };
    if text.len() > len_max {
        return Err(MembershipError::TooLarge {
            kind,
            len: text.len(),
            max: len_max,
        });
    }

    // Normalize: no whitespace, upper case for the base32 alphabet.
    let compact: String = text
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect::<String>()
        .to_ascii_uppercase();
    let upper_prefix = prefix.to_ascii_uppercase();
    let Some(body) = compact.strip_prefix(&upper_prefix) else {
        let start: String = compact.chars().take(prefix.len()).collect();
        return Err(invalid(format!(
            "it starts with {:?}, expected {prefix:?}",
            start.to_ascii_lowercase()
        )));
    };
    if let Some((position, bad)) = body
        .char_indices()
        .find(|(_, c)| !matches!(c, 'A'..='Z' | '2'..='7'))
    {
        return Err(invalid(format!(
            "character {bad:?} at position {} is not base32 (a-z, 2-7)",
            prefix.len() + position + 1
        )));
    }

    // Split off and compare the checksum.
    let data = data_encoding::BASE32_NOPAD
        .decode(body.as_bytes())
        .map_err(|_| MembershipError::ChecksumMismatch { kind })?;
    if data.len() < CHECKSUM_LEN {
        return Err(invalid("it is too short".to_string()));
    }
    let (payload, found) = data.split_at(data.len() - CHECKSUM_LEN);
    if found != checksum(prefix, payload) {
        return Err(MembershipError::ChecksumMismatch { kind });
    }
    Ok(payload.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trip_ignores_case_and_whitespace() {
        let text = encode("tst1", b"hello world");
        assert!(text.starts_with("tst1"));
        let wrapped = format!("  {}\n{}  ", &text[..10], &text[10..].to_uppercase());
        assert_eq!(
            decode("test", "tst1", &wrapped, 100).ok(),
            Some(b"hello world".to_vec())
        );
    }

    #[test]
    fn text_rejects_wrong_prefix() {
        let text = encode("aaa1", b"x");
        let err = decode("test", "bbb1", &text, 100).unwrap_err();
        assert!(err.to_string().contains("expected \"bbb1\""), "{err}");
    }

    #[test]
    fn text_rejects_bad_character() {
        let text = format!("{}!", encode("tst1", b"x"));
        let err = decode("test", "tst1", &text, 100).unwrap_err();
        assert!(err.to_string().contains("'!'"), "{err}");
    }

    #[test]
    fn text_truncation_is_checksum_error() {
        let text = encode("tst1", b"some payload bytes");
        for len in "tst1".len() + 1..text.len() {
            let result = decode("test", "tst1", &text[..len], 100);
            assert!(result.is_err(), "length {len}");
        }
    }

    #[test]
    fn text_rejects_over_limit() {
        let text = encode("tst1", &[0; 64]);
        assert!(matches!(
            decode("test", "tst1", &text, 20),
            Err(MembershipError::TooLarge { .. })
        ));
    }
}
