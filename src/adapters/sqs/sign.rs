//! AWS Signature Version 4, as SQS clients sign requests with an
//! `Authorization: AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…,
//! Signature=…` header: the canonical request, the string to sign and the
//! HMAC-SHA256 key chain, and the check of a request against a secret.

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};

use super::error::{Code, SqsError};

/// The only algorithm SigV4 names.
const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// How far a request's `x-amz-date` may be from now, in seconds.
pub const MAX_SKEW: u64 = 15 * 60;

/// HMAC-SHA256 (RFC 2104).
pub fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > block.len() {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(data);
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// The parts of an `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    /// The access key id.
    pub key_id: String,
    /// The scope's date, `YYYYMMDD`.
    pub date: String,
    /// The scope's region.
    pub region: String,
    /// The scope's service.
    pub service: String,
    /// The signed headers, lower case, as listed.
    pub signed_headers: Vec<String>,
    /// The hex signature.
    pub signature: String,
}

impl Authorization {
    /// Reads an `AWS4-HMAC-SHA256` header value.
    pub fn parse(value: &str) -> Result<Authorization, SqsError> {
        let incomplete = |what: &str| {
            SqsError::new(
                Code::IncompleteSignature,
                format!(
                    "The Authorization header is not a whole AWS4-HMAC-SHA256 signature: {what}."
                ),
            )
        };
        let rest = value
            .trim()
            .strip_prefix(ALGORITHM)
            .ok_or_else(|| incomplete("it does not start with AWS4-HMAC-SHA256"))?;
        let (mut credential, mut signed, mut signature) = (None, None, None);
        for part in rest.split(',') {
            let Some((name, value)) = part.trim().split_once('=') else {
                return Err(incomplete("a part is not name=value"));
            };
            match name.trim() {
                "Credential" => credential = Some(value.trim()),
                "SignedHeaders" => signed = Some(value.trim()),
                "Signature" => signature = Some(value.trim()),
                _ => return Err(incomplete("an unknown part")),
            }
        }
        let credential = credential.ok_or_else(|| incomplete("no Credential"))?;
        let signed = signed.ok_or_else(|| incomplete("no SignedHeaders"))?;
        let signature = signature.ok_or_else(|| incomplete("no Signature"))?;
        let scope: Vec<&str> = credential.split('/').collect();
        let [key_id, date, region, service, terminator] = scope[..] else {
            return Err(incomplete(
                "the Credential is not KEY/date/region/service/aws4_request",
            ));
        };
        if terminator != "aws4_request" || key_id.is_empty() {
            return Err(incomplete(
                "the Credential is not KEY/date/region/service/aws4_request",
            ));
        }
        Ok(Authorization {
            key_id: key_id.to_owned(),
            date: date.to_owned(),
            region: region.to_owned(),
            service: service.to_owned(),
            signed_headers: signed.split(';').map(str::to_ascii_lowercase).collect(),
            signature: signature.to_ascii_lowercase(),
        })
    }

    /// `date/region/service/aws4_request`.
    pub fn scope(&self) -> String {
        format!(
            "{}/{}/{}/aws4_request",
            self.date, self.region, self.service
        )
    }
}

/// Percent-encodes as SigV4 does: everything but `A-Za-z0-9-_.~` (and `/`
/// when `slash` is kept), in upper-case hex.
fn uri_encode(bytes: &[u8], keep_slash: bool) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The canonical query string: each name and value decoded, encoded again,
/// sorted.
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |s: &str| percent_encoding::percent_decode_str(s).collect::<Vec<u8>>();
            (
                uri_encode(&decode(name), false),
                uri_encode(&decode(value), false),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// The request as SigV4 signs it.
pub struct Signed<'a> {
    /// The method.
    pub method: &'a str,
    /// The path as sent (still percent-encoded).
    pub path: &'a str,
    /// The query string as sent, without `?`.
    pub query: &'a str,
    /// The headers.
    pub headers: &'a HeaderMap,
    /// The body.
    pub body: &'a [u8],
}

impl Signed<'_> {
    /// The canonical request over `signed_headers`. The path is encoded
    /// once more, as SigV4 does for every service but S3.
    pub fn canonical_request(&self, signed_headers: &[String]) -> String {
        let path = if self.path.is_empty() { "/" } else { self.path };
        let mut canonical = format!(
            "{}\n{}\n{}\n",
            self.method,
            uri_encode(path.as_bytes(), true),
            canonical_query(self.query)
        );
        for name in signed_headers {
            let values: Vec<String> = self
                .headers
                .get_all(name.as_str())
                .iter()
                .map(|v| {
                    String::from_utf8_lossy(v.as_bytes())
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect();
            canonical.push_str(&format!("{name}:{}\n", values.join(",")));
        }
        canonical.push_str(&format!(
            "\n{}\n{}",
            signed_headers.join(";"),
            sha256_hex(self.body)
        ));
        canonical
    }
}

/// The string to sign for a canonical request.
pub fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    )
}

/// The signing key: HMAC of the date, region, service and `aws4_request`,
/// from `AWS4` + the secret.
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
    let key = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let key = hmac(&key, region.as_bytes());
    let key = hmac(&key, service.as_bytes());
    hmac(&key, b"aws4_request")
}

/// Seconds since the Unix epoch of an `x-amz-date` (`YYYYMMDD'T'HHMMSS'Z'`).
pub fn parse_amz_date(text: &str) -> Option<u64> {
    let bytes = text.as_bytes();
    if bytes.len() != 16 || bytes[8] != b'T' || bytes[15] != b'Z' {
        return None;
    }
    let digits = |range: std::ops::Range<usize>| -> Option<u64> {
        let part = text.get(range)?;
        part.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| part.parse().ok())
            .flatten()
    };
    let (year, month, day) = (digits(0..4)?, digits(4..6)?, digits(6..8)?);
    let (hour, minute, second) = (digits(9..11)?, digits(11..13)?, digits(13..15)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm), for years from 1970.
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Checks a request's signature with `secret`; `now` in seconds since the
/// Unix epoch.
pub fn verify(
    request: &Signed<'_>,
    auth: &Authorization,
    secret: &str,
    now: u64,
) -> Result<(), SqsError> {
    let mismatch = |why: String| SqsError::new(Code::SignatureDoesNotMatch, why);
    if auth.service != "sqs" {
        return Err(mismatch(format!(
            "Credential should be scoped to correct service: 'sqs', not '{}'.",
            auth.service
        )));
    }
    if !auth.signed_headers.iter().any(|h| h == "host") {
        return Err(mismatch("The host header must be signed.".into()));
    }
    let amz_date = request
        .headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            SqsError::new(
                Code::IncompleteSignature,
                "A signed request needs an X-Amz-Date header.",
            )
        })?;
    let at = parse_amz_date(amz_date).ok_or_else(|| {
        mismatch(format!(
            "X-Amz-Date {amz_date:?} is not YYYYMMDD'T'HHMMSS'Z'."
        ))
    })?;
    if at.abs_diff(now) > MAX_SKEW {
        return Err(mismatch(format!(
            "Signature expired: {amz_date} is more than 15 minutes from the server's time."
        )));
    }
    if !amz_date.starts_with(auth.date.as_str()) || auth.date.len() != 8 {
        return Err(mismatch(
            "The Credential's date is not the X-Amz-Date's date.".into(),
        ));
    }
    let canonical = request.canonical_request(&auth.signed_headers);
    let to_sign = string_to_sign(amz_date, &auth.scope(), &canonical);
    let key = signing_key(secret, &auth.date, &auth.region, &auth.service);
    let expected = hex(&hmac(&key, to_sign.as_bytes()));
    let same = expected.len() == auth.signature.len()
        && expected
            .bytes()
            .zip(auth.signature.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        Ok(())
    } else {
        Err(mismatch(
            "The request signature we calculated does not match the signature you provided. \
             Check your AWS Secret Access Key and signing method."
                .into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        assert_eq!(
            hex(&hmac(&[0x0b; 20], b"Hi There")),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        // A key longer than a block is hashed first (test case 6).
        assert_eq!(
            hex(&hmac(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    /// AWS's published example: IAM ListUsers, signed on 2015-08-30.
    #[test]
    fn the_published_example_signs_and_verifies() {
        let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
        let mut headers = HeaderMap::new();
        headers.insert(
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8"
                .parse()
                .expect("a value"),
        );
        headers.insert("host", "iam.amazonaws.com".parse().expect("a value"));
        headers.insert("x-amz-date", "20150830T123600Z".parse().expect("a value"));
        let request = Signed {
            method: "GET",
            path: "/",
            query: "Action=ListUsers&Version=2010-05-08",
            headers: &headers,
            body: b"",
        };
        let signed: Vec<String> = ["content-type", "host", "x-amz-date"]
            .map(String::from)
            .to_vec();
        let canonical = request.canonical_request(&signed);
        assert_eq!(
            sha256_hex(canonical.as_bytes()),
            "f536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59"
        );
        let key = signing_key(secret, "20150830", "us-east-1", "iam");
        assert_eq!(
            hex(&key),
            "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9"
        );
        let to_sign = string_to_sign(
            "20150830T123600Z",
            "20150830/us-east-1/iam/aws4_request",
            &canonical,
        );
        let signature = hex(&hmac(&key, to_sign.as_bytes()));
        assert_eq!(
            signature,
            "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
        );
        // The same request, as an SQS request, verifies with the secret only.
        let sqs_key = signing_key(secret, "20150830", "us-east-1", "sqs");
        let sqs_to_sign = string_to_sign(
            "20150830T123600Z",
            "20150830/us-east-1/sqs/aws4_request",
            &canonical,
        );
        let header = format!(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/sqs/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, Signature={}",
            hex(&hmac(&sqs_key, sqs_to_sign.as_bytes()))
        );
        let auth = Authorization::parse(&header).expect("parses");
        let at = parse_amz_date("20150830T123600Z").expect("a date");
        assert_eq!(at, 1_440_938_160);
        assert_eq!(verify(&request, &auth, secret, at + 60), Ok(()));
        let wrong = verify(&request, &auth, "another secret", at).expect_err("refused");
        assert_eq!(wrong.code, Code::SignatureDoesNotMatch);
        let late = verify(&request, &auth, secret, at + MAX_SKEW + 1).expect_err("expired");
        assert!(late.message.contains("expired"), "{late}");
        let changed = Signed {
            body: b"x",
            ..request
        };
        assert!(
            verify(&changed, &auth, secret, at).is_err(),
            "the body is signed"
        );
    }

    #[test]
    fn malformed_headers_are_incomplete() {
        for bad in [
            "",
            "AWS4-HMAC-SHA256",
            "AWS4-HMAC-SHA256 Credential=a/b/c/sqs/aws4_request, SignedHeaders=host",
            "AWS4-HMAC-SHA256 Credential=a/b/c/sqs, SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=a/b/c/sqs/x, SignedHeaders=host, Signature=00",
            "Basic dXNlcjpwYXNz",
        ] {
            assert_eq!(
                Authorization::parse(bad).map_err(|e| e.code),
                Err(Code::IncompleteSignature),
                "{bad}"
            );
        }
        // Signed header names that are no header names sign nothing, and
        // do not panic.
        let headers = HeaderMap::new();
        let request = Signed {
            method: "POST",
            path: "/a b/%zz",
            query: "x=%&=y&z",
            headers: &headers,
            body: b"",
        };
        let odd: Vec<String> = ["bad name", "\u{0}", "", "h\u{e9}"]
            .map(String::from)
            .to_vec();
        assert!(request.canonical_request(&odd).contains("bad name:\n"));
        assert_eq!(parse_amz_date("20150830T123600"), None);
        assert_eq!(parse_amz_date("2015083\u{e9}123600Z"), None);
        assert_eq!(parse_amz_date("2015083OT123600Z"), None);
        assert_eq!(parse_amz_date("19700101T000000Z"), Some(0));
    }
}
