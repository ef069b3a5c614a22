//! Access rules: the original's `acl.conf` (address rules and HTTP Basic per
//! route category) and bearer tokens with per-queue rights. Pure: parsing and
//! decisions only; the HTTP layer gathers what a request presents.
//!
//! The file is INI, as the original read it with Python's ConfigParser:
//!
//! ```ini
//! [rest:producer]
//! hosts_allow = 127.0.0.1 10.0.0.0/8
//! hosts_deny = all
//! username = producer
//! password = secret
//!
//! [token:deployer]
//! sha256 = <hex of the SHA-256 of the token>
//! publish = jobs/* builds
//! consume = jobs/*
//! admin = jobs/*
//!
//! [sqs:AKIDEXAMPLE]
//! secret_key = <the secret access key, which SigV4 needs as is>
//! publish = jobs/*
//! consume = jobs/*
//! ```

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};

use base64::Engine;
use sha2::{Digest, Sha256};

/// Which rules of the file a route answers to, as in the original.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    /// Publishing and managing queues over plain HTTP (`[rest:producer]`).
    RestProducer,
    /// Reading queues over plain HTTP (`[rest:consumer]`).
    RestConsumer,
    /// COMET and Server-Sent Events streams (`[comet:consumer]`).
    CometConsumer,
    /// WebSocket streams (`[websocket:consumer]`).
    WebsocketConsumer,
}

impl Category {
    const ALL: [Category; 4] = [
        Category::RestProducer,
        Category::RestConsumer,
        Category::CometConsumer,
        Category::WebsocketConsumer,
    ];

    /// The section of the file that holds this category's rules.
    pub fn section(self) -> &'static str {
        match self {
            Category::RestProducer => "rest:producer",
            Category::RestConsumer => "rest:consumer",
            Category::CometConsumer => "comet:consumer",
            Category::WebsocketConsumer => "websocket:consumer",
        }
    }

    fn index(self) -> usize {
        match self {
            Category::RestProducer => 0,
            Category::RestConsumer => 1,
            Category::CometConsumer => 2,
            Category::WebsocketConsumer => 3,
        }
    }
}

/// What a token may do to a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Right {
    /// Add messages.
    Publish,
    /// Take, receive, acknowledge, stream, and read a queue's state.
    Consume,
    /// Purge, set policies, status and settings, redrive, list every queue.
    Admin,
}

impl Right {
    fn key(self) -> &'static str {
        match self {
            Right::Publish => "publish",
            Right::Consume => "consume",
            Right::Admin => "admin",
        }
    }
}

/// A line of the file that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    /// The line, counted from 1.
    pub line: usize,
    /// What is wrong with it.
    pub message: String,
}

/// A SHA-256 digest.
type Digest256 = [u8; 32];

fn sha256(data: &[u8]) -> Digest256 {
    Sha256::digest(data).into()
}

/// Compares without an early exit, so the time taken says nothing of where
/// two secrets differ.
fn same(a: &Digest256, b: &Digest256) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The hex SHA-256 of a token, as the file stores it.
pub fn token_digest(token: &str) -> String {
    sha256(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Addresses a rule names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Hosts {
    /// `all`.
    All,
    /// Address prefixes (`192.168.0.`, as the original compared them) and
    /// CIDR blocks.
    Some(Vec<HostRule>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostRule {
    Prefix(String),
    Block { net: IpAddr, bits: u8 },
}

impl HostRule {
    fn parse(word: &str) -> Result<HostRule, String> {
        if let Some((net, bits)) = word.split_once('/') {
            let net: IpAddr = net
                .parse()
                .map_err(|_| format!("{word:?} is not a CIDR block: bad address"))?;
            let max = if net.is_ipv4() { 32 } else { 128 };
            let bits: u8 = bits
                .parse()
                .ok()
                .filter(|&b| b <= max)
                .ok_or_else(|| format!("{word:?} is not a CIDR block: bad prefix length"))?;
            return Ok(HostRule::Block {
                net: canonical(net),
                bits,
            });
        }
        let valid = !word.is_empty()
            && word
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == '.' || c == ':');
        if valid {
            Ok(HostRule::Prefix(word.to_ascii_lowercase()))
        } else {
            Err(format!(
                "{word:?} is not an address, an address prefix or a CIDR block"
            ))
        }
    }

    fn matches(&self, ip: IpAddr, text: &str) -> bool {
        match self {
            HostRule::Prefix(prefix) => text.starts_with(prefix.as_str()),
            HostRule::Block { net, bits } => in_block(ip, *net, *bits),
        }
    }
}

/// IPv4 clients reached over an IPv6 socket look like `::ffff:a.b.c.d`; rules
/// are written for `a.b.c.d`.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

fn in_block(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

impl Hosts {
    fn parse(value: &str) -> Result<Hosts, String> {
        let words: Vec<&str> = value.split_whitespace().collect();
        if words.is_empty() {
            return Err("an empty host list: write all, or addresses".into());
        }
        if words.iter().any(|w| w.eq_ignore_ascii_case("all")) {
            return if words.len() == 1 {
                Ok(Hosts::All)
            } else {
                Err("all cannot be combined with addresses".into())
            };
        }
        words
            .into_iter()
            .map(HostRule::parse)
            .collect::<Result<_, _>>()
            .map(Hosts::Some)
    }

    fn matches(&self, ip: IpAddr) -> bool {
        match self {
            Hosts::All => true,
            Hosts::Some(rules) => {
                let text = ip.to_string();
                rules.iter().any(|rule| rule.matches(ip, &text))
            }
        }
    }
}

/// The rules of one category.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Section {
    allow: Option<Hosts>,
    deny: Option<Hosts>,
    /// The username and the digest of the password HTTP Basic must present.
    basic: Option<(String, Digest256)>,
}

impl Section {
    /// The original's order: an allowed address is let in; otherwise an
    /// allow list without a deny list refuses; otherwise a denied address is
    /// refused; anything else is let in.
    fn admits(&self, ip: IpAddr) -> bool {
        if let Some(allow) = &self.allow {
            if allow.matches(ip) {
                return true;
            }
            if self.deny.is_none() {
                return false;
            }
        }
        !self.deny.as_ref().is_some_and(|deny| deny.matches(ip))
    }
}

/// A queue-name pattern: `*` stands for any run of characters, `/` included.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern(String);

impl Pattern {
    fn matches(&self, name: &str) -> bool {
        let mut parts = self.0.split('*');
        let first = parts.next().unwrap_or("");
        let Some(mut rest) = name.strip_prefix(first) else {
            return false;
        };
        let parts: Vec<&str> = parts.collect();
        let Some((last, middle)) = parts.split_last() else {
            return rest.is_empty();
        };
        for part in middle {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
        rest.len() >= last.len() && rest.ends_with(last)
    }
}

/// A bearer token's rights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// Its name, from the section `[token:<name>]`.
    pub name: String,
    digest: Digest256,
    rights: Vec<(Right, Pattern)>,
}

impl Token {
    /// Whether the token may do `right` to `queue`; `None` stands for every
    /// queue at once (listing them all).
    pub fn allows(&self, right: Right, queue: Option<&str>) -> bool {
        self.rights.iter().any(|(r, pattern)| {
            *r == right
                && match queue {
                    Some(name) => pattern.matches(name),
                    None => pattern.0 == "*",
                }
        })
    }
}

/// An access key of the SQS door (`[sqs:<id>]`): the secret its AWS
/// Signature Version 4 signatures are verified with, and rights as a token's.
#[derive(Clone, PartialEq, Eq)]
pub struct SqsKey {
    /// The access key id.
    pub id: String,
    /// The secret access key: SigV4 signs with the secret itself, so the
    /// file holds it, not a digest.
    pub secret: String,
    /// What the key may do, as a token named `sqs:<id>`.
    pub grant: Token,
}

/// Never prints the secret.
impl fmt::Debug for SqsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqsKey")
            .field("id", &self.id)
            .field("grant", &self.grant)
            .finish_non_exhaustive()
    }
}

/// Every rule of an ACL file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    sections: [Section; 4],
    tokens: Vec<Token>,
    sqs_keys: Vec<SqsKey>,
}

/// What a request presents to be let in.
#[derive(Debug, Clone, Copy, Default)]
pub struct Presented<'a> {
    /// The `Authorization` header.
    pub authorization: Option<&'a str>,
    /// The `auth` cookie (`user:password`), which WebSockets may send instead.
    pub auth_cookie: Option<&'a str>,
    /// A token given as the `access_token` parameter, for clients that cannot
    /// set headers (EventSource, browser WebSockets).
    pub access_token: Option<&'a str>,
}

/// Who a request was let in as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// No credentials needed, or the category's username and password: every
    /// route of the category, on every queue.
    Full,
    /// A bearer token: what its rights allow.
    Token(Token),
}

impl Grant {
    /// Whether this grant may do `right` to `queue` (`None`: every queue).
    pub fn allows(&self, right: Right, queue: Option<&str>) -> bool {
        match self {
            Grant::Full => true,
            Grant::Token(token) => token.allows(right, queue),
        }
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// The client's address is refused (403).
    Address,
    /// Credentials are missing or wrong (401); the challenges to send back.
    Credentials {
        /// Whether HTTP Basic would do.
        basic: bool,
        /// Whether a bearer token would do.
        bearer: bool,
    },
}

impl Rules {
    /// Whether any rule restricts anything.
    pub fn is_open(&self) -> bool {
        self.tokens.is_empty()
            && self.sqs_keys.is_empty()
            && self.sections.iter().all(|s| *s == Section::default())
    }

    /// Whether the address rules of `category` let `ip` in.
    pub fn admits(&self, category: Category, ip: IpAddr) -> bool {
        self.sections[category.index()].admits(canonical(ip))
    }

    /// Whether requests of `category` must present credentials (HTTP Basic
    /// or a token), which an SQS client cannot.
    pub fn needs_credentials(&self, category: Category) -> bool {
        self.sections[category.index()].basic.is_some() || !self.tokens.is_empty()
    }

    /// Whether any SQS access key is configured: then the SQS door verifies
    /// every signature.
    pub fn has_sqs_keys(&self) -> bool {
        !self.sqs_keys.is_empty()
    }

    /// The SQS access key with this id.
    pub fn sqs_key(&self, id: &str) -> Option<&SqsKey> {
        self.sqs_keys.iter().find(|key| key.id == id)
    }

    /// Decides whether a request of `category` from `ip`, presenting
    /// `presented`, is let in.
    pub fn decide(
        &self,
        category: Category,
        ip: IpAddr,
        presented: &Presented<'_>,
    ) -> Result<Grant, Denial> {
        let section = &self.sections[category.index()];
        if !section.admits(canonical(ip)) {
            return Err(Denial::Address);
        }
        let refused = Denial::Credentials {
            basic: section.basic.is_some(),
            bearer: !self.tokens.is_empty(),
        };
        let bearer = presented
            .authorization
            .and_then(|value| scheme(value, "Bearer"))
            .or(presented.access_token);
        if let Some(token) = bearer {
            return self.token(token).map(Grant::Token).ok_or(refused);
        }
        if let Some((user, digest)) = &section.basic {
            let basic = presented
                .authorization
                .and_then(|value| scheme(value, "Basic"))
                .and_then(decode_basic);
            let cookie = match category {
                Category::WebsocketConsumer => presented
                    .auth_cookie
                    .and_then(|c| c.split_once(':'))
                    .map(|(u, p)| (u.to_owned(), p.to_owned())),
                Category::RestProducer | Category::RestConsumer | Category::CometConsumer => None,
            };
            return match basic.or(cookie) {
                Some((u, p))
                    if same(&sha256(u.as_bytes()), &sha256(user.as_bytes()))
                        & same(&sha256(p.as_bytes()), digest) =>
                {
                    Ok(Grant::Full)
                }
                Some(_) | None => Err(refused),
            };
        }
        if self.tokens.is_empty() {
            Ok(Grant::Full)
        } else {
            Err(refused)
        }
    }

    /// The token whose digest is that of `presented`, every one compared.
    fn token(&self, presented: &str) -> Option<Token> {
        let digest = sha256(presented.as_bytes());
        let mut found = None;
        for token in &self.tokens {
            if same(&token.digest, &digest) {
                found = Some(token.clone());
            }
        }
        found
    }
}

/// The credentials after `scheme ` in an `Authorization` value.
fn scheme<'a>(value: &'a str, scheme: &str) -> Option<&'a str> {
    let (name, rest) = value.trim().split_once(' ')?;
    name.eq_ignore_ascii_case(scheme).then(|| rest.trim())
}

fn decode_basic(encoded: &str) -> Option<(String, String)> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// Reads an ACL file. Keys and sections are those of the original plus
/// `[token:<name>]`; anything else is refused with its line, since a typo in
/// an access rule must not pass silently.
pub fn parse(text: &str) -> Result<Rules, ParseError> {
    let mut rules = Rules::default();
    let mut plain: [Entries; 4] = Default::default();
    let mut named: Vec<(usize, Kind, String, Entries)> = Vec::new();
    let mut current: Option<Target> = None;
    let mut continuing = false;
    for (n, raw) in text.lines().enumerate() {
        let line = n + 1;
        let error = |message: String| ParseError { line, message };
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        // An indented line continues the previous value, as in ConfigParser.
        if raw.starts_with([' ', '\t']) {
            let last = continuing
                .then(|| entries(&mut plain, &mut named, current.as_ref()))
                .flatten()
                .and_then(|entries| entries.last_mut());
            match last {
                Some((_, _, value)) => {
                    value.push(' ');
                    value.push_str(trimmed);
                    continue;
                }
                None => return Err(error("an indented line continues no value".into())),
            }
        }
        if let Some(name) = trimmed.strip_prefix('[') {
            let name = name
                .strip_suffix(']')
                .ok_or_else(|| error(format!("{trimmed:?} is not a section header")))?
                .trim();
            current = Some(section_target(name).map_err(error)?);
            if let Some(Target::Named(kind, name)) = &current {
                if named.iter().any(|(_, k, n, _)| k == kind && n == name) {
                    return Err(error(format!("the {kind} {name:?} is defined twice")));
                }
                named.push((line, *kind, name.clone(), Vec::new()));
            }
            continuing = false;
            continue;
        }
        let Some(at) = trimmed.find(['=', ':']) else {
            return Err(error(format!(
                "{trimmed:?} is neither a section nor key = value"
            )));
        };
        let key = trimmed[..at].trim().to_ascii_lowercase();
        let value = trimmed[at + 1..].trim().to_owned();
        let entries = entries(&mut plain, &mut named, current.as_ref())
            .ok_or_else(|| error(format!("{key} is outside any section")))?;
        if entries.iter().any(|(_, k, _)| *k == key) {
            return Err(error(format!("{key} is set twice in this section")));
        }
        entries.push((line, key, value));
        continuing = true;
    }
    for category in Category::ALL {
        rules.sections[category.index()] = section(&plain[category.index()])?;
    }
    for (line, kind, name, entries) in named {
        match kind {
            Kind::Token => rules.tokens.push(token(line, name, &entries)?),
            Kind::SqsKey => rules.sqs_keys.push(sqs_key(line, name, &entries)?),
        }
    }
    Ok(rules)
}

/// The keys of a section as read: line, key, value.
type Entries = Vec<(usize, String, String)>;

/// Sections named after what they define.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `[token:<name>]`.
    Token,
    /// `[sqs:<access key id>]`.
    SqsKey,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Token => "token",
            Kind::SqsKey => "SQS access key",
        })
    }
}

/// Where the keys of the current section go.
enum Target {
    Category(Category),
    Named(Kind, String),
}

fn section_target(name: &str) -> Result<Target, String> {
    if let Some(category) = Category::ALL.into_iter().find(|c| c.section() == name) {
        return Ok(Target::Category(category));
    }
    if let Some(token) = name.strip_prefix("token:") {
        let token = token.trim();
        if token.is_empty() {
            return Err("a token section needs a name: [token:<name>]".into());
        }
        return Ok(Target::Named(Kind::Token, token.to_owned()));
    }
    if let Some(id) = name.strip_prefix("sqs:") {
        let id = id.trim();
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(
                "an SQS key section needs its access key id, letters and digits: [sqs:<id>]".into(),
            );
        }
        return Ok(Target::Named(Kind::SqsKey, id.to_owned()));
    }
    Err(format!(
        "unknown section [{name}]: sections are rest:producer, rest:consumer, \
         comet:consumer, websocket:consumer, token:<name> and sqs:<access key id>"
    ))
}

fn entries<'a>(
    plain: &'a mut [Entries; 4],
    named: &'a mut [(usize, Kind, String, Entries)],
    current: Option<&Target>,
) -> Option<&'a mut Entries> {
    match current? {
        Target::Category(category) => Some(&mut plain[category.index()]),
        Target::Named(kind, name) => named
            .iter_mut()
            .find(|(_, k, n, _)| k == kind && n == name)
            .map(|(_, _, _, entries)| entries),
    }
}

fn section(entries: &Entries) -> Result<Section, ParseError> {
    let mut section = Section::default();
    let mut username = None;
    let mut password = None;
    for (line, key, value) in entries {
        let error = |message: String| ParseError {
            line: *line,
            message,
        };
        match key.as_str() {
            "hosts_allow" => section.allow = Some(Hosts::parse(value).map_err(error)?),
            "hosts_deny" => section.deny = Some(Hosts::parse(value).map_err(error)?),
            "username" => username = Some((*line, value.clone())),
            "password" => password = Some((*line, value.clone())),
            other => {
                return Err(error(format!(
                    "unknown key {other}: keys are hosts_allow, hosts_deny, username and password"
                )));
            }
        }
    }
    section.basic = match (username, password) {
        (Some((_, user)), Some((_, password))) if !user.is_empty() && !password.is_empty() => {
            Some((user, sha256(password.as_bytes())))
        }
        (None, None) => None,
        (Some((line, _)), _) | (_, Some((line, _))) => {
            return Err(ParseError {
                line,
                message: "username and password go together, neither empty".into(),
            });
        }
    };
    Ok(section)
}

fn token(line: usize, name: String, entries: &Entries) -> Result<Token, ParseError> {
    let mut digest = None;
    let mut rights = Vec::new();
    for (at, key, value) in entries {
        let error = |message: String| ParseError { line: *at, message };
        match key.as_str() {
            "sha256" => digest = Some(parse_digest(value).map_err(error)?),
            "publish" => push_patterns(&mut rights, Right::Publish, value),
            "consume" => push_patterns(&mut rights, Right::Consume, value),
            "admin" => push_patterns(&mut rights, Right::Admin, value),
            other => {
                return Err(error(format!(
                    "unknown key {other}: a token has sha256, publish, consume and admin"
                )));
            }
        }
    }
    let digest = digest.ok_or_else(|| ParseError {
        line,
        message: format!("the token {name:?} has no sha256 (restmq token prints one)"),
    })?;
    Ok(Token {
        name,
        digest,
        rights,
    })
}

fn sqs_key(line: usize, id: String, entries: &Entries) -> Result<SqsKey, ParseError> {
    let mut secret = None;
    let mut rights = Vec::new();
    for (at, key, value) in entries {
        let error = |message: String| ParseError { line: *at, message };
        match key.as_str() {
            "secret_key" if value.is_empty() => {
                return Err(error("secret_key is empty".into()));
            }
            "secret_key" => secret = Some(value.clone()),
            "publish" => push_patterns(&mut rights, Right::Publish, value),
            "consume" => push_patterns(&mut rights, Right::Consume, value),
            "admin" => push_patterns(&mut rights, Right::Admin, value),
            other => {
                return Err(error(format!(
                    "unknown key {other}: an SQS key has secret_key, publish, consume and admin"
                )));
            }
        }
    }
    let secret = secret.ok_or_else(|| ParseError {
        line,
        message: format!("the SQS access key {id:?} has no secret_key"),
    })?;
    let grant = Token {
        name: format!("sqs:{id}"),
        digest: [0; 32],
        rights,
    };
    Ok(SqsKey { id, secret, grant })
}

fn push_patterns(rights: &mut Vec<(Right, Pattern)>, right: Right, value: &str) {
    for word in value.split_whitespace() {
        rights.push((right, Pattern(word.to_owned())));
    }
}

/// The `[token:NAME]` section admitting `token` with rights on the queue
/// patterns given (space-separated; empty for none). It holds only the
/// token's digest. It is checked by parsing it, so what it prints loads.
pub fn token_section(
    name: &str,
    token: &str,
    publish: &str,
    consume: &str,
    admin: &str,
) -> Result<String, ParseError> {
    let mut text = format!("[token:{name}]\nsha256 = {}\n", token_digest(token));
    for (right, patterns) in [
        (Right::Publish, publish),
        (Right::Consume, consume),
        (Right::Admin, admin),
    ] {
        if !patterns.trim().is_empty() {
            text.push_str(&format!("{} = {}\n", right.key(), patterns.trim()));
        }
    }
    parse(&text)?;
    Ok(text)
}

fn parse_digest(value: &str) -> Result<Digest256, String> {
    let value = value.trim();
    let wrong = || "sha256 must be 64 hexadecimal digits".to_owned();
    // from_str_radix alone would also take a sign ("+f") for a digit.
    if value.len() != 64 || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(wrong());
    }
    let mut digest = [0u8; 32];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(value.get(2 * i..2 * i + 2).ok_or_else(wrong)?, 16)
            .map_err(|_| wrong())?;
    }
    Ok(digest)
}

/// A list of addresses, prefixes and CIDR blocks, such as the trusted proxies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressList(Hosts);

impl AddressList {
    /// Reads words separated by spaces or commas; `all` stands for every address.
    pub fn parse(text: &str) -> Result<AddressList, String> {
        Hosts::parse(&text.replace(',', " ")).map(AddressList)
    }

    /// Whether `ip` is on the list.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.matches(canonical(ip))
    }
}

/// The address a request comes from: the peer's, or, when the peer is a
/// trusted proxy, the last address in `X-Forwarded-For` that is not one.
pub fn client_address(
    peer: IpAddr,
    forwarded: Option<&str>,
    trusted: Option<&AddressList>,
) -> IpAddr {
    let Some(trusted) = trusted else {
        return peer;
    };
    if !trusted.contains(peer) {
        return peer;
    }
    let mut client = peer;
    for hop in forwarded.unwrap_or("").rsplit(',') {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else {
            // A hop that is no address was not written by a proxy we trust.
            return client;
        };
        client = ip;
        if !trusted.contains(ip) {
            return ip;
        }
    }
    client
}

/// The rules in force and where they come from; the file is read again when
/// it changes.
#[derive(Debug)]
pub struct Access {
    file: Option<PathBuf>,
    rules: RwLock<Arc<Rules>>,
    /// Whether `rules` are open: read by every request, so kept where reading
    /// it takes no lock and writes no shared memory.
    open: AtomicBool,
    /// Digest of the file's contents behind `rules`.
    read: Mutex<Digest256>,
    trusted: Option<AddressList>,
}

/// Why the access rules could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// The ACL file cannot be read.
    #[error("cannot read the ACL file {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The ACL file holds a mistake.
    #[error("the ACL file {path} is refused: {error}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The mistake.
        error: ParseError,
    },
    /// The trusted proxies are not a list of addresses.
    #[error("invalid --trusted-proxies: {0}")]
    Proxies(String),
}

/// How often the ACL file is checked for changes.
pub const RELOAD_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl Access {
    /// Everything open, no proxy trusted.
    pub fn open() -> Access {
        Access {
            file: None,
            rules: RwLock::new(Arc::new(Rules::default())),
            open: AtomicBool::new(true),
            read: Mutex::new([0; 32]),
            trusted: None,
        }
    }

    /// Reads the rules of `file` (everything open when `None`) and the list of
    /// trusted proxies (`None`: `X-Forwarded-For` is never believed).
    pub fn load(file: Option<&Path>, trusted: Option<&str>) -> Result<Access, AccessError> {
        let trusted = trusted
            .map(AddressList::parse)
            .transpose()
            .map_err(AccessError::Proxies)?;
        let mut access = Access {
            trusted,
            ..Access::open()
        };
        if let Some(path) = file {
            let text = std::fs::read(path).map_err(|error| AccessError::Read {
                path: path.to_owned(),
                error,
            })?;
            let rules =
                parse(&String::from_utf8_lossy(&text)).map_err(|error| AccessError::Parse {
                    path: path.to_owned(),
                    error,
                })?;
            access.file = Some(path.to_owned());
            access.open = AtomicBool::new(rules.is_open());
            access.rules = RwLock::new(Arc::new(rules));
            access.read = Mutex::new(sha256(&text));
        }
        Ok(access)
    }

    /// The rules in force now.
    pub fn rules(&self) -> Arc<Rules> {
        self.rules
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether the rules in force restrict nothing: [`Rules::is_open`] of
    /// [`Access::rules`], without taking their lock.
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// The file the rules come from, if any.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// The address a request from `peer` comes from (see [`client_address`]).
    pub fn client(&self, peer: IpAddr, forwarded: Option<&str>) -> IpAddr {
        client_address(peer, forwarded, self.trusted.as_ref())
    }

    /// Reads the file again if it changed: new rules take effect, a broken
    /// file keeps the last good ones and says why.
    pub fn reload(&self) {
        let Some(path) = &self.file else { return };
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(error) => {
                tracing::error!(path = %path.display(), %error, "cannot read the ACL file; keeping the last rules");
                return;
            }
        };
        let digest = sha256(&text);
        let mut read = self.read.lock().unwrap_or_else(PoisonError::into_inner);
        if same(&read, &digest) {
            return;
        }
        *read = digest;
        match parse(&String::from_utf8_lossy(&text)) {
            Ok(rules) => {
                let mut current = self.rules.write().unwrap_or_else(PoisonError::into_inner);
                // Under the lock: a request that reads the flag after the
                // change and then the rules finds the new rules.
                self.open.store(rules.is_open(), Ordering::Release);
                *current = Arc::new(rules);
                drop(current);
                tracing::info!(path = %path.display(), "ACL file changed: new rules in force");
            }
            Err(error) => {
                tracing::error!(path = %path.display(), %error, "the changed ACL file is refused; keeping the last good rules");
            }
        }
    }

    /// Checks the file for changes every [`RELOAD_EVERY`] until `access` is dropped.
    pub async fn watch(access: Weak<Access>) {
        let mut ticks = tokio::time::interval(RELOAD_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(access) = access.upgrade() else {
                return;
            };
            // A slow disk must not hold up a runtime thread.
            let _ = tokio::task::spawn_blocking(move || access.reload()).await;
        }
    }
}

impl fmt::Display for Right {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.section())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    fn basic(user: &str, password: &str) -> String {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {encoded}")
    }

    const NOBODY: Presented<'static> = Presented {
        authorization: None,
        auth_cookie: None,
        access_token: None,
    };

    #[test]
    fn the_originals_sample_file_is_open() {
        let sample = "# RestMQ ACL\n[rest:producer]\n#hosts_allow = 127.0.0.1\n\n\
                      [rest:consumer]\n[comet:consumer]\n[websocket:consumer]\n#username = x\n";
        let rules = parse(sample).expect("the sample parses");
        assert!(rules.is_open());
        for category in Category::ALL {
            assert_eq!(
                rules.decide(category, ip("10.1.2.3"), &NOBODY),
                Ok(Grant::Full)
            );
        }
    }

    #[test]
    fn addresses_follow_the_originals_order() {
        let rules = parse(
            "[rest:producer]\nhosts_allow = 127.0.0.1 10.0.0.0/8\n\
             [rest:consumer]\nhosts_deny = 192.168.0.\n\
             [comet:consumer]\nhosts_allow = 127.0.0.1\nhosts_deny = all\n\
             [websocket:consumer]\nhosts_allow = all\nhosts_deny = 10.\n",
        )
        .expect("parses");
        let admits = |c, a| rules.decide(c, ip(a), &NOBODY).is_ok();
        // An allow list alone refuses the rest; a prefix matches as a string.
        assert!(admits(Category::RestProducer, "127.0.0.1"));
        assert!(admits(Category::RestProducer, "127.0.0.10"));
        assert!(admits(Category::RestProducer, "10.200.3.4"));
        assert!(!admits(Category::RestProducer, "11.0.0.1"));
        assert!(admits(Category::RestProducer, "::ffff:10.0.0.1"));
        // A deny list alone refuses only its own.
        assert!(!admits(Category::RestConsumer, "192.168.0.7"));
        assert!(admits(Category::RestConsumer, "192.168.1.7"));
        // Allowed first, then denied.
        assert!(admits(Category::CometConsumer, "127.0.0.1"));
        assert!(!admits(Category::CometConsumer, "10.0.0.1"));
        assert!(admits(Category::WebsocketConsumer, "10.0.0.1"));
        assert_eq!(
            rules.decide(Category::RestConsumer, ip("192.168.0.1"), &NOBODY),
            Err(Denial::Address)
        );
    }

    #[test]
    fn cidr_blocks_of_both_families() {
        let rules = parse("[rest:consumer]\nhosts_allow = 10.1.0.0/16 fd00::/8 0.0.0.0/0\n")
            .expect("parses");
        assert!(
            rules
                .decide(Category::RestConsumer, ip("8.8.8.8"), &NOBODY)
                .is_ok()
        );
        let rules = parse("[rest:consumer]\nhosts_allow = 10.1.0.0/16 fd00::/8\n").expect("parses");
        let admits = |a| rules.decide(Category::RestConsumer, ip(a), &NOBODY).is_ok();
        assert!(admits("10.1.255.1"));
        assert!(!admits("10.2.0.1"));
        assert!(admits("fd12::1"));
        assert!(!admits("fe80::1"));
    }

    #[test]
    fn basic_credentials_and_the_websocket_cookie() {
        let rules = parse(
            "[rest:producer]\nusername = lero\npassword = s3cret:x\n\
             [websocket:consumer]\nusername = ws\npassword = pw\n",
        )
        .expect("parses");
        let at = ip("127.0.0.1");
        let right = basic("lero", "s3cret:x");
        let wrong = basic("lero", "s3cret");
        fn with<'a>(authorization: Option<&'a str>, cookie: Option<&'a str>) -> Presented<'a> {
            Presented {
                authorization,
                auth_cookie: cookie,
                access_token: None,
            }
        }
        let challenge = Err(Denial::Credentials {
            basic: true,
            bearer: false,
        });
        assert_eq!(
            rules.decide(Category::RestProducer, at, &with(Some(&right), None)),
            Ok(Grant::Full)
        );
        assert_eq!(
            rules.decide(Category::RestProducer, at, &with(Some(&wrong), None)),
            challenge
        );
        assert_eq!(rules.decide(Category::RestProducer, at, &NOBODY), challenge);
        assert_eq!(
            rules.decide(Category::RestProducer, at, &with(Some("Basic !!"), None)),
            challenge
        );
        // The cookie is the WebSocket's alternative, and only its.
        assert_eq!(
            rules.decide(
                Category::RestProducer,
                at,
                &with(None, Some("lero:s3cret:x"))
            ),
            challenge
        );
        assert_eq!(
            rules.decide(Category::WebsocketConsumer, at, &with(None, Some("ws:pw"))),
            Ok(Grant::Full)
        );
        assert!(
            rules
                .decide(Category::WebsocketConsumer, at, &with(None, Some("ws:no")))
                .is_err()
        );
        // Categories without credentials stay open.
        assert_eq!(
            rules.decide(Category::RestConsumer, at, &NOBODY),
            Ok(Grant::Full)
        );
    }

    #[test]
    fn tokens_carry_rights_on_queue_patterns() {
        let token = "rmq_test_token";
        let file = format!(
            "[token:deployer]\nsha256 = {}\npublish = jobs/* builds\nconsume = jobs/*\n\
             [token:ops]\nsha256 = {}\nadmin = *\n",
            token_digest(token),
            token_digest("other")
        );
        let rules = parse(&file).expect("parses");
        let at = ip("127.0.0.1");
        let bearer = format!("Bearer {token}");
        let presented = Presented {
            authorization: Some(&bearer),
            ..NOBODY
        };
        let Ok(Grant::Token(granted)) = rules.decide(Category::RestProducer, at, &presented) else {
            panic!("the token is let in");
        };
        assert_eq!(granted.name, "deployer");
        assert!(granted.allows(Right::Publish, Some("jobs/a/b")));
        assert!(granted.allows(Right::Publish, Some("builds")));
        assert!(!granted.allows(Right::Publish, Some("builds2")));
        assert!(!granted.allows(Right::Admin, Some("jobs/a")));
        assert!(!granted.allows(Right::Consume, None));
        // As a parameter too.
        let param = Presented {
            access_token: Some("other"),
            ..NOBODY
        };
        let Ok(Grant::Token(ops)) = rules.decide(Category::CometConsumer, at, &param) else {
            panic!("the token is let in");
        };
        assert!(ops.allows(Right::Admin, None));
        // With tokens defined, anonymous and unknown tokens are refused.
        let challenge = Err(Denial::Credentials {
            basic: false,
            bearer: true,
        });
        assert_eq!(rules.decide(Category::RestConsumer, at, &NOBODY), challenge);
        let forged = Presented {
            authorization: Some("Bearer nope"),
            ..NOBODY
        };
        assert_eq!(rules.decide(Category::RestConsumer, at, &forged), challenge);
    }

    #[test]
    fn a_printed_token_section_admits_its_token_only() {
        let section =
            token_section("ci", "rmq_secret", "jobs/*", "jobs/*", "").expect("a valid section");
        assert!(
            !section.contains("rmq_secret"),
            "only the digest is written"
        );
        let rules = parse(&section).expect("parses");
        let bearer = "Bearer rmq_secret";
        let presented = Presented {
            authorization: Some(bearer),
            ..NOBODY
        };
        let Ok(Grant::Token(granted)) =
            rules.decide(Category::RestProducer, ip("10.0.0.1"), &presented)
        else {
            panic!("the token is let in");
        };
        assert!(granted.allows(Right::Publish, Some("jobs/1")));
        assert!(!granted.allows(Right::Admin, Some("jobs/1")));
        assert!(token_section("bad]name\n[x", "t", "*", "*", "").is_err());
    }

    #[test]
    fn sqs_keys_hold_their_secret_and_rights() {
        let rules = parse(
            "[rest:producer]\nhosts_allow = 10.0.0.0/8\n\
             [sqs:AKIDEXAMPLE]\nsecret_key = wJalr/K7+x\npublish = jobs/*\nconsume = *\n\
             [token:AKIDEXAMPLE]\nsha256 = 00000000000000000000000000000000000000000000000000000000000000aa\n",
        )
        .expect("parses");
        assert!(!rules.is_open());
        assert!(rules.has_sqs_keys());
        let key = rules.sqs_key("AKIDEXAMPLE").expect("the key");
        assert_eq!(key.secret, "wJalr/K7+x");
        assert!(
            !format!("{key:?}").contains("wJalr"),
            "Debug hides the secret"
        );
        assert!(key.grant.allows(Right::Publish, Some("jobs/1")));
        assert!(!key.grant.allows(Right::Publish, Some("other")));
        assert!(key.grant.allows(Right::Consume, None));
        assert!(!key.grant.allows(Right::Admin, Some("jobs/1")));
        assert!(rules.sqs_key("AKIDOTHER").is_none());
        assert!(rules.admits(Category::RestProducer, ip("10.1.1.1")));
        assert!(!rules.admits(Category::RestProducer, ip("11.1.1.1")));
        assert!(
            rules.needs_credentials(Category::RestConsumer),
            "a token is defined"
        );
        let keys_only = parse("[sqs:K]\nsecret_key = s\n").expect("parses");
        assert!(!keys_only.needs_credentials(Category::RestProducer));
        assert_eq!(
            keys_only.decide(Category::RestProducer, ip("127.0.0.1"), &NOBODY),
            Ok(Grant::Full),
            "SQS keys do not close the HTTP routes"
        );
    }

    #[test]
    fn patterns() {
        let m = |p: &str, n: &str| Pattern(p.to_owned()).matches(n);
        assert!(m("*", "anything/at all"));
        assert!(m("jobs", "jobs"));
        assert!(!m("jobs", "jobs2"));
        assert!(m("jobs*", "jobs2"));
        assert!(m("*.dead", "jobs.dead"));
        assert!(!m("*.dead", "jobs.dead2"));
        assert!(m("a*b*c", "a-b-b-c"));
        assert!(!m("a*b*c", "a-c"));
        assert!(!m("ab*ba", "aba"));
        assert!(m("ab*ba", "abba"));
    }

    #[test]
    fn continuation_lines_extend_a_value() {
        let rules = parse("[rest:consumer]\nhosts_allow = 10.0.0.1\n  10.0.0.2\n").expect("parses");
        assert!(
            rules
                .decide(Category::RestConsumer, ip("10.0.0.2"), &NOBODY)
                .is_ok()
        );
        assert!(
            rules
                .decide(Category::RestConsumer, ip("10.0.0.3"), &NOBODY)
                .is_err()
        );
    }

    #[test]
    fn mistakes_are_refused_with_their_line() {
        let cases = [
            ("[rest:producers]\n", 1, "unknown section"),
            ("hosts_allow = all\n", 1, "outside any section"),
            ("[rest:consumer]\nhost_allow = all\n", 2, "unknown key"),
            (
                "[rest:consumer]\nhosts_allow = all 10.0.0.1\n",
                2,
                "all cannot",
            ),
            (
                "[rest:consumer]\nhosts_allow = 10.0.0.0/33\n",
                2,
                "prefix length",
            ),
            (
                "[rest:consumer]\nhosts_allow = example.com\n",
                2,
                "not an address",
            ),
            ("[rest:consumer]\nhosts_allow =\n", 2, "empty host list"),
            ("[rest:consumer]\nusername = u\n", 2, "go together"),
            (
                "[rest:consumer]\nusername = u\nusername = v\n",
                3,
                "set twice",
            ),
            ("[token:x]\npublish = *\n", 1, "no sha256"),
            ("[token:x]\nsha256 = abc\n", 2, "64 hexadecimal"),
            (
                "[token:x]\nsha256 = +f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\n",
                2,
                "64 hexadecimal",
            ),
            ("[token:x]\nsha256 = 00\n[token:x]\n", 3, "defined twice"),
            ("[token:]\n", 1, "needs a name"),
            ("[rest:consumer\n", 1, "not a section header"),
            ("[rest:consumer]\njust words\n", 2, "neither a section"),
            ("  indented\n", 1, "continues no value"),
            ("[sqs:]\n", 1, "access key id"),
            ("[sqs:AK ID]\n", 1, "access key id"),
            ("[sqs:AK]\npublish = *\n", 1, "no secret_key"),
            ("[sqs:AK]\nsecret_key =\n", 2, "secret_key is empty"),
            ("[sqs:AK]\nsecret = s\n", 2, "unknown key secret"),
            (
                "[sqs:AK]\nsecret_key = s\n[sqs:AK]\nsecret_key = t\n",
                3,
                "defined twice",
            ),
        ];
        for (text, line, wanted) in cases {
            let error = parse(text).expect_err(text);
            assert_eq!(error.line, line, "{text:?}: {error}");
            assert!(error.message.contains(wanted), "{text:?}: {error}");
        }
    }
}
