//! JSON strings written straight into an answer, for the shapes every message
//! passes through (a pop's answer, a streamed event). Their output is the
//! same, byte for byte, as serde_json's: the same escapes, the same order of
//! fields. serde_json walks a string a byte at a time through its escape
//! table, and `json!` copies the message into a map first; these scan eight
//! bytes at a time and copy the runs that need no escape whole (a message is
//! mostly such a run).

use std::fmt::Write;

/// Eight copies of `byte`, one per byte of a `u64`.
const fn splat(byte: u8) -> u64 {
    u64::from_ne_bytes([byte; 8])
}

/// Whether any of the eight bytes of `chunk` needs an escape in a JSON string:
/// a control character (below 0x20), `"` or `\`. Exact, with no false alarms:
/// `has_zero` is exact for a zero byte, and the test for bytes below 0x20 is
/// exact for bounds up to 0x80.
fn needs_escape(chunk: u64) -> bool {
    let has_zero = |v: u64| v.wrapping_sub(splat(0x01)) & !v & splat(0x80) != 0;
    let below_space = chunk.wrapping_sub(splat(0x20)) & !chunk & splat(0x80) != 0;
    below_space || has_zero(chunk ^ splat(b'"')) || has_zero(chunk ^ splat(b'\\'))
}

/// Appends `text` to `out` as a JSON string, quotes included.
pub fn push_str(out: &mut String, text: &str) {
    out.reserve(text.len() + 2);
    out.push('"');
    let bytes = text.as_bytes();
    // Start of the run not yet copied.
    let mut clean = 0;
    let mut at = 0;
    for chunk in bytes.chunks_exact(8) {
        if <[u8; 8]>::try_from(chunk).map_or(true, |word| needs_escape(u64::from_ne_bytes(word))) {
            escape_run(out, text, &mut clean, at..at + 8);
        }
        at += 8;
    }
    escape_run(out, text, &mut clean, at..bytes.len());
    out.push_str(&text[clean..]);
    out.push('"');
}

/// Escapes what needs it among the bytes of `text` in `range`, copying the
/// run before each escape; `clean` is where the run not yet copied starts.
fn escape_run(out: &mut String, text: &str, clean: &mut usize, range: std::ops::Range<usize>) {
    for i in range {
        let byte = text.as_bytes()[i];
        let escape = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => continue,
        };
        // Runs end before an ASCII byte, so on a character boundary.
        out.push_str(&text[*clean..i]);
        if escape.is_empty() {
            // Writing to a String cannot fail.
            let _ = write!(out, "\\u{byte:04x}");
        } else {
            out.push_str(escape);
        }
        *clean = i + 1;
    }
}

/// `{"key":<key>,"value":<value>`, the start of every message's JSON form;
/// the caller adds its other fields and the closing brace.
pub fn open_message(out: &mut String, key: &str, value: &str) {
    out.push_str("{\"key\":");
    push_str(out, key);
    out.push_str(",\"value\":");
    push_str(out, value);
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn quoted(text: &str) -> String {
        let mut out = String::new();
        push_str(&mut out, text);
        out
    }

    #[test]
    fn escapes_as_serde_json_does() {
        for text in [
            "",
            "plain",
            "exactly8",
            "a \"quoted\" \\ path\n",
            "\u{0}\u{1}\u{7}\u{8}\t\n\u{b}\u{c}\r\u{1f} \u{7f}",
            "accents é and 日本語 then \" after",
            "sixteen bytes ok\"",
        ] {
            assert_eq!(
                quoted(text),
                serde_json::to_string(text).unwrap(),
                "{text:?}"
            );
        }
    }

    #[test]
    fn a_message_opens_with_its_key_and_value() {
        let mut out = String::new();
        open_message(&mut out, "q:1", "say \"hi\"");
        out.push('}');
        let expected = serde_json::json!({ "key": "q:1", "value": "say \"hi\"" }).to_string();
        assert_eq!(out, expected);
    }

    proptest! {
        #[test]
        fn any_string_is_escaped_as_serde_json_does(text in any::<String>()) {
            prop_assert_eq!(quoted(&text), serde_json::to_string(&text).unwrap());
        }

        #[test]
        fn control_and_quote_heavy_strings_too(text in "[\\x00-\\x21\"\\\\a-zé]{0,40}") {
            prop_assert_eq!(quoted(&text), serde_json::to_string(&text).unwrap());
        }
    }
}
