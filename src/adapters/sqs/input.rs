//! What a request asks: its protocol, its action and its parameters. Both
//! protocols' parameters are read into the JSON protocol's shape, so that
//! each action reads one shape: the query protocol's flattened names
//! (`Attribute.1.Name`, `MessageAttribute.1.Value.StringValue`,
//! `SendMessageBatchRequestEntry.1.Id`, `AttributeName.1`) become the JSON
//! protocol's maps and lists.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::error::{Code, SqsError};

/// How the request was sent, and so how it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `X-Amz-Target: AmazonSQS.<Action>` and a JSON body; JSON answers.
    Json,
    /// `Action=…` in a form body or the query string; XML answers.
    Query,
}

/// A request's action and parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// The action, such as `SendMessage`.
    pub action: String,
    /// The parameters, in the JSON protocol's shape.
    pub input: Map<String, Value>,
}

/// The protocol of a request, from its `X-Amz-Target` header.
pub fn protocol(target: Option<&str>, content_type: Option<&str>) -> Protocol {
    let json = content_type.is_some_and(|t| t.trim().starts_with("application/x-amz-json"));
    if target.is_some() || json {
        Protocol::Json
    } else {
        Protocol::Query
    }
}

/// Reads a JSON protocol request.
pub fn json_call(target: Option<&str>, body: &[u8]) -> Result<Call, SqsError> {
    let target = target.ok_or_else(|| {
        SqsError::new(
            Code::InvalidAction,
            "A JSON protocol request needs an X-Amz-Target header: AmazonSQS.<Action>.",
        )
    })?;
    let action = target
        .strip_prefix("AmazonSQS.")
        .filter(|a| !a.is_empty())
        .ok_or_else(|| {
            SqsError::new(
                Code::InvalidAction,
                format!("The target {target:?} is not AmazonSQS.<Action>."),
            )
        })?;
    let input = if body.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(input)) => input,
            Ok(_) => {
                return Err(SqsError::new(
                    Code::SerializationException,
                    "The request body must be a JSON object.",
                ));
            }
            Err(error) => {
                return Err(SqsError::new(
                    Code::SerializationException,
                    format!("The request body is not JSON: {error}."),
                ));
            }
        }
    };
    Ok(Call {
        action: action.to_owned(),
        input,
    })
}

/// A node of the query protocol's dotted names.
#[derive(Debug)]
enum Node {
    Leaf(String),
    Branch(BTreeMap<String, Node>),
}

/// Reads a query protocol request from its decoded pairs (query string and
/// form body).
pub fn query_call(pairs: &[(String, String)]) -> Result<Call, SqsError> {
    let mut root = BTreeMap::new();
    let mut action = None;
    for (name, value) in pairs {
        match name.as_str() {
            "Action" => action = Some(value.clone()),
            // The API version and the signature of presigned URLs are
            // not parameters of the action.
            "Version" => {}
            _ if name.starts_with("X-Amz-") => {}
            _ => insert(&mut root, name, value)?,
        }
    }
    let action = action
        .filter(|a| !a.is_empty())
        .ok_or_else(|| SqsError::missing("Action"))?;
    Ok(Call {
        action,
        input: object(root)?,
    })
}

fn malformed(name: &str) -> SqsError {
    SqsError::invalid(format!("The parameter {name} is malformed."))
}

/// Most dot-separated parts of a parameter name: SQS's deepest is
/// `SendMessageBatchRequestEntry.1.MessageAttribute.1.Value.StringValue`.
/// Reading is recursive, so a deeper name must not reach it.
const MAX_DEPTH: usize = 8;

fn insert(root: &mut BTreeMap<String, Node>, name: &str, value: &str) -> Result<(), SqsError> {
    let parts: Vec<&str> = name.split('.').collect();
    if parts.len() > MAX_DEPTH || parts.iter().any(|p| p.is_empty()) {
        return Err(malformed(name));
    }
    let mut node = root;
    let (last, path) = parts.split_last().ok_or_else(|| malformed(name))?;
    for part in path {
        let entry = node
            .entry((*part).to_owned())
            .or_insert_with(|| Node::Branch(BTreeMap::new()));
        node = match entry {
            Node::Branch(children) => children,
            Node::Leaf(_) => return Err(malformed(name)),
        };
    }
    match node.get(*last) {
        Some(Node::Branch(_)) => Err(malformed(name)),
        Some(Node::Leaf(_)) | None => {
            node.insert((*last).to_owned(), Node::Leaf(value.to_owned()));
            Ok(())
        }
    }
}

/// The entries of a numbered list (`X.1`, `X.2`, …) in order.
fn numbered(children: BTreeMap<String, Node>, name: &str) -> Result<Vec<Node>, SqsError> {
    let mut entries = Vec::with_capacity(children.len());
    for (index, node) in children {
        let index: u32 = index
            .parse()
            .ok()
            .filter(|&i| i > 0)
            .ok_or_else(|| malformed(name))?;
        entries.push((index, node));
    }
    entries.sort_by_key(|(index, _)| *index);
    Ok(entries.into_iter().map(|(_, node)| node).collect())
}

fn value(node: Node) -> Result<Value, SqsError> {
    match node {
        Node::Leaf(text) => Ok(Value::String(text)),
        Node::Branch(children) => object(children).map(Value::Object),
    }
}

/// A map given as `X.n.Name` (or `Key`) and `X.n.Value`.
fn pairs_map(children: BTreeMap<String, Node>, name: &str) -> Result<Value, SqsError> {
    let mut map = Map::new();
    for entry in numbered(children, name)? {
        let Node::Branch(mut fields) = entry else {
            return Err(malformed(name));
        };
        let key = match fields.remove("Name").or_else(|| fields.remove("Key")) {
            Some(Node::Leaf(key)) => key,
            Some(Node::Branch(_)) | None => return Err(malformed(name)),
        };
        let entry_value = match fields.remove("Value") {
            Some(node) => value(node)?,
            None => Value::Null,
        };
        map.insert(key, entry_value);
    }
    Ok(Value::Object(map))
}

fn object(children: BTreeMap<String, Node>) -> Result<Map<String, Value>, SqsError> {
    let mut out = Map::new();
    for (name, node) in children {
        let node = match node {
            Node::Leaf(text) => {
                out.insert(name, Value::String(text));
                continue;
            }
            Node::Branch(children) => children,
        };
        match name.as_str() {
            "Attribute" => {
                out.insert("Attributes".into(), pairs_map(node, &name)?);
            }
            "MessageAttribute" => {
                out.insert("MessageAttributes".into(), pairs_map(node, &name)?);
            }
            "MessageSystemAttribute" => {
                out.insert("MessageSystemAttributes".into(), pairs_map(node, &name)?);
            }
            "Tag" => {
                out.insert("tags".into(), pairs_map(node, &name)?);
            }
            "AttributeName" | "MessageAttributeName" | "MessageSystemAttributeName" => {
                let list = numbered(node, &name)?
                    .into_iter()
                    .map(value)
                    .collect::<Result<Vec<_>, _>>()?;
                out.insert(format!("{name}s"), Value::Array(list));
            }
            _ if name.ends_with("RequestEntry") => {
                let list = numbered(node, &name)?
                    .into_iter()
                    .map(value)
                    .collect::<Result<Vec<_>, _>>()?;
                out.insert("Entries".into(), Value::Array(list));
            }
            _ => {
                out.insert(name, Value::Object(object(node)?));
            }
        }
    }
    Ok(out)
}

/// A string parameter; `None` when absent or null.
pub fn text<'a>(input: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, SqsError> {
    match input.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(SqsError::invalid(format!(
            "The parameter {name} must be a string."
        ))),
    }
}

/// A required string parameter.
pub fn required<'a>(input: &'a Map<String, Value>, name: &str) -> Result<&'a str, SqsError> {
    text(input, name)?.ok_or_else(|| SqsError::missing(name))
}

/// An integer parameter within `range`; `None` when absent or null. The
/// query protocol sends numbers as text.
pub fn integer(
    input: &Map<String, Value>,
    name: &str,
    range: std::ops::RangeInclusive<i64>,
) -> Result<Option<i64>, SqsError> {
    let number = match input.get(name) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.trim().parse::<i64>().ok(),
        Some(_) => None,
    };
    match number {
        Some(n) if range.contains(&n) => Ok(Some(n)),
        Some(_) | None => Err(SqsError::invalid(format!(
            "Value {} for parameter {name} is invalid. Reason: it must be an integer from {} to {}.",
            input.get(name).map(ToString::to_string).unwrap_or_default(),
            range.start(),
            range.end()
        ))),
    }
}

/// A list of strings; empty when absent.
pub fn strings(input: &Map<String, Value>, name: &str) -> Result<Vec<String>, SqsError> {
    match input.get(name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(s.clone()),
                _ => Err(SqsError::invalid(format!(
                    "The parameter {name} must be a list of strings."
                ))),
            })
            .collect(),
        Some(_) => Err(SqsError::invalid(format!(
            "The parameter {name} must be a list of strings."
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn query_names_become_the_json_shape() {
        let call = query_call(&pairs(&[
            ("Action", "SendMessageBatch"),
            ("Version", "2012-11-05"),
            ("QueueUrl", "http://h/000000000000/q"),
            ("SendMessageBatchRequestEntry.2.Id", "b"),
            ("SendMessageBatchRequestEntry.2.MessageBody", "two"),
            ("SendMessageBatchRequestEntry.10.Id", "c"),
            ("SendMessageBatchRequestEntry.1.Id", "a"),
            ("SendMessageBatchRequestEntry.1.MessageBody", "one"),
            (
                "SendMessageBatchRequestEntry.1.MessageAttribute.1.Name",
                "k",
            ),
            (
                "SendMessageBatchRequestEntry.1.MessageAttribute.1.Value.DataType",
                "String",
            ),
            (
                "SendMessageBatchRequestEntry.1.MessageAttribute.1.Value.StringValue",
                "v",
            ),
            ("AttributeName.2", "B"),
            ("AttributeName.1", "A"),
            ("Attribute.1.Name", "DelaySeconds"),
            ("Attribute.1.Value", "5"),
        ]))
        .expect("parses");
        assert_eq!(call.action, "SendMessageBatch");
        assert_eq!(
            Value::Object(call.input),
            json!({
                "QueueUrl": "http://h/000000000000/q",
                "Entries": [
                    {"Id": "a", "MessageBody": "one",
                     "MessageAttributes": {"k": {"DataType": "String", "StringValue": "v"}}},
                    {"Id": "b", "MessageBody": "two"},
                    {"Id": "c"},
                ],
                "AttributeNames": ["A", "B"],
                "Attributes": {"DelaySeconds": "5"},
            })
        );
    }

    #[test]
    fn malformed_query_names_are_refused() {
        for bad in [
            vec![("Action", "X"), ("A.", "1")],
            vec![("Action", "X"), ("A", "1"), ("A.1", "2")],
            vec![("Action", "X"), ("A.1", "2"), ("A", "1")],
            vec![("Action", "X"), ("AttributeName.x", "1")],
            vec![("Action", "X"), ("AttributeName.0", "1")],
            vec![("Action", "X"), ("Attribute.1.Value", "1")],
            vec![("Action", "X"), ("a.b.c.d.e.f.g.h.i", "1")],
        ] {
            assert!(query_call(&pairs(&bad)).is_err(), "{bad:?}");
        }
        let deep = "a.".repeat(100_000) + "a";
        assert!(query_call(&pairs(&[("Action", "X"), (&deep, "1")])).is_err());
        assert_eq!(
            query_call(&pairs(&[("Version", "1")])).map_err(|e| e.code),
            Err(Code::MissingParameter)
        );
    }

    #[test]
    fn json_calls_need_a_target_and_an_object() {
        let call = json_call(Some("AmazonSQS.ListQueues"), b"").expect("parses");
        assert_eq!(call.action, "ListQueues");
        for (target, body) in [
            (None, &b"{}"[..]),
            (Some("ListQueues"), b"{}"),
            (Some("AmazonSQS."), b"{}"),
            (Some("AmazonSQS.ListQueues"), b"[1]"),
            (Some("AmazonSQS.ListQueues"), b"{not json"),
        ] {
            assert!(json_call(target, body).is_err(), "{target:?} {body:?}");
        }
    }

    proptest::proptest! {
        /// Whatever a client sends, reading it answers (an error at worst).
        #[test]
        fn any_input_is_read_without_panicking(
            names in proptest::collection::vec("[A-Za-z0-9.]{0,12}", 0..12),
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
        ) {
            let pairs: Vec<(String, String)> =
                names.iter().map(|n| (n.clone(), "v".to_owned())).collect();
            let _ = query_call(&pairs);
            let _ = json_call(Some("AmazonSQS.SendMessage"), &body);
        }
    }

    #[test]
    fn integers_come_as_numbers_or_text() {
        let input = json!({"a": 3, "b": "4", "c": "x", "d": 11, "e": 1.5})
            .as_object()
            .cloned()
            .expect("an object");
        assert_eq!(integer(&input, "a", 1..=10).ok(), Some(Some(3)));
        assert_eq!(integer(&input, "b", 1..=10).ok(), Some(Some(4)));
        assert!(integer(&input, "c", 1..=10).is_err());
        assert!(integer(&input, "d", 1..=10).is_err());
        assert!(integer(&input, "e", 1..=10).is_err());
        assert_eq!(integer(&input, "z", 1..=10).ok(), Some(None));
    }
}
