//! Queue actions. restmq queues exist implicitly (the first publish creates
//! one), so:
//! - `CreateQueue` checks the name and applies its attributes (to an
//!   existing queue too); the queue is listed once a message is sent to it.
//! - `GetQueueUrl` answers for any valid name; `QueueDoesNotExist` for a
//!   name no queue can have.
//! - `ListQueues` lists the queues published to, whose names SQS allows.
//! - `DeleteQueue` purges the queue and puts its settings back to the
//!   defaults; the name stays usable (and listed, as restmq lists a queue
//!   from its first message on).
//! - `PurgeQueue` deletes every message, in flight or delayed too.

use serde_json::{Map, Value, json};

use super::error::{Code, SqsError};
use super::input;
use super::{Ctx, arn, existing, sqs_name};
use crate::acl::Right;
use crate::broker::QueueName;
use crate::store::QueueConfig;

/// The largest message SQS takes, reported as `MaximumMessageSize`.
const MAXIMUM_MESSAGE_SIZE: u64 = 262_144;

/// Attributes accepted for compatibility and not applied: restmq has no
/// per-queue size limit, default wait, policy or encryption.
const IGNORED: &[&str] = &[
    "MaximumMessageSize",
    "ReceiveMessageWaitTimeSeconds",
    "Policy",
    "KmsMasterKeyId",
    "KmsDataKeyReusePeriodSeconds",
    "SqsManagedSseEnabled",
    "RedriveAllowPolicy",
];

/// Attributes only FIFO queues have.
const FIFO: &[&str] = &[
    "FifoQueue",
    "ContentBasedDeduplication",
    "DeduplicationScope",
    "FifoThroughputLimit",
];

/// Attributes `GetQueueAttributes` answers, in the order `All` lists them.
const READABLE: &[&str] = &[
    "QueueArn",
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
    "VisibilityTimeout",
    "DelaySeconds",
    "MaximumMessageSize",
    "MessageRetentionPeriod",
    "ReceiveMessageWaitTimeSeconds",
    "RedrivePolicy",
    "SqsManagedSseEnabled",
];

/// Attributes SQS has that restmq knows no value of (creation times,
/// policies, keys, FIFO settings): asked for, they are left out.
const UNKNOWN_VALUES: &[&str] = &[
    "CreatedTimestamp",
    "LastModifiedTimestamp",
    "Policy",
    "KmsMasterKeyId",
    "KmsDataKeyReusePeriodSeconds",
    "RedriveAllowPolicy",
    "FifoQueue",
    "ContentBasedDeduplication",
    "DeduplicationScope",
    "FifoThroughputLimit",
];

fn invalid_value(name: &str, why: &str) -> SqsError {
    SqsError::new(
        Code::InvalidAttributeValue,
        format!("Invalid value for the parameter {name}: {why}."),
    )
}

fn attribute_number(
    name: &str,
    value: &Value,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, SqsError> {
    let number = match value {
        Value::String(s) => s.trim().parse::<u64>().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    };
    number.filter(|n| range.contains(n)).ok_or_else(|| {
        invalid_value(
            name,
            &format!(
                "it must be an integer from {} to {}",
                range.start(),
                range.end()
            ),
        )
    })
}

/// The queue a RedrivePolicy's `deadLetterTargetArn` names.
fn target(arn_text: &str) -> Result<QueueName, SqsError> {
    let name = arn_text.rsplit(':').next().unwrap_or("");
    if !arn_text.starts_with("arn:") || arn_text.split(':').count() != 6 {
        return Err(invalid_value(
            "RedrivePolicy",
            "deadLetterTargetArn must be a queue ARN, arn:aws:sqs:<region>:<account>:<name>",
        ));
    }
    sqs_name(name).map_err(|e| invalid_value("RedrivePolicy", &e.message))
}

fn redrive_policy(
    value: &Value,
    config: &mut QueueConfig,
    queue: &QueueName,
) -> Result<(), SqsError> {
    let text = match value {
        Value::String(text) => text.as_str(),
        _ => return Err(invalid_value("RedrivePolicy", "it must be a JSON string")),
    };
    if text.trim().is_empty() {
        config.max_receives = 0;
        config.dead_letter = None;
        return Ok(());
    }
    let policy: Value =
        serde_json::from_str(text).map_err(|_| invalid_value("RedrivePolicy", "it is not JSON"))?;
    let Value::Object(policy) = policy else {
        return Err(invalid_value("RedrivePolicy", "it must be a JSON object"));
    };
    let arn_text = policy
        .get("deadLetterTargetArn")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid_value("RedrivePolicy", "it needs deadLetterTargetArn"))?;
    let count = policy
        .get("maxReceiveCount")
        .ok_or_else(|| invalid_value("RedrivePolicy", "it needs maxReceiveCount"))?;
    let count = attribute_number("RedrivePolicy maxReceiveCount", count, 1..=1000)?;
    let dead = target(arn_text)?;
    if &dead == queue {
        return Err(invalid_value(
            "RedrivePolicy",
            "the dead-letter queue must be another queue",
        ));
    }
    config.max_receives = count;
    config.dead_letter = Some(dead.as_str().to_owned());
    Ok(())
}

/// Applies attributes to `config`; nothing is applied when one is refused.
fn apply(
    config: &mut QueueConfig,
    attributes: &Map<String, Value>,
    queue: &QueueName,
) -> Result<(), SqsError> {
    let mut changed = config.clone();
    for (name, value) in attributes {
        match name.as_str() {
            "VisibilityTimeout" => changed.visibility = attribute_number(name, value, 0..=43_200)?,
            "DelaySeconds" => changed.delay = attribute_number(name, value, 0..=900)?,
            "MessageRetentionPeriod" => {
                changed.retention = attribute_number(name, value, 60..=1_209_600)?;
            }
            "RedrivePolicy" => redrive_policy(value, &mut changed, queue)?,
            "FifoQueue" if value.as_str() == Some("false") => {}
            n if FIFO.contains(&n) => {
                return Err(SqsError::new(
                    Code::UnsupportedOperation,
                    "FIFO queues are not supported by restmq.",
                ));
            }
            "MaximumMessageSize" => {
                attribute_number(name, value, 1024..=1_048_576)?;
            }
            "ReceiveMessageWaitTimeSeconds" => {
                attribute_number(name, value, 0..=20)?;
            }
            n if IGNORED.contains(&n) => {}
            other => {
                return Err(SqsError::new(
                    Code::InvalidAttributeName,
                    format!("Unknown or read-only attribute {other}."),
                ));
            }
        }
    }
    *config = changed;
    Ok(())
}

fn attributes_of(input: &Map<String, Value>) -> Result<Map<String, Value>, SqsError> {
    match input.get("Attributes") {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(map)) => Ok(map.clone()),
        Some(_) => Err(SqsError::invalid("Attributes must be a map.")),
    }
}

/// `CreateQueue`.
pub async fn create(ctx: &Ctx, input: &Map<String, Value>) -> Result<Map<String, Value>, SqsError> {
    let name = input::required(input, "QueueName")?;
    let queue = sqs_name(name)?;
    ctx.require(Right::Admin, Some(&queue))?;
    let attributes = attributes_of(input)?;
    if !attributes.is_empty() {
        let mut config = ctx.broker().config(&queue).await?;
        apply(&mut config, &attributes, &queue)?;
        ctx.broker().set_config(&queue, config).await?;
    }
    Ok(one("QueueUrl", ctx.url(queue.as_str())))
}

fn one(name: &str, value: String) -> Map<String, Value> {
    let mut map = Map::new();
    map.insert(name.to_owned(), Value::String(value));
    map
}

/// `GetQueueUrl`.
pub async fn url(ctx: &Ctx, input: &Map<String, Value>) -> Result<Map<String, Value>, SqsError> {
    let queue = existing(input::required(input, "QueueName")?)?;
    ctx.require(Right::Consume, Some(&queue))?;
    Ok(one("QueueUrl", ctx.url(queue.as_str())))
}

/// `ListQueues`.
pub async fn list(ctx: &Ctx, input: &Map<String, Value>) -> Result<Map<String, Value>, SqsError> {
    ctx.require(Right::Admin, None)?;
    let prefix = input::text(input, "QueueNamePrefix")?.unwrap_or("");
    let max = input::integer(input, "MaxResults", 1..=1000)?.unwrap_or(1000);
    let max = usize::try_from(max).unwrap_or(1000);
    let urls: Vec<Value> = ctx
        .broker()
        .queues()
        .await?
        .into_iter()
        .filter(|(name, _)| name.starts_with(prefix) && sqs_name(name).is_ok())
        .take(max)
        .map(|(name, _)| Value::String(ctx.url(&name)))
        .collect();
    let mut out = Map::new();
    if !urls.is_empty() {
        out.insert("QueueUrls".into(), Value::Array(urls));
    }
    Ok(out)
}

/// `DeleteQueue`.
pub async fn delete(ctx: &Ctx, input: &Map<String, Value>) -> Result<Map<String, Value>, SqsError> {
    let queue = ctx.queue(input)?;
    ctx.require(Right::Admin, Some(&queue))?;
    ctx.broker().purge(&queue).await?;
    ctx.broker()
        .set_config(&queue, QueueConfig::default())
        .await?;
    Ok(Map::new())
}

/// `PurgeQueue`.
pub async fn purge(ctx: &Ctx, input: &Map<String, Value>) -> Result<Map<String, Value>, SqsError> {
    let queue = ctx.queue(input)?;
    ctx.require(Right::Admin, Some(&queue))?;
    ctx.broker().purge(&queue).await?;
    Ok(Map::new())
}

/// `SetQueueAttributes`.
pub async fn set_attributes(
    ctx: &Ctx,
    input: &Map<String, Value>,
) -> Result<Map<String, Value>, SqsError> {
    let queue = ctx.queue(input)?;
    ctx.require(Right::Admin, Some(&queue))?;
    let attributes = attributes_of(input)?;
    if attributes.is_empty() {
        return Err(SqsError::missing("Attributes"));
    }
    let mut config = ctx.broker().config(&queue).await?;
    apply(&mut config, &attributes, &queue)?;
    ctx.broker().set_config(&queue, config).await?;
    Ok(Map::new())
}

/// `GetQueueAttributes`.
pub async fn get_attributes(
    ctx: &Ctx,
    input: &Map<String, Value>,
) -> Result<Map<String, Value>, SqsError> {
    let queue = ctx.queue(input)?;
    ctx.require(Right::Consume, Some(&queue))?;
    let asked = input::strings(input, "AttributeNames")?;
    let mut wanted: Vec<&str> = Vec::new();
    for name in &asked {
        match name.as_str() {
            "All" => wanted.extend(READABLE),
            n if READABLE.contains(&n) => wanted.push(n),
            n if UNKNOWN_VALUES.contains(&n) => {}
            other => {
                return Err(SqsError::new(
                    Code::InvalidAttributeName,
                    format!("Unknown Attribute {other}."),
                ));
            }
        }
    }
    if wanted.is_empty() {
        return Ok(Map::new());
    }
    let config = ctx.broker().config(&queue).await?;
    let info = ctx.broker().queue(&queue).await?.unwrap_or_default();
    let mut attributes = Map::new();
    for name in wanted {
        let value = match name {
            "QueueArn" => arn(queue.as_str()),
            "ApproximateNumberOfMessages" => info.len.to_string(),
            "ApproximateNumberOfMessagesNotVisible" => info.inflight.to_string(),
            "ApproximateNumberOfMessagesDelayed" => info.delayed.to_string(),
            "VisibilityTimeout" => config.visibility.to_string(),
            "DelaySeconds" => config.delay.to_string(),
            "MaximumMessageSize" => MAXIMUM_MESSAGE_SIZE.to_string(),
            "MessageRetentionPeriod" => config.retention.to_string(),
            "ReceiveMessageWaitTimeSeconds" => "0".to_owned(),
            "SqsManagedSseEnabled" => "false".to_owned(),
            "RedrivePolicy" if config.max_receives > 0 => json!({
                "deadLetterTargetArn": arn(&config.dead_letter_of(queue.as_str())),
                "maxReceiveCount": config.max_receives,
            })
            .to_string(),
            _ => continue,
        };
        attributes.insert(name.to_owned(), Value::String(value));
    }
    let mut out = Map::new();
    if !attributes.is_empty() {
        out.insert("Attributes".into(), Value::Object(attributes));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(value: Value) -> Map<String, Value> {
        value.as_object().cloned().expect("an object")
    }

    #[test]
    fn attributes_map_onto_settings_all_or_nothing() {
        let queue = QueueName::parse("jobs").expect("a name");
        let mut config = QueueConfig::default();
        apply(
            &mut config,
            &attrs(json!({
                "VisibilityTimeout": "40",
                "DelaySeconds": "3",
                "MessageRetentionPeriod": "600",
                "RedrivePolicy": "{\"deadLetterTargetArn\":\"arn:aws:sqs:us-east-1:000000000000:dlq\",\"maxReceiveCount\":\"2\"}",
                "ReceiveMessageWaitTimeSeconds": "20",
            })),
            &queue,
        )
        .expect("applies");
        assert_eq!(config.visibility, 40);
        assert_eq!(config.delay, 3);
        assert_eq!(config.retention, 600);
        assert_eq!(config.max_receives, 2);
        assert_eq!(config.dead_letter.as_deref(), Some("dlq"));
        let before = config.clone();
        for (bad, code) in [
            (
                json!({"VisibilityTimeout": "1", "DelaySeconds": "901"}),
                Code::InvalidAttributeValue,
            ),
            (
                json!({"VisibilityTimeout": "-1"}),
                Code::InvalidAttributeValue,
            ),
            (json!({"QueueArn": "x"}), Code::InvalidAttributeName),
            (json!({"Nope": "x"}), Code::InvalidAttributeName),
            (json!({"FifoQueue": "true"}), Code::UnsupportedOperation),
            (
                json!({"RedrivePolicy": "{\"deadLetterTargetArn\":\"dlq\",\"maxReceiveCount\":1}"}),
                Code::InvalidAttributeValue,
            ),
            (
                json!({"RedrivePolicy": "{\"deadLetterTargetArn\":\"arn:aws:sqs:us-east-1:000000000000:jobs\",\"maxReceiveCount\":1}"}),
                Code::InvalidAttributeValue,
            ),
            (
                json!({"RedrivePolicy": "{\"deadLetterTargetArn\":\"arn:aws:sqs:us-east-1:000000000000:dlq\",\"maxReceiveCount\":0}"}),
                Code::InvalidAttributeValue,
            ),
            (
                json!({"RedrivePolicy": "not json"}),
                Code::InvalidAttributeValue,
            ),
        ] {
            let refused = apply(&mut config, &attrs(bad.clone()), &queue).expect_err("refused");
            assert_eq!(refused.code, code, "{bad}");
            assert_eq!(config, before, "{bad} changed nothing");
        }
        apply(&mut config, &attrs(json!({"RedrivePolicy": ""})), &queue).expect("clears");
        assert_eq!(config.max_receives, 0);
        assert_eq!(config.dead_letter, None);
    }
}
