//! Reading a syslog message: RFC 5424 (`<PRI>1 TIMESTAMP HOST APP PROCID
//! MSGID [SD] MSG`), RFC 3164 (`<PRI>Mmm dd hh:mm:ss HOST TAG[PID]: MSG`), and
//! anything else as a bare message. Lenient, as receivers are: what does not
//! fit a format is kept in the message rather than refused.

/// Facility names by number, as syslog implementations spell them.
const FACILITIES: [&str; 24] = [
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv",
    "ftp", "ntp", "audit", "alert", "clock", "local0", "local1", "local2", "local3", "local4",
    "local5", "local6", "local7",
];

/// Severity names by number.
const SEVERITIES: [&str; 8] = [
    "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
];

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Longest RFC 3164 tag recognised (the RFC says 32; senders write longer).
const MAX_TAG: usize = 64;

/// Which format a message was read as, published as `rfc5424`, `rfc3164` or
/// `unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// RFC 5424.
    Rfc5424,
    /// RFC 3164 (BSD syslog).
    Rfc3164,
    /// No `<PRI>`: the whole line is the message.
    Unknown,
}

/// The parts of a message; `None` where it has none (or RFC 5424's `-`).
/// Serialized as they are published (see [`super::record`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Parsed<'a> {
    /// The host name.
    pub host: Option<&'a str>,
    /// The timestamp as written.
    pub timestamp: Option<&'a str>,
    /// The facility's name, from `<PRI>`.
    pub facility: Option<&'static str>,
    /// The severity's name, from `<PRI>`.
    pub severity: Option<&'static str>,
    /// The application (RFC 5424 APP-NAME, RFC 3164 TAG).
    pub app: Option<&'a str>,
    /// The process id (RFC 5424 PROCID, RFC 3164 `[PID]`).
    pub pid: Option<&'a str>,
    /// RFC 5424 MSGID.
    pub msgid: Option<&'a str>,
    /// RFC 5424 STRUCTURED-DATA, as written.
    pub structured_data: Option<&'a str>,
    /// The free text.
    pub message: &'a str,
    /// How it was read.
    pub format: Format,
}

impl<'a> Parsed<'a> {
    fn bare(format: Format, pri: Option<u8>, message: &'a str) -> Parsed<'a> {
        Parsed {
            format,
            facility: pri.and_then(|p| FACILITIES.get(usize::from(p >> 3)).copied()),
            severity: pri.and_then(|p| SEVERITIES.get(usize::from(p & 7)).copied()),
            timestamp: None,
            host: None,
            app: None,
            pid: None,
            msgid: None,
            structured_data: None,
            message,
        }
    }
}

/// Reads one message (its framing already removed).
pub fn parse(line: &str) -> Parsed<'_> {
    let Some((pri, rest)) = pri(line) else {
        return Parsed::bare(Format::Unknown, None, line);
    };
    if let Some(parsed) = rest.strip_prefix("1 ").and_then(|rest| rfc5424(pri, rest)) {
        return parsed;
    }
    rfc3164(pri, rest)
}

/// `<PRI>` (0 to 191) and what follows it.
fn pri(line: &str) -> Option<(u8, &str)> {
    let rest = line.strip_prefix('<')?;
    let close = rest.bytes().take(4).position(|b| b == b'>')?;
    let digits = &rest[..close];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: u8 = digits.parse().ok().filter(|&v| v <= 191)?;
    Some((value, &rest[close + 1..]))
}

/// The next space-separated word and what follows its space.
fn word(text: &str) -> Option<(&str, &str)> {
    let (word, rest) = text.split_once(' ').unwrap_or((text, ""));
    (!word.is_empty()).then_some((word, rest))
}

/// RFC 5424's `-` stands for nothing.
fn nil(word: &str) -> Option<&str> {
    (word != "-").then_some(word)
}

/// The part after `<PRI>1 `; `None` when the header fields are not all there.
fn rfc5424(pri: u8, rest: &str) -> Option<Parsed<'_>> {
    let (timestamp, rest) = word(rest)?;
    let (host, rest) = word(rest)?;
    let (app, rest) = word(rest)?;
    let (pid, rest) = word(rest)?;
    let (msgid, rest) = word(rest)?;
    let (structured_data, rest) = match rest.strip_prefix('-') {
        Some(after) if after.is_empty() || after.starts_with(' ') => (None, after),
        Some(_) | None => match structured(rest) {
            Some(end) => (Some(&rest[..end]), &rest[end..]),
            None => (None, rest),
        },
    };
    let message = rest.strip_prefix(' ').unwrap_or(rest);
    let message = message.strip_prefix('\u{feff}').unwrap_or(message);
    Some(Parsed {
        timestamp: nil(timestamp),
        host: nil(host),
        app: nil(app),
        pid: nil(pid),
        msgid: nil(msgid),
        structured_data,
        ..Parsed::bare(Format::Rfc5424, Some(pri), message)
    })
}

/// The length of the SD-ELEMENTs at the start of `text` (`[id k="v"]…`),
/// quoted values and their `\"`, `\\`, `\]` escapes respected.
fn structured(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut at = 0;
    while bytes.get(at) == Some(&b'[') {
        let mut quoted = false;
        let mut escaped = false;
        let mut end = None;
        for (i, &b) in bytes.iter().enumerate().skip(at + 1) {
            match (quoted, escaped, b) {
                (true, true, _) => escaped = false,
                (true, false, b'\\') => escaped = true,
                (true, false, b'"') => quoted = false,
                (false, _, b'"') => quoted = true,
                (false, _, b']') => {
                    end = Some(i + 1);
                    break;
                }
                (true, false, _) | (false, _, _) => {}
            }
        }
        at = end?;
    }
    (at > 0).then_some(at)
}

/// The part after `<PRI>`, read as RFC 3164: a timestamp and a host if
/// there, then a tag if there, then the message.
fn rfc3164(pri: u8, rest: &str) -> Parsed<'_> {
    let (timestamp, rest) = match timestamp3164(rest) {
        Some((timestamp, rest)) => (Some(timestamp), rest),
        None => (None, rest),
    };
    // Without a timestamp, no host either (RFC 3164, 4.3.3): a word that
    // looks like a tag is the tag.
    let (host, rest) = match (timestamp, word(rest)) {
        (Some(_), Some((host, after))) if tag(host).is_none() => (Some(host), after),
        (Some(_) | None, Some(_) | None) => (None, rest),
    };
    let (app, pid, message) = match word(rest).and_then(|(w, after)| Some((tag(w)?, after))) {
        Some(((app, pid), after)) => (Some(app), pid, after),
        None => (None, None, rest),
    };
    Parsed {
        timestamp,
        host,
        app,
        pid,
        ..Parsed::bare(Format::Rfc3164, Some(pri), message)
    }
}

/// `Mmm dd hh:mm:ss` (day padded with a space or a zero), or an RFC 3339
/// timestamp as some senders write in RFC 3164, then a space.
fn timestamp3164(text: &str) -> Option<(&str, &str)> {
    if let Some(stamp) = text.get(..15) {
        let b = stamp.as_bytes();
        let digit = |i: usize| b[i].is_ascii_digit();
        let fits = stamp.get(..3).is_some_and(|month| MONTHS.contains(&month))
            && b[3] == b' '
            && (b[4] == b' ' || digit(4))
            && digit(5)
            && b[6] == b' '
            && digit(7)
            && digit(8)
            && b[9] == b':'
            && digit(10)
            && digit(11)
            && b[12] == b':'
            && digit(13)
            && digit(14);
        if fits {
            let rest = &text[15..];
            return Some((stamp, rest.strip_prefix(' ').unwrap_or(rest)));
        }
    }
    let (first, rest) = word(text)?;
    let b = first.as_bytes();
    let rfc3339 =
        b.len() >= 19 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-' && b[10] == b'T';
    rfc3339.then_some((first, rest))
}

/// A tag word: `app:`, `app[pid]:` or `app[pid]`; the app and the pid.
fn tag(word: &str) -> Option<(&str, Option<&str>)> {
    let (word, colon) = match word.strip_suffix(':') {
        Some(bare) => (bare, true),
        None => (word, false),
    };
    let (app, pid) = match word.strip_suffix(']').and_then(|w| w.split_once('[')) {
        Some((app, pid)) if !pid.is_empty() && !pid.contains(['[', ']']) => (app, Some(pid)),
        Some(_) | None if colon => (word, None),
        Some(_) | None => return None,
    };
    let fine = !app.is_empty() && app.len() <= MAX_TAG && !app.contains(['[', ']', ':', '<', '>']);
    fine.then_some((app, pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc5424_from_logger() {
        let line = r#"<156>1 2026-11-27T15:33:08.503294+00:00 vm myapp 1116 M1 [timeQuality tzKnown="1" isSynced="0"][x@1 a="b"] hello world"#;
        let p = parse(line);
        assert_eq!(p.format, Format::Rfc5424);
        assert_eq!(p.facility, Some("local3"));
        assert_eq!(p.severity, Some("warning"));
        assert_eq!(p.timestamp, Some("2026-11-27T15:33:08.503294+00:00"));
        assert_eq!(p.host, Some("vm"));
        assert_eq!(p.app, Some("myapp"));
        assert_eq!(p.pid, Some("1116"));
        assert_eq!(p.msgid, Some("M1"));
        assert_eq!(
            p.structured_data,
            Some(r#"[timeQuality tzKnown="1" isSynced="0"][x@1 a="b"]"#)
        );
        assert_eq!(p.message, "hello world");
    }

    #[test]
    fn rfc5424_nils_escapes_and_bom() {
        let p = parse("<34>1 - - - - - -");
        assert_eq!(p.format, Format::Rfc5424);
        assert_eq!((p.facility, p.severity), (Some("auth"), Some("crit")));
        assert_eq!(
            (p.timestamp, p.host, p.app, p.pid, p.msgid),
            (None, None, None, None, None)
        );
        assert_eq!(p.structured_data, None);
        assert_eq!(p.message, "");

        let p = parse(concat!(
            r#"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 "#,
            r#"[exampleSDID@32473 iut="3" eventID="1011" x="a \"]\" b"] "#,
            "\u{feff}An application event"
        ));
        assert_eq!(p.app, Some("evntslog"));
        assert_eq!(p.pid, None);
        assert_eq!(p.msgid, Some("ID47"));
        assert_eq!(
            p.structured_data,
            Some(r#"[exampleSDID@32473 iut="3" eventID="1011" x="a \"]\" b"]"#)
        );
        assert_eq!(p.message, "An application event");
        assert_eq!((p.facility, p.severity), (Some("local4"), Some("notice")));
    }

    #[test]
    fn rfc3164_from_logger_and_others() {
        let p = parse("<156>Nov 27 15:33:08 vm myapp: hello world");
        assert_eq!(p.format, Format::Rfc3164);
        assert_eq!((p.facility, p.severity), (Some("local3"), Some("warning")));
        assert_eq!(p.timestamp, Some("Nov 27 15:33:08"));
        assert_eq!(p.host, Some("vm"));
        assert_eq!(p.app, Some("myapp"));
        assert_eq!(p.pid, None);
        assert_eq!(p.message, "hello world");

        let p = parse("<13>Feb  5 17:32:18 10.0.0.99 sshd[4321]: Accepted key");
        assert_eq!(p.timestamp, Some("Feb  5 17:32:18"));
        assert_eq!(p.host, Some("10.0.0.99"));
        assert_eq!((p.app, p.pid), (Some("sshd"), Some("4321")));
        assert_eq!(p.message, "Accepted key");

        // No host: the word after the timestamp is a tag.
        let p = parse("<13>Feb 05 17:32:18 cron[7]: ran");
        assert_eq!(p.host, None);
        assert_eq!((p.app, p.pid), (Some("cron"), Some("7")));
        assert_eq!(p.message, "ran");

        // No timestamp: no host, the tag still read.
        let p = parse("<0>kernel: oops");
        assert_eq!((p.facility, p.severity), (Some("kern"), Some("emerg")));
        assert_eq!((p.timestamp, p.host, p.app), (None, None, Some("kernel")));
        assert_eq!(p.message, "oops");

        // An RFC 3339 timestamp in a BSD line.
        let p = parse("<30>2026-11-27T10:00:00Z web nginx: up");
        assert_eq!(p.timestamp, Some("2026-11-27T10:00:00Z"));
        assert_eq!((p.host, p.app), (Some("web"), Some("nginx")));
        assert_eq!(p.message, "up");

        // Neither tag nor timestamp: all message.
        let p = parse("<191>just some words");
        assert_eq!((p.facility, p.severity), (Some("local7"), Some("debug")));
        assert_eq!((p.host, p.app), (None, None));
        assert_eq!(p.message, "just some words");
    }

    #[test]
    fn no_pri_or_bad_pri_is_all_message() {
        for line in [
            "hello there",
            "<192>too big",
            "<>empty",
            "<1234>long",
            "<a>letters",
            "<13",
            "",
            "\u{fffd}\u{0}\u{1}binary",
        ] {
            let p = parse(line);
            assert_eq!(p.format, Format::Unknown, "{line:?}");
            assert_eq!((p.facility, p.severity), (None, None));
            assert_eq!(p.message, line);
        }
    }

    #[test]
    fn broken_rfc5424_falls_back() {
        // Too few header fields: read as BSD syslog.
        let p = parse("<14>1 only two");
        assert_eq!(p.format, Format::Rfc3164);
        assert_eq!(p.message, "1 only two");
        // Unterminated structured data stays in the message.
        let p = parse("<14>1 - h a p m [open no end");
        assert_eq!(p.format, Format::Rfc5424);
        assert_eq!(p.structured_data, None);
        assert_eq!(p.message, "[open no end");
    }

    proptest::proptest! {
        /// Whatever the line, it is read, and the message is part of it.
        #[test]
        fn any_line_is_read(line in "\\PC{0,120}|<[0-9]{1,3}>(1 )?[ -~]{0,80}") {
            let parsed = parse(&line);
            proptest::prop_assert!(line.contains(parsed.message));
        }
    }
}
