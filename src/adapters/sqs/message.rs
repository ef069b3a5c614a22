//! Messages at the SQS door: message attributes, the envelope that carries
//! them through a restmq queue, and the MD5 digests SQS answers with.
//!
//! restmq stores a message as one string. A message sent without attributes
//! is stored as its body, verbatim, so that HTTP consumers read the body. One
//! sent with attributes is stored as a JSON envelope, readable over HTTP too:
//!
//! ```json
//! {"Body":"…","MessageAttributes":{"k":{"DataType":"String","StringValue":"v"}},
//!  "SentTimestamp":"1700000000000","restmq":"sqs-envelope/1"}
//! ```
//!
//! The door reads an envelope back as body and attributes; a value published
//! over HTTP that happens to be exactly such an envelope is read as one.

use std::collections::BTreeMap;

use base64::Engine;
use md5::{Digest, Md5};
use serde_json::{Map, Value, json};

use super::error::{Code, SqsError};

/// The tag that marks an envelope.
pub const ENVELOPE: &str = "sqs-envelope/1";

/// Most message attributes on one message, as in SQS.
pub const MAX_ATTRIBUTES: usize = 10;

/// One message attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    /// `String`, `Number` or `Binary`, with an optional `.label`.
    pub data_type: String,
    /// The value: the text, or the bytes of a `Binary`.
    pub value: AttributeValue,
}

/// A message attribute's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttributeValue {
    /// `StringValue` of a `String` or `Number`.
    Text(String),
    /// `BinaryValue` of a `Binary`.
    Bytes(Vec<u8>),
}

/// Message attributes by name; sorted, as their MD5 wants them.
pub type Attributes = BTreeMap<String, Attribute>;

/// A message as the door reads it from a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The body.
    pub body: String,
    /// Its attributes, empty for a plain message.
    pub attributes: Attributes,
    /// When it was sent, in ms since the Unix epoch, when the envelope says.
    pub sent: Option<u64>,
}

fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

impl Attribute {
    /// As the JSON protocol writes it (`BinaryValue` in base64).
    pub fn to_json(&self) -> Value {
        match &self.value {
            AttributeValue::Text(text) => {
                json!({ "DataType": self.data_type, "StringValue": text })
            }
            AttributeValue::Bytes(bytes) => {
                json!({ "DataType": self.data_type, "BinaryValue": base64(bytes) })
            }
        }
    }

    /// Reads an attribute as SQS checks it: a known data type, and the
    /// value that type needs.
    pub fn from_json(name: &str, value: &Value) -> Result<Attribute, SqsError> {
        let bad = |why: &str| SqsError::invalid(format!("The message attribute '{name}' {why}."));
        let Value::Object(fields) = value else {
            return Err(bad("must be an object with DataType and a value"));
        };
        let text = |field: &str| match fields.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(bad(&format!("has a {field} that is not a string"))),
        };
        let data_type = text("DataType")?
            .ok_or_else(|| bad("must have a DataType"))?
            .to_owned();
        let (base, label) = match data_type.split_once('.') {
            Some((base, label)) => (base, Some(label)),
            None => (data_type.as_str(), None),
        };
        if label.is_some_and(|l| l.is_empty() || l.len() > 256) {
            return Err(bad("has an empty or too long DataType label"));
        }
        let value = match base {
            "String" | "Number" => {
                let text = text("StringValue")?
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| bad("must have a non-empty StringValue"))?;
                if base == "Number" && text.trim().parse::<f64>().is_err() {
                    return Err(bad("has a Number StringValue that is not a number"));
                }
                if !allowed_text(text) {
                    return Err(bad("has characters SQS does not allow"));
                }
                AttributeValue::Text(text.to_owned())
            }
            "Binary" => {
                let encoded = text("BinaryValue")?.ok_or_else(|| bad("must have a BinaryValue"))?;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .map_err(|_| bad("has a BinaryValue that is not base64"))?;
                if bytes.is_empty() {
                    return Err(bad("has an empty BinaryValue"));
                }
                AttributeValue::Bytes(bytes)
            }
            _ => return Err(bad("has a DataType other than String, Number or Binary")),
        };
        Ok(Attribute { data_type, value })
    }
}

/// Checks a message attribute name as SQS does: letters, digits, `_`, `-`
/// and `.`, no leading, trailing or doubled `.`, no `AWS.`/`Amazon.` prefix.
pub fn check_attribute_name(name: &str) -> Result<(), SqsError> {
    let valid = !name.is_empty()
        && name.len() <= 256
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && !name.starts_with('.')
        && !name.ends_with('.')
        && !name.contains("..")
        && !name.to_ascii_lowercase().starts_with("aws.")
        && !name.to_ascii_lowercase().starts_with("amazon.");
    if valid {
        Ok(())
    } else {
        Err(SqsError::invalid(format!(
            "The message attribute name '{name}' is invalid."
        )))
    }
}

/// Reads the `MessageAttributes` of a message to send.
pub fn read_attributes(value: Option<&Value>) -> Result<Attributes, SqsError> {
    let fields = match value {
        None | Some(Value::Null) => return Ok(Attributes::new()),
        Some(Value::Object(fields)) => fields,
        Some(_) => return Err(SqsError::invalid("MessageAttributes must be a map.")),
    };
    if fields.len() > MAX_ATTRIBUTES {
        return Err(SqsError::invalid(format!(
            "Number of message attributes [{}] exceeds the allowed maximum [{MAX_ATTRIBUTES}].",
            fields.len()
        )));
    }
    let mut attributes = Attributes::new();
    for (name, value) in fields {
        check_attribute_name(name)?;
        attributes.insert(name.clone(), Attribute::from_json(name, value)?);
    }
    Ok(attributes)
}

/// Whether SQS allows every character of `text`: `#x9 | #xA | #xD | #x20`
/// to `#xD7FF | #xE000` to `#xFFFD | #x10000` to `#x10FFFF` (Rust strings
/// hold no surrogates).
pub fn allowed_text(text: &str) -> bool {
    text.chars()
        .all(|c| matches!(c, '\t' | '\n' | '\r' | ' '..='\u{FFFD}' | '\u{10000}'..))
}

/// Checks a message body to send.
pub fn check_body(body: &str) -> Result<(), SqsError> {
    if body.is_empty() {
        return Err(SqsError::invalid("The message body must not be empty."));
    }
    if !allowed_text(body) {
        return Err(SqsError::new(
            Code::InvalidMessageContents,
            "Invalid characters found in the message body: SQS allows #x9, #xA, #xD, \
             #x20 to #xD7FF, #xE000 to #xFFFD and #x10000 to #x10FFFF.",
        ));
    }
    Ok(())
}

/// What a queue stores for a message: the body itself without attributes,
/// the envelope with them.
pub fn encode(body: &str, attributes: &Attributes, sent: u64) -> String {
    if attributes.is_empty() {
        return body.to_owned();
    }
    let attributes: Map<String, Value> = attributes
        .iter()
        .map(|(name, attribute)| (name.clone(), attribute.to_json()))
        .collect();
    json!({
        "Body": body,
        "MessageAttributes": attributes,
        "SentTimestamp": sent.to_string(),
        "restmq": ENVELOPE,
    })
    .to_string()
}

/// Reads a stored message: an envelope as body and attributes, anything
/// else as a body without attributes.
pub fn decode(value: &str) -> Stored {
    let plain = || Stored {
        body: value.to_owned(),
        attributes: Attributes::new(),
        sent: None,
    };
    if !value.starts_with('{') || !value.contains(ENVELOPE) {
        return plain();
    }
    envelope(value).unwrap_or_else(plain)
}

fn envelope(value: &str) -> Option<Stored> {
    let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(value) else {
        return None;
    };
    if fields.get("restmq").and_then(Value::as_str) != Some(ENVELOPE) {
        return None;
    }
    let body = fields.get("Body")?.as_str()?.to_owned();
    let mut attributes = Attributes::new();
    for (name, attribute) in fields.get("MessageAttributes")?.as_object()? {
        attributes.insert(name.clone(), Attribute::from_json(name, attribute).ok()?);
    }
    let sent = match fields.get("SentTimestamp") {
        None => None,
        Some(sent) => Some(sent.as_str()?.parse().ok()?),
    };
    Some(Stored {
        body,
        attributes,
        sent,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `MD5OfMessageBody`: the hex MD5 of the body's UTF-8 bytes.
pub fn md5_of_body(body: &str) -> String {
    hex(&Md5::digest(body.as_bytes()))
}

/// `MD5OfMessageAttributes`, as AWS documents it: for each attribute, by
/// name, the name, the data type, a transport byte (1 for text, 2 for
/// binary) and the value, each but the byte preceded by its length as 4
/// big-endian bytes. `None` without attributes.
pub fn md5_of_attributes(attributes: &Attributes) -> Option<String> {
    if attributes.is_empty() {
        return None;
    }
    fn put(md5: &mut Md5, bytes: &[u8]) {
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        md5.update(len.to_be_bytes());
        md5.update(bytes);
    }
    let mut md5 = Md5::new();
    for (name, attribute) in attributes {
        put(&mut md5, name.as_bytes());
        put(&mut md5, attribute.data_type.as_bytes());
        match &attribute.value {
            AttributeValue::Text(text) => {
                md5.update([1]);
                put(&mut md5, text.as_bytes());
            }
            AttributeValue::Bytes(bytes) => {
                md5.update([2]);
                put(&mut md5, bytes);
            }
        }
    }
    Some(hex(&md5.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(data_type: &str, value: &str) -> Attribute {
        Attribute {
            data_type: data_type.into(),
            value: AttributeValue::Text(value.into()),
        }
    }

    #[test]
    fn plain_bodies_are_stored_verbatim_and_envelopes_round_trip() {
        let none = Attributes::new();
        assert_eq!(encode("hello {", &none, 5), "hello {");
        assert_eq!(decode("hello {").body, "hello {");
        let mut attributes = Attributes::new();
        attributes.insert("a".into(), text("String", "x"));
        attributes.insert(
            "b".into(),
            Attribute {
                data_type: "Binary.png".into(),
                value: AttributeValue::Bytes(vec![0, 1, 2]),
            },
        );
        let stored = encode("body", &attributes, 1234);
        let read = decode(&stored);
        assert_eq!(read.body, "body");
        assert_eq!(read.attributes, attributes);
        assert_eq!(read.sent, Some(1234));
        // Something that only looks like one is a plain body.
        let lookalike = r#"{"restmq":"sqs-envelope/1"}"#;
        assert_eq!(decode(lookalike).body, lookalike);
        assert!(decode(lookalike).attributes.is_empty());
    }

    #[test]
    fn attribute_md5s_match_published_examples() {
        let mut one = Attributes::new();
        one.insert("SellerName".into(), text("String", "Example Store"));
        assert_eq!(
            md5_of_attributes(&one).as_deref(),
            Some("cd28f3b68aeee4b2eac9c66f2f694b58")
        );
        let mut two = Attributes::new();
        two.insert("ordinal".into(), text("Number", "1"));
        two.insert("category".into(), text("String", "test"));
        assert_eq!(
            md5_of_attributes(&two).as_deref(),
            Some("d21ae90c49061e927f57df5f5d72be1f")
        );
        assert_eq!(md5_of_attributes(&Attributes::new()), None);
    }

    #[test]
    fn body_md5_is_md5() {
        assert_eq!(md5_of_body("hello"), "5d41402abc4b2a76b9719d911017c592");
    }
}
