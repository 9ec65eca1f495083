//! JSON encoding as Go's `encoding/json` produces it for job log events (docs/protocol.md §6.1).
//!
//! Log consumers parse the JSON, but the upstream agent is HTML-safe (`<`, `>`, `&`, U+2028 and
//! U+2029 escaped) and turns every invalid UTF-8 byte into U+FFFD. Matching both keeps our logs
//! indistinguishable from upstream's for anything that looks at bytes. Hand-written because no
//! crate does it: `serde_json` has no HTML-safe mode and refuses invalid UTF-8 rather than
//! replacing it.

use serde::Serialize;
use serde_json::ser::Formatter;
use std::io::{self, Write};

/// Formatter that escapes the characters Go's encoder escapes on top of JSON's required ones.
#[derive(Default)]
pub struct GoFormatter;

impl Formatter for GoFormatter {
    /// serde_json has already escaped quotes, backslashes and control characters around these
    /// fragments; what is left for Go's rules are `<`, `>`, `&`, U+2028 and U+2029.
    fn write_string_fragment<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut escaped = Vec::with_capacity(fragment.len() + 8);
        write_escaped_text(&mut escaped, fragment.as_bytes());
        writer.write_all(&escaped)
    }
}

/// Serializes `value` as compact JSON with Go's escaping, appended to `out`.
pub fn write_go_json<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    value: &T,
) -> serde_json::Result<()> {
    let mut serializer = serde_json::Serializer::with_formatter(out, GoFormatter);
    value.serialize(&mut serializer)
}

/// Serializes `value` as compact JSON with Go's escaping.
pub fn to_go_json<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(128);
    write_go_json(&mut out, value)?;
    Ok(out)
}

/// Appends `bytes` as a quoted JSON string exactly as Go's encoder writes a Go string holding
/// them: HTML-safe, `\u2028`/`\u2029` escaped, and each invalid UTF-8 byte written as `\ufffd`.
/// This is the hot path of job logging (one call per output chunk), so it works on bytes with
/// no intermediate string.
pub fn write_go_string_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut rest = bytes;
    while !rest.is_empty() {
        let (valid, invalid_byte) = match std::str::from_utf8(rest) {
            Ok(text) => (text, false),
            Err(error) => {
                let valid = error.valid_up_to();
                // The prefix was just validated, so this cannot fail.
                (
                    std::str::from_utf8(&rest[..valid]).unwrap_or_default(),
                    true,
                )
            }
        };
        write_escaped_text(out, valid.as_bytes());
        rest = &rest[valid.len()..];
        if invalid_byte {
            out.extend_from_slice(b"\\ufffd");
            rest = &rest[1..];
        }
    }
    out.push(b'"');
}

/// Bytes that need a look in [`write_escaped_text`]: control characters, `"`, `\\`, `<`, `>`,
/// `&`, and 0xE2 (the lead byte of U+2028/U+2029). Everything else is copied as is.
const NEEDS_ESCAPE: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 0x20 {
        table[byte] = true;
        byte += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table[b'<' as usize] = true;
    table[b'>' as usize] = true;
    table[b'&' as usize] = true;
    table[0xE2] = true;
    table
};

/// Escapes valid UTF-8 text the way Go does, copying safe runs in bulk.
fn write_escaped_text(out: &mut Vec<u8>, text: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut start = 0;
    let mut index = 0;
    while index < text.len() {
        let byte = text[index];
        if !NEEDS_ESCAPE[byte as usize] {
            index += 1;
            continue;
        }
        let escape: Option<&[u8]> = match byte {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            b'\n' => Some(b"\\n"),
            b'\r' => Some(b"\\r"),
            b'\t' => Some(b"\\t"),
            0x08 => Some(b"\\b"),
            0x0c => Some(b"\\f"),
            b'<' => Some(b"\\u003c"),
            b'>' => Some(b"\\u003e"),
            b'&' => Some(b"\\u0026"),
            0xE2 if text.get(index + 1) == Some(&0x80)
                && matches!(text.get(index + 2), Some(0xA8) | Some(0xA9)) =>
            {
                Some(if text[index + 2] == 0xA8 {
                    b"\\u2028"
                } else {
                    b"\\u2029"
                })
            }
            0xE2 => {
                index += 1;
                continue;
            }
            _ => None,
        };
        out.extend_from_slice(&text[start..index]);
        match escape {
            Some(escape) => {
                out.extend_from_slice(escape);
                index += if byte == 0xE2 { 3 } else { 1 };
            }
            None => {
                out.extend_from_slice(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[(byte >> 4) as usize],
                    HEX[(byte & 0xf) as usize],
                ]);
                index += 1;
            }
        }
        start = index;
    }
    out.extend_from_slice(&text[start..]);
}

/// Converts bytes to a string replacing **each** invalid byte with U+FFFD, as Go's JSON encoder
/// does (Rust's `from_utf8_lossy` replaces a whole invalid sequence with one U+FFFD instead).
pub fn utf8_lossy_per_byte(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_string(),
        Err(_) => {
            let mut out = String::with_capacity(bytes.len() + 8);
            let mut rest = bytes;
            while !rest.is_empty() {
                match std::str::from_utf8(rest) {
                    Ok(text) => {
                        out.push_str(text);
                        break;
                    }
                    Err(error) => {
                        let valid = error.valid_up_to();
                        // SAFETY-free: the prefix was just validated.
                        out.push_str(std::str::from_utf8(&rest[..valid]).unwrap_or_default());
                        out.push('\u{FFFD}');
                        rest = &rest[valid + 1..];
                    }
                }
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_go() {
        let out = to_go_json("a<b>&c\u{2028}\u{2029}\"\\\n\u{1}é").unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#""a\u003cb\u003e\u0026c\u2028\u2029\"\\\n\u0001é""#
        );
    }

    #[test]
    fn escaped_output_parses_back_to_the_same_text() {
        let text = "<script>alert('x & y')</script>\u{2028}━特定";
        let out = to_go_json(text).unwrap();
        let back: String = serde_json::from_slice(&out).unwrap();
        assert_eq!(back, text);
    }

    #[test]
    fn byte_writer_matches_the_serde_path_on_valid_text() {
        let samples = [
            "plain ascii",
            "a<b>&c\u{2028}\u{2029}\"\\\n\r\t\u{1}\u{8}\u{c}\u{1f}é━特定",
            "",
            "\u{7f} del and \u{FFFD} a real replacement character",
        ];
        for sample in samples {
            let mut fast = Vec::new();
            write_go_string_bytes(&mut fast, sample.as_bytes());
            assert_eq!(
                String::from_utf8(fast).unwrap(),
                String::from_utf8(to_go_json(sample).unwrap()).unwrap(),
                "{sample:?}"
            );
        }
    }

    #[test]
    fn byte_writer_escapes_invalid_bytes_as_go_does() {
        let mut out = Vec::new();
        write_go_string_bytes(&mut out, &[b'a', 150, 150, b'<', 0xE6, 0x97]);
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            r#""a\ufffd\ufffd\u003c\ufffd\ufffd""#
        );
        let decoded: String = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            decoded,
            utf8_lossy_per_byte(&[b'a', 150, 150, b'<', 0xE6, 0x97])
        );
    }

    #[test]
    fn each_invalid_byte_becomes_one_replacement_character() {
        assert_eq!(
            utf8_lossy_per_byte(&[150, 150, 150, 150, 150]),
            "\u{FFFD}".repeat(5)
        );
        // A truncated 3-byte sequence is two invalid bytes for Go, one replacement for Rust's lossy.
        assert_eq!(
            utf8_lossy_per_byte(&[b'a', 0xE6, 0x97, b'b']),
            "a\u{FFFD}\u{FFFD}b"
        );
        assert_eq!(utf8_lossy_per_byte("ok ━".as_bytes()), "ok ━");
        assert_eq!(utf8_lossy_per_byte(&[0xC2, 0x96]), "\u{96}");
    }
}
