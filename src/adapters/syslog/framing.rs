//! syslog over TCP cut into messages (RFC 6587): octet counting (`<len> <msg>`,
//! as `logger --octet-count` sends) or one message per line, chosen per
//! message. A message longer than the limit is cut to it; the rest of it is
//! dropped as it arrives.

use bytes::{Buf, BytesMut};

/// Most digits of an octet count (up to a gigabyte less one).
const MAX_COUNT_DIGITS: usize = 9;

/// A message cut from the stream, its line end and trailing NULs removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The message's bytes, at most the limit.
    pub bytes: Vec<u8>,
    /// Whether it was cut to the limit.
    pub truncated: bool,
}

/// What is being dropped of a message cut to the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Skip {
    /// Nothing.
    None,
    /// This many more bytes (an octet-counted message).
    Bytes(usize),
    /// Up to the end of the line.
    Line,
}

/// The state of one TCP stream's framing.
#[derive(Debug)]
pub struct Framer {
    max: usize,
    skip: Skip,
}

/// How the next message is framed, once enough bytes are in to tell.
enum Next {
    /// `<len> ` starts it: `header` bytes, then `len` of message.
    Counted { header: usize, len: usize },
    /// It ends at the next line feed.
    Line,
    /// Not enough bytes to tell.
    Unknown,
}

impl Framer {
    /// A framer cutting messages at `max` bytes (at least 1).
    pub fn new(max: usize) -> Framer {
        Framer {
            max: max.max(1),
            skip: Skip::None,
        }
    }

    /// Takes every whole message out of `buf` into `out`.
    pub fn frames(&mut self, buf: &mut BytesMut, out: &mut Vec<Frame>) {
        loop {
            match self.skip {
                Skip::None => {}
                Skip::Bytes(left) => {
                    let n = left.min(buf.len());
                    buf.advance(n);
                    if n < left {
                        self.skip = Skip::Bytes(left - n);
                        return;
                    }
                    self.skip = Skip::None;
                }
                Skip::Line => match buf.iter().position(|&b| b == b'\n') {
                    Some(end) => {
                        buf.advance(end + 1);
                        self.skip = Skip::None;
                    }
                    None => {
                        buf.clear();
                        return;
                    }
                },
            }
            // Blank lines between messages carry nothing.
            let blank = buf
                .iter()
                .take_while(|&&b| matches!(b, b'\n' | b'\r' | b'\0'))
                .count();
            buf.advance(blank);
            if buf.is_empty() {
                return;
            }
            match next(buf) {
                Next::Unknown => return,
                Next::Counted { header, len } => {
                    let kept = len.min(self.max);
                    if buf.len() < header + kept {
                        return;
                    }
                    buf.advance(header);
                    let bytes = buf.split_to(kept);
                    if kept < len {
                        self.skip = Skip::Bytes(len - kept);
                    }
                    out.push(frame(&bytes, kept < len));
                }
                Next::Line => {
                    let window = &buf[..buf.len().min(self.max + 1)];
                    match window.iter().position(|&b| b == b'\n') {
                        Some(end) => {
                            let line = buf.split_to(end + 1);
                            out.push(frame(&line[..end], false));
                        }
                        None if buf.len() > self.max => {
                            let line = buf.split_to(self.max);
                            self.skip = Skip::Line;
                            out.push(frame(&line, true));
                        }
                        None => return,
                    }
                }
            }
        }
    }

    /// At the end of the stream: what is left, as a last message.
    pub fn finish(&mut self, buf: &mut BytesMut) -> Option<Frame> {
        let skipping = self.skip != Skip::None;
        self.skip = Skip::None;
        let rest = buf.split();
        if skipping || rest.iter().all(|&b| matches!(b, b'\n' | b'\r' | b'\0')) {
            return None;
        }
        let kept = rest.len().min(self.max);
        Some(frame(&rest[..kept], kept < rest.len()))
    }
}

/// Tells how the message at the start of `buf` is framed: digits, a space
/// and `<` (a PRI) mean octet counting; anything else, a line.
fn next(buf: &[u8]) -> Next {
    let digits = buf.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > MAX_COUNT_DIGITS || buf[0] == b'0' {
        return Next::Line;
    }
    match (buf.get(digits), buf.get(digits + 1)) {
        (None, _) | (Some(b' '), None) => Next::Unknown,
        (Some(b' '), Some(b'<')) => {
            let len = buf[..digits]
                .iter()
                .fold(0usize, |n, d| n * 10 + usize::from(d - b'0'));
            Next::Counted {
                header: digits + 1,
                len,
            }
        }
        (Some(_), _) => Next::Line,
    }
}

/// A message with its trailing line end and NULs removed.
fn frame(bytes: &[u8], truncated: bool) -> Frame {
    let end = bytes
        .iter()
        .rposition(|&b| !matches!(b, b'\r' | b'\n' | b'\0'))
        .map_or(0, |i| i + 1);
    Frame {
        bytes: bytes[..end].to_vec(),
        truncated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(max: usize, chunks: &[&[u8]]) -> Vec<(String, bool)> {
        let mut framer = Framer::new(max);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            framer.frames(&mut buf, &mut out);
        }
        out.extend(framer.finish(&mut buf));
        out.into_iter()
            .map(|f| (String::from_utf8_lossy(&f.bytes).into_owned(), f.truncated))
            .collect()
    }

    fn plain(lines: &[&str]) -> Vec<(String, bool)> {
        lines.iter().map(|l| (l.to_string(), false)).collect()
    }

    #[test]
    fn lines() {
        assert_eq!(
            cut(100, &[b"<1>a\n<2>b\r\n\n<3>c\0\n"]),
            plain(&["<1>a", "<2>b", "<3>c"])
        );
        // Split anywhere, and a last line without its end.
        assert_eq!(
            cut(100, &[b"<1>a", b"bc\n<2", b">d"]),
            plain(&["<1>abc", "<2>d"])
        );
        // Digits not followed by a space and a PRI are a line.
        assert_eq!(
            cut(100, &[b"2024 was a year\n12:00 noon\n"]),
            plain(&["2024 was a year", "12:00 noon"])
        );
    }

    #[test]
    fn octet_counting() {
        assert_eq!(
            cut(100, &[b"5 <1>ab7 <2>c\nde"]),
            plain(&["<1>ab", "<2>c\nde"])
        );
        // Split inside the count, after it, inside the message.
        assert_eq!(
            cut(100, &[b"9", b" ", b"<3>hel", b"lo!9 <4>world!"]),
            plain(&["<3>hello!", "<4>world!"])
        );
        // Counted and line-framed messages mixed.
        assert_eq!(
            cut(100, &[b"<1>line\n4 <2>x<3>next\n"]),
            plain(&["<1>line", "<2>x", "<3>next"])
        );
    }

    #[test]
    fn too_long_is_cut() {
        assert_eq!(
            cut(4, &[b"<1>abcdef\n<2>g\n"]),
            vec![("<1>a".into(), true), ("<2>g".into(), false)]
        );
        assert_eq!(
            cut(4, &[b"<1>ab", b"cd", b"ef", b"\n<2>g\n"]),
            vec![("<1>a".into(), true), ("<2>g".into(), false)]
        );
        assert_eq!(
            cut(4, &[b"9 <1>abc", b"def6 <2>xyz"]),
            vec![("<1>a".into(), true), ("<2>x".into(), true)]
        );
        // A message of exactly the limit is whole.
        assert_eq!(cut(4, &[b"<1>a\n"]), plain(&["<1>a"]));
        assert_eq!(cut(4, &[b"<1>a"]), plain(&["<1>a"]));
        assert_eq!(cut(4, &[b"<1>ab"]), vec![("<1>a".into(), true)]);
    }

    #[test]
    fn garbage_and_blank() {
        assert_eq!(cut(100, &[b"\n\r\n\0"]), plain(&[]));
        assert_eq!(
            cut(100, &[b"\xff\xfe\x01\n"]),
            plain(&["\u{fffd}\u{fffd}\u{1}"])
        );
        // A count too long to be one is a line.
        assert_eq!(
            cut(100, &[b"1234567890 <1>x\n"]),
            plain(&["1234567890 <1>x"])
        );
    }

    proptest::proptest! {
        /// Whatever arrives, in whatever pieces: no panic, no message over
        /// the limit, and no byte kept that was not sent.
        #[test]
        fn any_stream_is_framed(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400),
            cuts in proptest::collection::vec(0usize..400, 0..8),
            max in 1usize..64,
        ) {
            let mut framer = Framer::new(max);
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            let mut at = 0;
            let mut cuts = cuts;
            cuts.sort_unstable();
            for cut in cuts.into_iter().chain([bytes.len()]) {
                let cut = cut.min(bytes.len()).max(at);
                buf.extend_from_slice(&bytes[at..cut]);
                at = cut;
                framer.frames(&mut buf, &mut out);
            }
            out.extend(framer.finish(&mut buf));
            let total: usize = out.iter().map(|f| f.bytes.len()).sum();
            proptest::prop_assert!(total <= bytes.len());
            for frame in &out {
                proptest::prop_assert!(frame.bytes.len() <= max);
            }
        }
    }
}
