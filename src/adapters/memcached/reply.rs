//! How failures are answered in the memcached protocol.

use crate::error::Error;
use crate::store::StoreError;

/// The reply line (without `\r\n`) to a failed broker call: `CLIENT_ERROR` for
/// what the client can change, `SERVER_ERROR` for what it cannot.
pub fn failure(error: &Error) -> String {
    let client = match error {
        Error::InvalidQueueName(_)
        | Error::MissingParameter(_)
        | Error::InvalidParameter { .. }
        | Error::InvalidCallback
        | Error::MalformedJson(_)
        | Error::BodyTooLarge { .. }
        | Error::HeadTooLarge { .. }
        | Error::BadBody(_)
        | Error::InvalidBody(_)
        | Error::UnsupportedMediaType(_)
        | Error::BodyTimeout { .. }
        | Error::TlsRequired
        | Error::EmptyQueue
        | Error::StaleReceipts(_)
        | Error::UpgradeRequired
        | Error::NotFound
        | Error::MethodNotAllowed
        | Error::Unauthorized { .. }
        | Error::Forbidden(_) => true,
        Error::ShuttingDown
        | Error::TooManyConnections { .. }
        | Error::TooManyConsumers { .. }
        | Error::TooManyQueueConsumers { .. }
        | Error::Store(
            StoreError::Unavailable(_)
            | StoreError::Closed
            | StoreError::Corrupted(_)
            | StoreError::Full(_),
        ) => false,
    };
    if !client {
        tracing::warn!(%error, "a memcached command failed");
    }
    let kind = if client {
        "CLIENT_ERROR"
    } else {
        "SERVER_ERROR"
    };
    format!("{kind} {}", one_line(&error.to_string()))
}

/// `text` with its control characters (a line break would end the reply
/// early) made spaces.
pub fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_by_whose_fault() {
        assert_eq!(
            failure(&Error::Store(StoreError::Closed)),
            "SERVER_ERROR storage is shutting down"
        );
        assert_eq!(
            failure(&Error::Store(StoreError::Full(3))),
            "SERVER_ERROR the queue is full (3 messages)"
        );
        assert_eq!(
            failure(&Error::InvalidQueueName("it is empty")),
            "CLIENT_ERROR invalid queue name: it is empty"
        );
        assert_eq!(
            failure(&Error::Store(StoreError::Unavailable("a\r\nb".into()))),
            "SERVER_ERROR storage unavailable: a  b"
        );
    }
}
