//! Command lines of the memcached text protocol, parsed without I/O.

use crate::broker::QueueName;

/// Longest command line accepted, in bytes, without its `\r\n` (memcached's
/// own limit for a line that is not a `get`).
pub const MAX_LINE: usize = 2048;
/// Longest key memcached accepts, in bytes.
pub const MAX_KEY: usize = 250;
/// Largest `<bytes>` of a storage command memcached accepts at all.
const MAX_DATA_COUNT: u64 = i32::MAX as u64 - 2;
/// The reply to a line whose words do not fit its command, as memcached words it.
pub const BAD_FORMAT: &str = "bad command line format";

/// A storage command: each carries a data block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// `set`: enqueue.
    Set,
    /// `add`: enqueue, as `set` (a queue always takes one more message).
    Add,
    /// `replace`: refused, messages cannot be replaced.
    Replace,
    /// `append`: refused, messages cannot be changed.
    Append,
    /// `prepend`: refused, messages cannot be changed.
    Prepend,
    /// `cas`: refused, messages cannot be replaced.
    Cas,
}

impl Verb {
    /// The command's name.
    pub fn name(self) -> &'static str {
        match self {
            Verb::Set => "set",
            Verb::Add => "add",
            Verb::Replace => "replace",
            Verb::Append => "append",
            Verb::Prepend => "prepend",
            Verb::Cas => "cas",
        }
    }
}

/// A command line understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    /// `<verb> <key> <flags> <exptime> <bytes> [<cas unique>] [noreply]`,
    /// followed by `<bytes>` of data and `\r\n`.
    Store {
        /// Which command.
        verb: Verb,
        /// The key (the queue), unchecked.
        key: &'a [u8],
        /// Seconds until expiry (0: never); past 30 days, a Unix time.
        exptime: i64,
        /// The length of the data block.
        bytes: usize,
        /// Whether every reply to it is left out.
        noreply: bool,
    },
    /// `get <key>…` or `gets <key>…`.
    Get {
        /// The keys, unchecked, in order.
        keys: Vec<&'a [u8]>,
        /// `gets`: each value carries a cas unique.
        cas: bool,
    },
    /// `delete <key> [0] [noreply]`.
    Delete {
        /// The key, unchecked.
        key: &'a [u8],
        /// Whether every reply to it is left out.
        noreply: bool,
    },
    /// `stats [<arg>…]`.
    Stats {
        /// Whether a sub-statistic was asked for (`stats items`, …).
        detail: bool,
    },
    /// `version`.
    Version,
    /// `verbosity <level> [noreply]`.
    Verbosity {
        /// Whether the reply is left out.
        noreply: bool,
    },
    /// `quit`.
    Quit,
    /// `flush_all [<delay>] [noreply]`.
    FlushAll {
        /// Whether the reply is left out.
        noreply: bool,
    },
    /// A memcached command restmq does not do to queues (`incr`, `decr`, `touch`).
    Unsupported {
        /// Its name.
        name: &'static str,
        /// Whether the reply is left out.
        noreply: bool,
    },
}

/// Why a command line is not understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineError {
    /// Not a command memcached knows: answered `ERROR`.
    Unknown,
    /// A known command with the wrong words: answered `CLIENT_ERROR <reason>`.
    Malformed {
        /// The reason.
        reason: &'static str,
        /// Whether the reply is left out (the line ends with `noreply`).
        noreply: bool,
    },
}

/// Parses a command line, `\r\n` removed.
pub fn parse(line: &[u8]) -> Result<Command<'_>, LineError> {
    let words: Vec<&[u8]> = line
        .split(|&b| b == b' ')
        .filter(|w| !w.is_empty())
        .collect();
    let Some((&name, args)) = words.split_first() else {
        return Err(LineError::Unknown);
    };
    let noreply = args.last() == Some(&&b"noreply"[..]);
    let malformed = |reason| LineError::Malformed { reason, noreply };
    let verb = match name {
        b"set" => Some(Verb::Set),
        b"add" => Some(Verb::Add),
        b"replace" => Some(Verb::Replace),
        b"append" => Some(Verb::Append),
        b"prepend" => Some(Verb::Prepend),
        b"cas" => Some(Verb::Cas),
        _ => None,
    };
    if let Some(verb) = verb {
        return store(verb, args, noreply).ok_or_else(|| malformed(BAD_FORMAT));
    }
    let plain = if noreply {
        &args[..args.len() - 1]
    } else {
        args
    };
    match name {
        b"get" | b"gets" if !args.is_empty() => Ok(Command::Get {
            keys: args.to_vec(),
            cas: name == b"gets",
        }),
        b"delete" => match plain {
            [key] | [key, b"0"] => Ok(Command::Delete { key, noreply }),
            _ => Err(malformed(
                "bad command line format.  Usage: delete <key> [noreply]",
            )),
        },
        b"stats" => Ok(Command::Stats {
            detail: !args.is_empty(),
        }),
        b"version" if args.is_empty() => Ok(Command::Version),
        b"quit" if args.is_empty() => Ok(Command::Quit),
        b"verbosity" => match plain {
            [level] if number(level).is_some() => Ok(Command::Verbosity { noreply }),
            _ => Err(malformed(BAD_FORMAT)),
        },
        b"flush_all" => match plain {
            [] => Ok(Command::FlushAll { noreply }),
            [delay] if number(delay).is_some() => Ok(Command::FlushAll { noreply }),
            _ => Err(malformed(BAD_FORMAT)),
        },
        b"incr" => Ok(Command::Unsupported {
            name: "incr",
            noreply,
        }),
        b"decr" => Ok(Command::Unsupported {
            name: "decr",
            noreply,
        }),
        b"touch" => Ok(Command::Unsupported {
            name: "touch",
            noreply,
        }),
        _ => Err(LineError::Unknown),
    }
}

/// The words of a storage command after its name.
fn store<'a>(verb: Verb, args: &[&'a [u8]], noreply: bool) -> Option<Command<'a>> {
    let plain = if noreply {
        &args[..args.len() - 1]
    } else {
        args
    };
    let (key, flags, exptime, bytes) = match (verb, plain) {
        (Verb::Cas, [key, flags, exptime, bytes, unique]) => {
            number(unique)?;
            (key, flags, exptime, bytes)
        }
        (Verb::Cas, _) => return None,
        (
            Verb::Set | Verb::Add | Verb::Replace | Verb::Append | Verb::Prepend,
            [key, flags, exptime, bytes],
        ) => (key, flags, exptime, bytes),
        (Verb::Set | Verb::Add | Verb::Replace | Verb::Append | Verb::Prepend, _) => return None,
    };
    u32::try_from(number(flags)?).ok()?;
    let exptime = signed(exptime)?;
    let bytes = number(bytes).filter(|&n| n <= MAX_DATA_COUNT)?;
    Some(Command::Store {
        verb,
        key,
        exptime,
        bytes: usize::try_from(bytes).ok()?,
        noreply,
    })
}

/// A decimal number without sign.
fn number(word: &[u8]) -> Option<u64> {
    if word.is_empty() || word.len() > 20 || !word.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(word).ok()?.parse().ok()
}

/// A decimal number, maybe negative.
fn signed(word: &[u8]) -> Option<i64> {
    match word.strip_prefix(b"-") {
        Some(digits) => i64::try_from(number(digits)?).ok().map(|n| -n),
        None => i64::try_from(number(word)?).ok(),
    }
}

/// The queue a key names, or why it names none: a memcached key (at most 250
/// bytes, no control characters) that is also a restmq queue name.
pub fn queue_name(key: &[u8]) -> Result<QueueName, &'static str> {
    if key.len() > MAX_KEY {
        return Err("invalid key: longer than 250 bytes");
    }
    let Ok(text) = std::str::from_utf8(key) else {
        return Err("invalid key: not UTF-8");
    };
    if text.chars().any(char::is_control) {
        return Err("invalid key: it contains control characters");
    }
    QueueName::parse(text).map_err(|_| "invalid key: not a queue name")
}

/// Seconds since the Unix epoch from which an `exptime` is a time, not a
/// duration (memcached's rule: more than 30 days).
pub const EXPTIME_ABSOLUTE: i64 = 30 * 24 * 3600;

/// The ttl an `exptime` gives at `now` (Unix seconds): `Ok(None)` for none,
/// `Err` when the message would have expired already (a negative exptime, or
/// a Unix time not in the future).
pub fn ttl(exptime: i64, now: u64) -> Result<Option<u64>, &'static str> {
    match exptime {
        0 => Ok(None),
        e if e < 0 => Err("exptime is in the past: the message would never be delivered"),
        e if e <= EXPTIME_ABSOLUTE => Ok(u64::try_from(e).ok()),
        e => match u64::try_from(e).ok().and_then(|at| at.checked_sub(now)) {
            Some(left @ 1..) => Ok(Some(left)),
            Some(0) | None => Err("exptime is in the past: the message would never be delivered"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn malformed(noreply: bool) -> Result<Command<'static>, LineError> {
        Err(LineError::Malformed {
            reason: BAD_FORMAT,
            noreply,
        })
    }

    #[test]
    fn storage_commands() {
        assert_eq!(
            parse(b"set jobs 0 0 5"),
            Ok(Command::Store {
                verb: Verb::Set,
                key: b"jobs",
                exptime: 0,
                bytes: 5,
                noreply: false
            })
        );
        assert_eq!(
            parse(b"add a/b 12 -1 0 noreply"),
            Ok(Command::Store {
                verb: Verb::Add,
                key: b"a/b",
                exptime: -1,
                bytes: 0,
                noreply: true
            })
        );
        assert_eq!(
            parse(b"cas q 0 60 3 77"),
            Ok(Command::Store {
                verb: Verb::Cas,
                key: b"q",
                exptime: 60,
                bytes: 3,
                noreply: false
            })
        );
        // Repeated spaces separate words as one.
        assert!(matches!(
            parse(b"set  q  0 0  1"),
            Ok(Command::Store { bytes: 1, .. })
        ));
    }

    #[test]
    fn malformed_storage_commands() {
        assert_eq!(parse(b"set q 0 0"), malformed(false));
        assert_eq!(parse(b"set q 0 0 5 6"), malformed(false));
        assert_eq!(parse(b"set q 0 0 x"), malformed(false));
        assert_eq!(parse(b"set q 0 0 -5"), malformed(false));
        assert_eq!(parse(b"set q x 0 5"), malformed(false));
        assert_eq!(parse(b"set q 4294967296 0 5"), malformed(false));
        assert_eq!(parse(b"set q 0 1e3 5"), malformed(false));
        assert_eq!(parse(b"set q 0 0 2147483646"), malformed(false));
        assert_eq!(
            parse(b"set q 0 0 99999999999999999999999"),
            malformed(false)
        );
        assert_eq!(parse(b"set q 0 0 x noreply"), malformed(true));
        assert_eq!(parse(b"cas q 0 0 5"), malformed(false));
        assert_eq!(parse(b"set"), malformed(false));
        assert!(matches!(
            parse(b"set q 0 0 2147483645"),
            Ok(Command::Store { .. })
        ));
    }

    #[test]
    fn retrieval_and_others() {
        assert_eq!(
            parse(b"get a b/peek a"),
            Ok(Command::Get {
                keys: vec![b"a", b"b/peek", b"a"],
                cas: false
            })
        );
        assert_eq!(
            parse(b"gets a"),
            Ok(Command::Get {
                keys: vec![b"a"],
                cas: true
            })
        );
        assert_eq!(parse(b"get"), Err(LineError::Unknown));
        assert_eq!(
            parse(b"delete q"),
            Ok(Command::Delete {
                key: b"q",
                noreply: false
            })
        );
        assert_eq!(
            parse(b"delete q 0 noreply"),
            Ok(Command::Delete {
                key: b"q",
                noreply: true
            })
        );
        assert!(matches!(
            parse(b"delete q 10"),
            Err(LineError::Malformed { .. })
        ));
        assert!(matches!(parse(b"delete"), Err(LineError::Malformed { .. })));
        assert_eq!(parse(b"stats"), Ok(Command::Stats { detail: false }));
        assert_eq!(parse(b"stats items"), Ok(Command::Stats { detail: true }));
        assert_eq!(parse(b"version"), Ok(Command::Version));
        assert_eq!(parse(b"quit"), Ok(Command::Quit));
        assert_eq!(
            parse(b"verbosity 1 noreply"),
            Ok(Command::Verbosity { noreply: true })
        );
        assert_eq!(parse(b"verbosity"), malformed(false));
        assert_eq!(
            parse(b"flush_all 10"),
            Ok(Command::FlushAll { noreply: false })
        );
        assert_eq!(
            parse(b"incr n 1 noreply"),
            Ok(Command::Unsupported {
                name: "incr",
                noreply: true
            })
        );
        assert_eq!(parse(b"bogus a b"), Err(LineError::Unknown));
        assert_eq!(parse(b"GET a"), Err(LineError::Unknown));
        assert_eq!(parse(b""), Err(LineError::Unknown));
        assert_eq!(parse(b"   "), Err(LineError::Unknown));
    }

    #[test]
    fn keys_are_queue_names() {
        assert_eq!(
            queue_name(b"jobs").map(|q| q.to_string()),
            Ok("jobs".into())
        );
        assert!(queue_name("caf\u{e9}/x:1".as_bytes()).is_ok());
        assert!(queue_name(&[b'k'; 250]).is_ok());
        assert!(queue_name(&[b'k'; 251]).is_err());
        assert!(queue_name(b"a\tb").is_err());
        assert!(queue_name(b"a\x7f").is_err());
        assert!(queue_name(b"\xff\xfe").is_err());
    }

    #[test]
    fn exptimes() {
        let now = 1_800_000_000;
        assert_eq!(ttl(0, now), Ok(None));
        assert_eq!(ttl(60, now), Ok(Some(60)));
        assert_eq!(
            ttl(EXPTIME_ABSOLUTE, now),
            Ok(Some(EXPTIME_ABSOLUTE as u64))
        );
        assert_eq!(ttl(now as i64 + 90, now), Ok(Some(90)));
        assert!(ttl(now as i64, now).is_err());
        assert!(ttl(EXPTIME_ABSOLUTE + 1, now).is_err());
        assert!(ttl(-1, now).is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_line_parses_or_is_refused(line in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = parse(&line);
            let _ = queue_name(&line);
        }

        #[test]
        fn any_exptime_is_judged(exptime in proptest::num::i64::ANY, now in proptest::num::u64::ANY) {
            let _ = ttl(exptime, now);
        }
    }
}
