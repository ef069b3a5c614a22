//! Message actions: sending (one or a batch), receiving with a visibility
//! timeout and a long poll, deleting and changing visibility by receipt
//! handle. A message id is the message's restmq key rendered UUID-shaped;
//! a receipt handle is the restmq receipt.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Map, Value};

use super::error::{Code, SqsError};
use super::message::{self, Attributes, Stored};
use super::output::uuid_shaped;
use super::sign::sha256_hex;
use super::{Ctx, input};
use crate::acl::Right;
use crate::broker::{QueueName, Receipt};
use crate::error::Error;
use crate::store::{NewMessage, Received};

/// Most entries in a batch.
const MAX_BATCH: usize = 10;

/// The longest visibility timeout SQS takes, in seconds (12 hours).
const MAX_VISIBILITY: i64 = 43_200;

/// The longest long poll SQS takes, in seconds.
const MAX_WAIT: i64 = 20;

/// The `MessageId` of message `id` of `queue`: the queue's digest and the
/// number, UUID-shaped, so the same message always has the same id.
pub fn message_id(queue: &QueueName, id: u64) -> String {
    let digest = sha256_hex(queue.as_str().as_bytes());
    uuid_shaped(&format!("{}{id:016x}", &digest[..16]))
}

/// A message to send, checked.
struct Outgoing {
    body: String,
    attributes: Attributes,
    delay: Option<u64>,
}

impl Outgoing {
    fn read(entry: &Map<String, Value>) -> Result<Outgoing, SqsError> {
        let body = input::required(entry, "MessageBody")?;
        message::check_body(body)?;
        let delay =
            input::integer(entry, "DelaySeconds", 0..=900)?.map(|d| u64::try_from(d).unwrap_or(0));
        let attributes = message::read_attributes(entry.get("MessageAttributes"))?;
        Ok(Outgoing {
            body: body.to_owned(),
            attributes,
            delay,
        })
    }

    fn message(&self, default_delay: u64, now: u64) -> NewMessage {
        let delay = self.delay.unwrap_or(default_delay);
        NewMessage {
            value: message::encode(&self.body, &self.attributes, now),
            ttl: None,
            delay: (delay > 0).then_some(delay),
        }
    }

    fn result(&self, queue: &QueueName, id: u64) -> Map<String, Value> {
        let mut out = Map::new();
        out.insert("MessageId".into(), Value::String(message_id(queue, id)));
        out.insert(
            "MD5OfMessageBody".into(),
            Value::String(message::md5_of_body(&self.body)),
        );
        if let Some(md5) = message::md5_of_attributes(&self.attributes) {
            out.insert("MD5OfMessageAttributes".into(), Value::String(md5));
        }
        out
    }
}

/// `SendMessage`.
pub async fn send(ctx: &Ctx, input: &Map<String, Value>) -> Result<Map<String, Value>, SqsError> {
    let queue = ctx.queue(input)?;
    ctx.require(Right::Publish, Some(&queue))?;
    let outgoing = Outgoing::read(input)?;
    let default_delay = match outgoing.delay {
        Some(_) => 0,
        None => ctx.broker().config(&queue).await?.delay,
    };
    let now = crate::store::now_millis();
    let id = ctx
        .broker()
        .publish(&queue, outgoing.message(default_delay, now))
        .await?;
    Ok(outgoing.result(&queue, id))
}

/// A batch entry: its id and its fields.
type Entry<'a> = (String, &'a Map<String, Value>);

/// The entries of a batch, checked as SQS does: 1 to 10, each with a
/// distinct `Id` of `A-Za-z0-9_-` (1 to 80).
fn entries(input: &Map<String, Value>) -> Result<Vec<Entry<'_>>, SqsError> {
    let list = match input.get("Entries") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => list.iter().collect(),
        Some(_) => return Err(SqsError::invalid("Entries must be a list.")),
    };
    if list.is_empty() {
        return Err(SqsError::new(
            Code::EmptyBatchRequest,
            "There should be at least one entry in the request.",
        ));
    }
    if list.len() > MAX_BATCH {
        return Err(SqsError::new(
            Code::TooManyEntriesInBatchRequest,
            format!(
                "Maximum number of entries per request are {MAX_BATCH}. You have sent {}.",
                list.len()
            ),
        ));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(list.len());
    for entry in list {
        let Value::Object(entry) = entry else {
            return Err(SqsError::invalid("Each entry must be an object."));
        };
        let id = input::required(entry, "Id")?;
        let valid = !id.is_empty()
            && id.len() <= 80
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err(SqsError::new(
                Code::InvalidBatchEntryId,
                "A batch entry id can only contain alphanumeric characters, hyphens and underscores. It can be at most 80 letters long.",
            ));
        }
        if !seen.insert(id.to_owned()) {
            return Err(SqsError::new(
                Code::BatchEntryIdsNotDistinct,
                format!("Id {id} repeated."),
            ));
        }
        out.push((id.to_owned(), entry));
    }
    Ok(out)
}

fn failed(id: &str, error: &SqsError) -> Value {
    serde_json::json!({
        "Id": id,
        "SenderFault": error.code.sender_fault(),
        "Code": error.code.query_code(),
        "Message": error.message,
    })
}

fn batch_result(successful: Vec<Value>, failures: Vec<Value>) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("Successful".into(), Value::Array(successful));
    out.insert("Failed".into(), Value::Array(failures));
    out
}

/// Runs `one` on each entry of a batch, in order: an entry that succeeds is
/// reported by its `Id` in `Successful`, one that fails in `Failed`.
async fn each_entry<'a, F, Done>(
    input: &'a Map<String, Value>,
    mut one: F,
) -> Result<Map<String, Value>, SqsError>
where
    F: FnMut(&'a Map<String, Value>) -> Done,
    Done: Future<Output = Result<(), SqsError>>,
{
    let mut successful = Vec::new();
    let mut failures = Vec::new();
    for (id, entry) in entries(input)? {
        match one(entry).await {
            Ok(()) => successful.push(serde_json::json!({ "Id": id })),
            Err(error) => failures.push(failed(&id, &error)),
        }
    }
    Ok(batch_result(successful, failures))
}

/// `SendMessageBatch`: the valid entries are published together, all or
/// none; each invalid one is reported in `Failed`.
pub async fn send_batch(
    ctx: &Ctx,
    input: &Map<String, Value>,
) -> Result<Map<String, Value>, SqsError> {
    let queue = ctx.queue(input)?;
    ctx.require(Right::Publish, Some(&queue))?;
    let mut good = Vec::new();
    let mut failures = Vec::new();
    for (id, entry) in entries(input)? {
        match Outgoing::read(entry) {
            Ok(outgoing) => good.push((id, outgoing)),
            Err(error) => failures.push(failed(&id, &error)),
        }
    }
    let mut successful = Vec::with_capacity(good.len());
    if !good.is_empty() {
        let default_delay = if good.iter().any(|(_, o)| o.delay.is_none()) {
            ctx.broker().config(&queue).await?.delay
        } else {
            0
        };
        let now = crate::store::now_millis();
        let messages = good
            .iter()
            .map(|(_, o)| o.message(default_delay, now))
            .collect();
        let ids = ctx.broker().publish_batch(&queue, messages).await?;
        if ids.len() != good.len() {
            return Err(SqsError::new(
                Code::InternalFailure,
                "The store answered a batch with a wrong number of keys.",
            ));
        }
        for ((entry_id, outgoing), id) in good.iter().zip(ids) {
            let mut result = outgoing.result(&queue, id);
            result.insert("Id".into(), Value::String(entry_id.clone()));
            successful.push(Value::Object(result));
        }
    }
    Ok(batch_result(successful, failures))
}

/// Which message attributes a receive asked for.
fn attribute_filter(names: &[String]) -> impl Fn(&str) -> bool + '_ {
    move |name: &str| {
        names.iter().any(|wanted| match wanted.as_str() {
            "All" | ".*" => true,
            w => match w.strip_suffix(".*") {
                Some(prefix) => name
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.starts_with('.')),
                None => w == name,
            },
        })
    }
}

/// A received message in the JSON protocol's shape.
fn received_message(
    queue: &QueueName,
    received: &Received,
    receipt: &Receipt,
    system: &[String],
    wanted: &[String],
) -> Value {
    let Stored {
        body,
        attributes,
        sent,
    } = message::decode(&received.message.value);
    let mut out = Map::new();
    out.insert(
        "MessageId".into(),
        Value::String(message_id(queue, received.message.id)),
    );
    out.insert("ReceiptHandle".into(), Value::String(receipt.to_string()));
    out.insert(
        "MD5OfBody".into(),
        Value::String(message::md5_of_body(&body)),
    );
    out.insert("Body".into(), Value::String(body));
    let all = system.iter().any(|s| s == "All");
    let asked = |name: &str| all || system.iter().any(|s| s == name);
    let mut system_attributes = Map::new();
    if asked("ApproximateReceiveCount") {
        system_attributes.insert(
            "ApproximateReceiveCount".into(),
            Value::String(received.delivery.to_string()),
        );
    }
    if let Some(sent) = sent.filter(|_| asked("SentTimestamp")) {
        system_attributes.insert("SentTimestamp".into(), Value::String(sent.to_string()));
    }
    if !system_attributes.is_empty() {
        out.insert("Attributes".into(), Value::Object(system_attributes));
    }
    let keep = attribute_filter(wanted);
    let chosen: Attributes = attributes
        .into_iter()
        .filter(|(name, _)| keep(name))
        .collect();
    if let Some(md5) = message::md5_of_attributes(&chosen) {
        out.insert("MD5OfMessageAttributes".into(), Value::String(md5));
        let map: Map<String, Value> = chosen
            .iter()
            .map(|(name, attribute)| (name.clone(), attribute.to_json()))
            .collect();
        out.insert("MessageAttributes".into(), Value::Object(map));
    }
    Value::Object(out)
}

/// `ReceiveMessage`: up to `MaxNumberOfMessages` (1 to 10), each hidden
/// for `VisibilityTimeout` (the queue's when absent); with
/// `WaitTimeSeconds` (up to 20, and the server's `--max-wait`) an empty
/// queue is waited on, and a publish answers at once.
pub async fn receive(
    ctx: &Ctx,
    input: &Map<String, Value>,
) -> Result<Map<String, Value>, SqsError> {
    let queue = ctx.queue(input)?;
    ctx.require(Right::Consume, Some(&queue))?;
    let max = input::integer(input, "MaxNumberOfMessages", 1..=10)?.unwrap_or(1);
    let max = usize::try_from(max).unwrap_or(1);
    let visibility = input::integer(input, "VisibilityTimeout", 0..=MAX_VISIBILITY)?
        .map(|v| u64::try_from(v).unwrap_or(0));
    let wait = input::integer(input, "WaitTimeSeconds", 0..=MAX_WAIT)?.unwrap_or(0);
    let wait = u64::try_from(wait).unwrap_or(0).min(ctx.state.max_wait);
    let mut system = input::strings(input, "AttributeNames")?;
    system.extend(input::strings(input, "MessageSystemAttributeNames")?);
    let wanted = input::strings(input, "MessageAttributeNames")?;
    let broker = ctx.broker();
    let take = || broker.receive(&queue, max, visibility);
    let received = if wait > 0 {
        broker
            .wait_for(&queue, Duration::from_secs(wait), take)
            .await?
    } else {
        take().await?
    };
    let mut out = Map::new();
    if !received.is_empty() {
        let messages = received
            .iter()
            .map(|(r, receipt)| received_message(&queue, r, receipt, &system, &wanted))
            .collect();
        out.insert("Messages".into(), Value::Array(messages));
    }
    Ok(out)
}

/// The receipt a handle names, which must be of `queue`.
fn receipt(queue: &QueueName, handle: &str) -> Result<Receipt, SqsError> {
    let invalid = || {
        SqsError::new(
            Code::ReceiptHandleIsInvalid,
            format!(
                "The input receipt handle \"{handle}\" is not a valid receipt handle for this queue."
            ),
        )
    };
    let receipt = Receipt::parse(handle).ok_or_else(invalid)?;
    if &receipt.queue == queue {
        Ok(receipt)
    } else {
        Err(invalid())
    }
}

/// Deletes one delivery's message. A handle whose delivery is over is let
/// be, as SQS does: the message is not deleted if it was received again.
async fn delete_one(ctx: &Ctx, queue: &QueueName, handle: &str) -> Result<(), SqsError> {
    let receipt = receipt(queue, handle)?;
    match ctx.broker().ack(&[receipt]).await {
        Ok(()) | Err(Error::StaleReceipts(_)) => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// `DeleteMessage`.
pub async fn delete(ctx: &Ctx, input: &Map<String, Value>) -> Result<Map<String, Value>, SqsError> {
    let queue = ctx.queue(input)?;
    ctx.require(Right::Consume, Some(&queue))?;
    let handle = input::required(input, "ReceiptHandle")?;
    delete_one(ctx, &queue, handle).await?;
    Ok(Map::new())
}

/// `DeleteMessageBatch`.
pub async fn delete_batch(
    ctx: &Ctx,
    input: &Map<String, Value>,
) -> Result<Map<String, Value>, SqsError> {
    let queue = ctx.queue(input)?;
    ctx.require(Right::Consume, Some(&queue))?;
    let queue = &queue;
    each_entry(input, |entry| async move {
        delete_one(ctx, queue, input::required(entry, "ReceiptHandle")?).await
    })
    .await
}

/// Hides one delivery's message `seconds` from now; 0 releases it.
async fn change_one(
    ctx: &Ctx,
    queue: &QueueName,
    entry: &Map<String, Value>,
) -> Result<(), SqsError> {
    let handle = input::required(entry, "ReceiptHandle")?;
    let seconds = input::integer(entry, "VisibilityTimeout", 0..=MAX_VISIBILITY)?
        .ok_or_else(|| SqsError::missing("VisibilityTimeout"))?;
    let receipt = receipt(queue, handle)?;
    match u64::try_from(seconds).unwrap_or(0) {
        0 => ctx.broker().nack(&receipt, 0).await?,
        seconds => ctx.broker().extend(&receipt, seconds).await?,
    }
    Ok(())
}

/// `ChangeMessageVisibility`.
pub async fn change_visibility(
    ctx: &Ctx,
    input: &Map<String, Value>,
) -> Result<Map<String, Value>, SqsError> {
    let queue = ctx.queue(input)?;
    ctx.require(Right::Consume, Some(&queue))?;
    change_one(ctx, &queue, input).await?;
    Ok(Map::new())
}

/// `ChangeMessageVisibilityBatch`.
pub async fn change_visibility_batch(
    ctx: &Ctx,
    input: &Map<String, Value>,
) -> Result<Map<String, Value>, SqsError> {
    let queue = ctx.queue(input)?;
    ctx.require(Right::Consume, Some(&queue))?;
    let queue = &queue;
    each_entry(input, |entry| change_one(ctx, queue, entry)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_deterministic_per_queue_and_number() {
        let jobs = QueueName::parse("jobs").expect("a name");
        let other = QueueName::parse("other").expect("a name");
        assert_eq!(message_id(&jobs, 17), message_id(&jobs, 17));
        assert_ne!(message_id(&jobs, 17), message_id(&jobs, 18));
        assert_ne!(message_id(&jobs, 17), message_id(&other, 17));
        assert!(message_id(&jobs, 17).ends_with("-000000000011"));
    }

    #[test]
    fn attribute_names_filter_by_name_prefix_or_all() {
        let names = vec!["a".to_owned(), "pre.*".to_owned()];
        let keep = attribute_filter(&names);
        assert!(keep("a"));
        assert!(!keep("ab"));
        assert!(keep("pre.x"));
        assert!(!keep("prex"));
        assert!(!keep("pre"));
        let all = vec!["All".to_owned()];
        assert!(attribute_filter(&all)("anything"));
        assert!(!attribute_filter(&[])("a"));
    }

    #[test]
    fn receipts_must_be_of_the_queue() {
        let jobs = QueueName::parse("jobs").expect("a name");
        let other = QueueName::parse("other").expect("a name");
        let mine = Receipt {
            queue: jobs.clone(),
            id: 1,
            delivery: 1,
        }
        .to_string();
        assert!(receipt(&jobs, &mine).is_ok());
        assert_eq!(
            receipt(&other, &mine).map_err(|e| e.code),
            Err(Code::ReceiptHandleIsInvalid)
        );
        assert_eq!(
            receipt(&jobs, "garbage").map_err(|e| e.code),
            Err(Code::ReceiptHandleIsInvalid)
        );
    }
}
