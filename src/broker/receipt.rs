//! Receipts: what a consumer gets with a message received with a visibility
//! timeout, and gives back to acknowledge, release or extend that delivery.
//! Self-contained: a receipt names its queue, its message and the delivery, so
//! a later delivery of the same message makes it stale.

use std::fmt;

use super::QueueName;

/// One delivery of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The message's queue.
    pub queue: QueueName,
    /// The message's number.
    pub id: u64,
    /// Which delivery of it (from 1).
    pub delivery: u32,
}

impl Receipt {
    /// Reads a receipt as [`fmt::Display`] writes it; `None` for anything else.
    pub fn parse(text: &str) -> Option<Receipt> {
        let text = text.trim();
        let mut parts = text.split('.');
        let (tag, id, delivery, queue) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if tag != "r1" || parts.next().is_some() || queue.len() % 2 != 0 {
            return None;
        }
        let bytes = (0..queue.len())
            .step_by(2)
            .map(|at| u8::from_str_radix(queue.get(at..at + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        let queue = QueueName::parse(std::str::from_utf8(&bytes).ok()?).ok()?;
        let receipt = Receipt {
            queue,
            id: u64::from_str_radix(id, 16).ok().filter(|&id| id > 0)?,
            delivery: u32::from_str_radix(delivery, 16).ok().filter(|&d| d > 0)?,
        };
        // Only the spelling restmq gives: from_str_radix also takes a sign,
        // upper case and leading zeros, which would answer a 409 naming a
        // receipt the client never sent.
        (receipt.to_string() == text).then_some(receipt)
    }
}

/// `r1.<id hex>.<delivery hex>.<queue name hex>`: opaque to clients.
impl fmt::Display for Receipt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r1.{:x}.{:x}.", self.id, self.delivery)?;
        for byte in self.queue.as_str().bytes() {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_round_trip_and_refuse_anything_else() {
        let receipt = Receipt {
            queue: QueueName::parse("jobs/é:1").expect("a name"),
            id: 300,
            delivery: 2,
        };
        let text = receipt.to_string();
        assert!(text.starts_with("r1.12c.2."), "{text}");
        assert_eq!(Receipt::parse(&text), Some(receipt));
        for bad in [
            "",
            "r1",
            "r1.1.1",
            "r2.1.1.71",
            "r1.0.1.71",
            "r1.1.0.71",
            "r1.x.1.71",
            "r1.1.1.7",
            "r1.1.1.zz",
            "r1.1.1.71.0",
            "r1.1.1.",
            "r1.+1.1.71",
            "r1.01.1.71",
            "r1.1.+1.71",
            "r1.A.1.71",
            "r1.1.1.4A",
            "r1.1.1.+7",
        ] {
            assert_eq!(Receipt::parse(bad), None, "{bad}");
        }
    }
}
