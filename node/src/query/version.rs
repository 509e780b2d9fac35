//! Version comparison by dpkg's and rpm's rules, behind the SQL functions `deb_version_cmp`,
//! `rpm_version_cmp` and `version_cmp`.
//!
//! Every function here is total: it accepts any bytes, never panics, and orders all inputs
//! consistently (reflexive, antisymmetric and transitive), so it is safe in `WHERE` and
//! `ORDER BY` over data collected from any machine. Malformed versions, which dpkg or rpm would
//! reject, still get a well-defined place in the order, as described on each function. The
//! property tests at the end of this file check these laws on generated strings.
//!
//! Sources of the rules: the deb-version(7) manual page of dpkg 1.21 for Debian versions, and
//! the rpmvercmp comparison of rpm 4.15 and later (tilde and caret) for RPM versions.

use std::cmp::Ordering;

/// Compares two Debian package versions `[epoch:]upstream_version[-debian_revision]` as dpkg
/// does.
///
/// - The epoch is the number before the first `:`; a missing epoch is 0. When the text before
///   the first `:` is not all digits, the whole string is the upstream version (dpkg would reject
///   it).
/// - The revision is the text after the last `-`; a missing revision compares like `0`.
/// - Upstream version and revision are compared in alternating runs. Non-digit runs compare
///   character by character: `~` sorts before everything, even the end of the run, then the end
///   of the run, then letters, then all other characters by their byte value. Digit runs compare
///   as numbers of any length, so leading zeros do not count.
pub fn deb_version_cmp(a: &[u8], b: &[u8]) -> Ordering {
    compare_debian_like(a, b, dpkg_char_rank)
}

/// Compares two versions by the generic rule used for `version_cmp`: dpkg's rules, except that
/// `^` sorts after the end of a run and before every other character, as it does in rpm.
///
/// So `1.0~rc1 < 1.0 < 1.0^git1 < 1.0a < 1.0.1`. For strings without `^` this is exactly
/// [`deb_version_cmp`]. One rule for every input keeps the order transitive across a mixed
/// column, which choosing dpkg or rpm per pair of strings would not. dpkg's rules suit most
/// version formats (semantic versions, Alpine, pacman and Windows versions) because they order
/// numbers by value and letters before punctuation. Use [`rpm_version_cmp`] where rpm's order
/// of letters and digits matters: `1.a` is newer than `1.1` for dpkg but older for rpm.
pub fn generic_version_cmp(a: &[u8], b: &[u8]) -> Ordering {
    compare_debian_like(a, b, generic_char_rank)
}

/// Compares two RPM versions `[epoch:]version[-release]` as rpm does.
///
/// - The epoch is the run of digits before a `:`; a missing epoch is 0.
/// - The release is the text after the last `-`. rpm skips the release comparison when either
///   side lacks one, which makes its order non-transitive (`1.0-1 = 1.0 = 1.0-2` but
///   `1.0-1 < 1.0-2`). Here a missing release is an empty one instead, so `1.0 < 1.0-1`.
/// - Version and release are split into segments of ASCII letters or ASCII digits; every other
///   character only separates segments, except `~` and `^`. At each position `~` sorts first,
///   then the end of the string, then `^`, then letter segments (byte order), then digit
///   segments (numeric order).
pub fn rpm_version_cmp(a: &[u8], b: &[u8]) -> Ordering {
    let left = split_rpm(a);
    let right = split_rpm(b);
    compare_numeric(left.epoch, right.epoch)
        .then_with(|| rpm_segment_cmp(left.version, right.version))
        .then_with(|| rpm_segment_cmp(left.release, right.release))
}

/// A version split into its three parts. Missing parts are empty slices.
struct Parts<'a> {
    epoch: &'a [u8],
    version: &'a [u8],
    release: &'a [u8],
}

fn split_debian(text: &[u8]) -> Parts<'_> {
    let (epoch, rest) = match text.iter().position(|&c| c == b':') {
        Some(colon) if text[..colon].iter().all(u8::is_ascii_digit) => {
            (&text[..colon], &text[colon + 1..])
        }
        _ => (&text[..0], text),
    };
    let (version, release) = split_at_last_dash(rest);
    Parts {
        epoch,
        version,
        release,
    }
}

fn split_rpm(text: &[u8]) -> Parts<'_> {
    let digits = text.iter().take_while(|c| c.is_ascii_digit()).count();
    let (epoch, rest) = if text.get(digits) == Some(&b':') {
        (&text[..digits], &text[digits + 1..])
    } else {
        (&text[..0], text)
    };
    let (version, release) = split_at_last_dash(rest);
    Parts {
        epoch,
        version,
        release,
    }
}

fn split_at_last_dash(text: &[u8]) -> (&[u8], &[u8]) {
    match text.iter().rposition(|&c| c == b'-') {
        Some(dash) => (&text[..dash], &text[dash + 1..]),
        None => (text, &text[text.len()..]),
    }
}

/// Compares two runs of ASCII digits by numeric value, without limits on their length.
fn compare_numeric(a: &[u8], b: &[u8]) -> Ordering {
    let a = strip_leading_zeros(a);
    let b = strip_leading_zeros(b);
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

fn strip_leading_zeros(digits: &[u8]) -> &[u8] {
    let zeros = digits.iter().take_while(|&&c| c == b'0').count();
    &digits[zeros..]
}

fn compare_debian_like(a: &[u8], b: &[u8], rank: fn(Option<u8>) -> i32) -> Ordering {
    let left = split_debian(a);
    let right = split_debian(b);
    compare_numeric(left.epoch, right.epoch)
        .then_with(|| debian_fragment_cmp(left.version, right.version, rank))
        .then_with(|| debian_fragment_cmp(left.release, right.release, rank))
}

/// Rank of a character in a non-digit run by dpkg's rules. `None` is the end of the run (end of
/// string or a digit) and ranks 0. No character other than the end ranks 0, and distinct
/// characters rank differently.
fn dpkg_char_rank(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(b'~') => -1,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(c) => i32::from(c) + 256,
    }
}

/// Rank for the generic rule: dpkg's ranks with `^` right after the end of the run.
fn generic_char_rank(c: Option<u8>) -> i32 {
    match c {
        Some(b'^') => 1,
        other => dpkg_char_rank(other),
    }
}

/// Compares an upstream version or a revision the way dpkg's `verrevcmp` does: alternating
/// non-digit runs (by `rank`) and digit runs (by value).
fn debian_fragment_cmp(a: &[u8], b: &[u8], rank: fn(Option<u8>) -> i32) -> Ordering {
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        // Non-digit run, one character at a time. Equal ranks mean equal characters, so both
        // sides advance together.
        loop {
            let left = a.get(i).copied().filter(|c| !c.is_ascii_digit());
            let right = b.get(j).copied().filter(|c| !c.is_ascii_digit());
            if left.is_none() && right.is_none() {
                break;
            }
            let order = rank(left).cmp(&rank(right));
            if order != Ordering::Equal {
                return order;
            }
            i += 1;
            j += 1;
        }

        // Digit run, by numeric value.
        let start_i = i;
        while a.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        let start_j = j;
        while b.get(j).is_some_and(u8::is_ascii_digit) {
            j += 1;
        }
        let order = compare_numeric(&a[start_i..i], &b[start_j..j]);
        if order != Ordering::Equal {
            return order;
        }
    }
    Ordering::Equal
}

/// One unit of an RPM version string; separators are dropped while splitting.
#[derive(Clone, Copy)]
enum Segment<'a> {
    Tilde,
    Caret,
    Letters(&'a [u8]),
    Digits(&'a [u8]),
}

impl Segment<'_> {
    /// Position in rpm's order at one position: `~` < end of string < `^` < letters < digits.
    fn rank(segment: Option<&Self>) -> u8 {
        match segment {
            Some(Segment::Tilde) => 0,
            None => 1,
            Some(Segment::Caret) => 2,
            Some(Segment::Letters(_)) => 3,
            Some(Segment::Digits(_)) => 4,
        }
    }
}

/// Iterator over the segments of an RPM version or release.
struct Segments<'a> {
    text: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for Segments<'a> {
    type Item = Segment<'a>;

    fn next(&mut self) -> Option<Segment<'a>> {
        let is_separator = |c: &u8| !c.is_ascii_alphanumeric() && *c != b'~' && *c != b'^';
        while self.text.get(self.pos).is_some_and(is_separator) {
            self.pos += 1;
        }

        let start = self.pos;
        let first = *self.text.get(start)?;
        let class: fn(&u8) -> bool = match first {
            b'~' => {
                self.pos += 1;
                return Some(Segment::Tilde);
            }
            b'^' => {
                self.pos += 1;
                return Some(Segment::Caret);
            }
            c if c.is_ascii_digit() => u8::is_ascii_digit,
            _ => u8::is_ascii_alphabetic,
        };
        while self.text.get(self.pos).is_some_and(class) {
            self.pos += 1;
        }
        let run = &self.text[start..self.pos];
        Some(if first.is_ascii_digit() {
            Segment::Digits(run)
        } else {
            Segment::Letters(run)
        })
    }
}

/// Compares an RPM version or release segment by segment, as rpm's `rpmvercmp` does.
fn rpm_segment_cmp(a: &[u8], b: &[u8]) -> Ordering {
    let mut left = Segments { text: a, pos: 0 };
    let mut right = Segments { text: b, pos: 0 };
    loop {
        let (x, y) = (left.next(), right.next());
        let order = match (&x, &y) {
            (None, None) => return Ordering::Equal,
            (Some(Segment::Letters(p)), Some(Segment::Letters(q))) => p.cmp(q),
            (Some(Segment::Digits(p)), Some(Segment::Digits(q))) => compare_numeric(p, q),
            _ => Segment::rank(x.as_ref()).cmp(&Segment::rank(y.as_ref())),
        };
        if order != Ordering::Equal {
            return order;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use Ordering::{Equal, Greater, Less};

    fn check(compare: fn(&[u8], &[u8]) -> Ordering, cases: &[(&str, &str, Ordering)]) {
        for &(a, b, expected) in cases {
            assert_eq!(
                compare(a.as_bytes(), b.as_bytes()),
                expected,
                "compare({a:?}, {b:?})"
            );
            assert_eq!(
                compare(b.as_bytes(), a.as_bytes()),
                expected.reverse(),
                "compare({b:?}, {a:?})"
            );
        }
    }

    #[test]
    fn deb_tilde_sorts_before_everything() {
        check(
            deb_version_cmp,
            &[
                ("1.0~rc1", "1.0", Less),
                ("1.0~rc1", "1.0~rc2", Less),
                ("1.0~~", "1.0~~a", Less),
                ("1.0~~a", "1.0~", Less),
                ("1.0~", "1.0", Less),
                ("1.0", "1.0a", Less),
                ("1.0~rc1", "1.0~", Greater),
                ("2.0~beta1", "1.9", Greater),
                ("1.0-1~bpo1", "1.0-1", Less),
                ("3.0.11-1~deb12u2", "3.0.11-1", Less),
            ],
        );
    }

    #[test]
    fn deb_epoch_wins_over_version() {
        check(
            deb_version_cmp,
            &[
                ("1:0.9", "2.0", Greater),
                ("0:1.0", "1.0", Equal),
                ("1:1.0", "1:1.0", Equal),
                ("2:0.1", "10:0.1", Less),
                ("00001:1.0", "1:1.0", Equal),
                (
                    "99999999999999999999999:1",
                    "99999999999999999999998:9",
                    Greater,
                ),
            ],
        );
    }

    #[test]
    fn deb_letters_digits_and_punctuation() {
        check(
            deb_version_cmp,
            &[
                ("1.0a", "1.0", Greater),
                ("1.0a", "1.0b", Less),
                ("1.0a", "1.0.1", Less),
                ("1.0+dfsg", "1.0", Greater),
                ("1.0+dfsg", "1.0.1", Less),
                ("1.a", "1.1", Greater),
                ("1.0A", "1.0a", Less),
                ("a", "+", Less),
                ("1.2.3", "1.2", Greater),
                ("2.30", "2.4", Greater),
                ("1.10", "1.9", Greater),
            ],
        );
    }

    #[test]
    fn deb_leading_zeros_and_revisions() {
        check(
            deb_version_cmp,
            &[
                ("1.001", "1.1", Equal),
                ("1.0", "1.00", Equal),
                ("1.0", "1.0-0", Equal),
                ("1.0-1", "1.0-2", Less),
                ("1.0-10", "1.0-9", Greater),
                ("1.0-1ubuntu1", "1.0-1", Greater),
                ("1.0-1", "1.0", Greater),
                ("1.2-3-4", "1.2-3-5", Less),
                ("1.2-3-4", "1.2-4", Greater),
                ("3.0.11-1~deb12u2", "3.0.13-1~deb12u1", Less),
                ("2.36-9+deb12u4", "2.36-9+deb12u10", Less),
            ],
        );
    }

    #[test]
    fn deb_malformed_versions_still_order() {
        check(
            deb_version_cmp,
            &[
                ("", "", Equal),
                ("", "0", Equal),
                ("", "~", Greater),
                ("a:1", "a:1", Equal),
                ("a:1", "a:2", Less),
                (":1", "1", Equal),
                ("-", "", Equal),
            ],
        );
    }

    #[test]
    fn rpm_tilde_and_caret() {
        check(
            rpm_version_cmp,
            &[
                ("1.0~rc1", "1.0", Less),
                ("1.0~rc1", "1.0~rc2", Less),
                ("1.0~rc1~git123", "1.0~rc1", Less),
                ("1.0^", "1.0", Greater),
                ("1.0^git1", "1.0", Greater),
                ("1.0^git1", "1.0^git2", Less),
                ("1.0^git1", "1.01", Less),
                ("1.0^20160101", "1.0.1", Less),
                ("1.0^20160101^git1", "1.0^20160101", Greater),
                ("1.0~rc1^git1", "1.0~rc1", Greater),
                ("1.0~rc1^git1", "1.0", Less),
                ("1.0^git1~pre", "1.0^git1", Less),
                ("1.0^git1~pre", "1.0", Greater),
                ("1.0~", "1.0^", Less),
            ],
        );
    }

    #[test]
    fn rpm_letters_digits_and_separators() {
        check(
            rpm_version_cmp,
            &[
                ("1.0", "1.0", Equal),
                ("1.0", "2.0", Less),
                ("2.0.1", "2.0", Greater),
                ("2.0.1a", "2.0.1", Greater),
                ("5.5p1", "5.5p2", Less),
                ("5.5p10", "5.5p1", Greater),
                ("10xyz", "10.1xyz", Less),
                ("xyz10", "xyz10.1", Less),
                ("xyz.4", "8", Less),
                ("1.a", "1.1", Less),
                ("1b.fc17", "1.fc17", Less),
                ("5.5p1", "5.5.p1", Equal),
                ("2_0", "2.0", Equal),
                ("1..0", "1.0", Equal),
                ("1.0.", "1.0", Equal),
                ("+", "_", Equal),
                ("a", "b", Less),
                ("a", "A", Greater),
                ("1.010", "1.10", Equal),
                ("20101121", "20101122", Less),
            ],
        );
    }

    #[test]
    fn rpm_epoch_and_release() {
        check(
            rpm_version_cmp,
            &[
                ("1:1.0", "2.0", Greater),
                ("0:1.0-1", "1.0-1", Equal),
                ("1.0-1", "1.0-2", Less),
                ("1.0-1.el9", "1.0-1.el8", Greater),
                ("3.0.7-24.el9", "3.0.7-25.el9", Less),
                ("1.0", "1.0-1", Less),
                ("1:3.0.7-24.el9", "3.5.0-1", Greater),
                ("2.0-1", "10.0-1", Less),
            ],
        );
    }

    #[test]
    fn generic_follows_dpkg_and_rpm_caret() {
        check(
            generic_version_cmp,
            &[
                ("1.0~rc1", "1.0", Less),
                ("1:0.9", "2.0", Greater),
                ("1.0^", "1.0", Greater),
                ("1.0^git1", "1.0a", Less),
                ("1.0^git1", "1.0.1", Less),
                ("1.0^git1", "1.0~rc1", Greater),
                ("3.0.13", "3.0.2", Greater),
                ("1.2.3-beta", "1.2.3-alpha", Greater),
                ("10.0.19045.3693", "10.0.19045.4046", Less),
            ],
        );
    }

    /// Strings built from the pieces that matter to the rules, so that equal and nearly equal
    /// versions occur often enough for the order laws to be exercised.
    fn version_text() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(&b"0"[..]),
            Just(&b"00"[..]),
            Just(&b"1"[..]),
            Just(&b"10"[..]),
            Just(&b"a"[..]),
            Just(&b"b"[..]),
            Just(&b"."[..]),
            Just(&b"_"[..]),
            Just(&b"+"[..]),
            Just(&b"~"[..]),
            Just(&b"^"[..]),
            Just(&b":"[..]),
            Just(&b"-"[..]),
            Just(&[0xc3, 0xa9][..]),
        ];
        proptest::collection::vec(piece, 0..8).prop_map(|pieces| pieces.concat())
    }

    type Compare = fn(&[u8], &[u8]) -> Ordering;

    const COMPARATORS: [(&str, Compare); 3] = [
        ("deb", deb_version_cmp),
        ("rpm", rpm_version_cmp),
        ("generic", generic_version_cmp),
    ];

    proptest! {
        #[test]
        fn order_is_reflexive_and_antisymmetric(a in version_text(), b in version_text()) {
            for (name, compare) in COMPARATORS {
                prop_assert_eq!(compare(&a, &a), Equal, "{} reflexive on {:?}", name, a);
                prop_assert_eq!(
                    compare(&a, &b),
                    compare(&b, &a).reverse(),
                    "{} antisymmetric on {:?} {:?}", name, a, b
                );
            }
        }

        #[test]
        fn order_is_transitive(
            a in version_text(),
            b in version_text(),
            c in version_text(),
        ) {
            for (name, compare) in COMPARATORS {
                let triples = [(&a, &b, &c), (&a, &c, &b), (&b, &a, &c), (&b, &c, &a), (&c, &a, &b), (&c, &b, &a)];
                for (x, y, z) in triples {
                    let xy = compare(x, y);
                    let yz = compare(y, z);
                    let xz = compare(x, z);
                    if xy != Greater && yz != Greater {
                        prop_assert_ne!(xz, Greater, "{}: {:?} <= {:?} <= {:?}", name, x, y, z);
                    }
                    if xy == Equal && yz == Equal {
                        prop_assert_eq!(xz, Equal, "{}: {:?} = {:?} = {:?}", name, x, y, z);
                    }
                }
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(a in any::<Vec<u8>>(), b in any::<Vec<u8>>()) {
            for (_, compare) in COMPARATORS {
                let order = compare(&a, &b);
                prop_assert_eq!(order, compare(&b, &a).reverse());
            }
        }
    }
}
