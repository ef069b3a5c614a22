//! SQS errors: each with the code, HTTP status and fault that Amazon SQS
//! answers, in the JSON protocol's and the query protocol's shapes.

use axum::http::StatusCode;

use crate::error::Error;
use crate::store::StoreError;

/// The error codes the SQS door answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// The queue URL or name names no queue that can exist.
    QueueDoesNotExist,
    /// A parameter's value is unusable.
    InvalidParameterValue,
    /// A required parameter is absent.
    MissingParameter,
    /// The action is not one of SQS's.
    InvalidAction,
    /// A queue attribute name that is not one of SQS's.
    InvalidAttributeName,
    /// A queue attribute value that is out of range or malformed.
    InvalidAttributeValue,
    /// A message body with characters SQS does not allow.
    InvalidMessageContents,
    /// A receipt handle restmq did not give, or of another queue.
    ReceiptHandleIsInvalid,
    /// The delivery a receipt handle names is over.
    MessageNotInflight,
    /// Two entries of a batch share an id.
    BatchEntryIdsNotDistinct,
    /// A batch without entries.
    EmptyBatchRequest,
    /// A batch of more than 10 entries.
    TooManyEntriesInBatchRequest,
    /// A batch entry id with characters SQS does not allow.
    InvalidBatchEntryId,
    /// What restmq does not do (FIFO queues, permissions, tags, move tasks).
    UnsupportedOperation,
    /// A JSON protocol body that is not a JSON object.
    SerializationException,
    /// An access key that is not configured.
    InvalidClientTokenId,
    /// A signature that does not verify, or has expired.
    SignatureDoesNotMatch,
    /// An `Authorization` header that is not a whole SigV4 signature.
    IncompleteSignature,
    /// No signature where access keys are configured.
    MissingAuthenticationToken,
    /// The client's address, or its key's rights, do not allow this.
    AccessDenied,
    /// The queue is full (its `max_len`).
    OverLimit,
    /// The request body is over the server's limit.
    RequestEntityTooLarge,
    /// The request body did not arrive in time.
    RequestTimeout,
    /// restmq failed.
    InternalFailure,
    /// The store cannot be reached, or the server is shutting down.
    ServiceUnavailable,
}

impl Code {
    /// The name in the JSON protocol's `__type`.
    pub fn name(self) -> &'static str {
        match self {
            Code::QueueDoesNotExist => "QueueDoesNotExist",
            Code::InvalidParameterValue => "InvalidParameterValue",
            Code::MissingParameter => "MissingParameter",
            Code::InvalidAction => "InvalidAction",
            Code::InvalidAttributeName => "InvalidAttributeName",
            Code::InvalidAttributeValue => "InvalidAttributeValue",
            Code::InvalidMessageContents => "InvalidMessageContents",
            Code::ReceiptHandleIsInvalid => "ReceiptHandleIsInvalid",
            Code::MessageNotInflight => "MessageNotInflight",
            Code::BatchEntryIdsNotDistinct => "BatchEntryIdsNotDistinct",
            Code::EmptyBatchRequest => "EmptyBatchRequest",
            Code::TooManyEntriesInBatchRequest => "TooManyEntriesInBatchRequest",
            Code::InvalidBatchEntryId => "InvalidBatchEntryId",
            Code::UnsupportedOperation => "UnsupportedOperation",
            Code::SerializationException => "SerializationException",
            Code::InvalidClientTokenId => "InvalidClientTokenId",
            Code::SignatureDoesNotMatch => "SignatureDoesNotMatch",
            Code::IncompleteSignature => "IncompleteSignature",
            Code::MissingAuthenticationToken => "MissingAuthenticationToken",
            Code::AccessDenied => "AccessDenied",
            Code::OverLimit => "OverLimit",
            Code::RequestEntityTooLarge => "RequestEntityTooLarge",
            Code::RequestTimeout => "RequestTimeout",
            Code::InternalFailure => "InternalFailure",
            Code::ServiceUnavailable => "ServiceUnavailable",
        }
    }

    /// The code of the query protocol (and of the JSON protocol's
    /// `x-amzn-query-error` header, which SDKs map back to it).
    pub fn query_code(self) -> &'static str {
        match self {
            Code::QueueDoesNotExist => "AWS.SimpleQueueService.NonExistentQueue",
            Code::MessageNotInflight => "AWS.SimpleQueueService.MessageNotInflight",
            Code::BatchEntryIdsNotDistinct => "AWS.SimpleQueueService.BatchEntryIdsNotDistinct",
            Code::EmptyBatchRequest => "AWS.SimpleQueueService.EmptyBatchRequest",
            Code::TooManyEntriesInBatchRequest => {
                "AWS.SimpleQueueService.TooManyEntriesInBatchRequest"
            }
            Code::InvalidBatchEntryId => "AWS.SimpleQueueService.InvalidBatchEntryId",
            Code::UnsupportedOperation => "AWS.SimpleQueueService.UnsupportedOperation",
            Code::SerializationException => "MalformedQueryString",
            Code::InvalidParameterValue
            | Code::MissingParameter
            | Code::InvalidAction
            | Code::InvalidAttributeName
            | Code::InvalidAttributeValue
            | Code::InvalidMessageContents
            | Code::ReceiptHandleIsInvalid
            | Code::InvalidClientTokenId
            | Code::SignatureDoesNotMatch
            | Code::IncompleteSignature
            | Code::MissingAuthenticationToken
            | Code::AccessDenied
            | Code::OverLimit
            | Code::RequestEntityTooLarge
            | Code::RequestTimeout
            | Code::InternalFailure
            | Code::ServiceUnavailable => self.name(),
        }
    }

    /// The HTTP status.
    pub fn status(self) -> StatusCode {
        match self {
            Code::InvalidClientTokenId
            | Code::SignatureDoesNotMatch
            | Code::MissingAuthenticationToken
            | Code::AccessDenied
            | Code::OverLimit => StatusCode::FORBIDDEN,
            Code::RequestEntityTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Code::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Code::InternalFailure => StatusCode::INTERNAL_SERVER_ERROR,
            Code::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::QueueDoesNotExist
            | Code::InvalidParameterValue
            | Code::MissingParameter
            | Code::InvalidAction
            | Code::InvalidAttributeName
            | Code::InvalidAttributeValue
            | Code::InvalidMessageContents
            | Code::ReceiptHandleIsInvalid
            | Code::MessageNotInflight
            | Code::BatchEntryIdsNotDistinct
            | Code::EmptyBatchRequest
            | Code::TooManyEntriesInBatchRequest
            | Code::InvalidBatchEntryId
            | Code::UnsupportedOperation
            | Code::SerializationException
            | Code::IncompleteSignature => StatusCode::BAD_REQUEST,
        }
    }

    /// Whether the client is at fault (`Sender`) or restmq (`Receiver`).
    pub fn sender_fault(self) -> bool {
        !self.status().is_server_error()
    }
}

/// An error as the SQS door answers it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.name())]
pub struct SqsError {
    /// What went wrong, as SQS names it.
    pub code: Code,
    /// A sentence for people.
    pub message: String,
}

impl SqsError {
    /// An error with its message.
    pub fn new(code: Code, message: impl Into<String>) -> SqsError {
        SqsError {
            code,
            message: message.into(),
        }
    }

    /// `InvalidParameterValue`.
    pub fn invalid(message: impl Into<String>) -> SqsError {
        SqsError::new(Code::InvalidParameterValue, message)
    }

    /// `MissingParameter` for `name`.
    pub fn missing(name: &str) -> SqsError {
        SqsError::new(
            Code::MissingParameter,
            format!("The request must contain the parameter {name}."),
        )
    }
}

/// How the broker's errors are answered at the SQS door.
impl From<Error> for SqsError {
    fn from(error: Error) -> SqsError {
        let message = error.to_string();
        let code = match &error {
            Error::InvalidQueueName(_) => Code::QueueDoesNotExist,
            Error::MissingParameter(_) => Code::MissingParameter,
            Error::InvalidParameter { .. } | Error::InvalidCallback => Code::InvalidParameterValue,
            Error::MalformedJson(_) => Code::SerializationException,
            Error::BodyTooLarge { .. } | Error::HeadTooLarge { .. } => Code::RequestEntityTooLarge,
            Error::BadBody(_)
            | Error::InvalidBody(_)
            | Error::UnsupportedMediaType(_)
            | Error::TlsRequired => Code::InvalidParameterValue,
            Error::BodyTimeout { .. } => Code::RequestTimeout,
            Error::EmptyQueue | Error::NotFound => Code::QueueDoesNotExist,
            Error::StaleReceipts(_) => Code::MessageNotInflight,
            Error::UpgradeRequired | Error::MethodNotAllowed => Code::InvalidAction,
            Error::ShuttingDown
            | Error::TooManyConnections { .. }
            | Error::TooManyConsumers { .. }
            | Error::TooManyQueueConsumers { .. } => Code::ServiceUnavailable,
            Error::Unauthorized { .. } | Error::Forbidden(_) => Code::AccessDenied,
            Error::Store(StoreError::Unavailable(_) | StoreError::Closed) => {
                Code::ServiceUnavailable
            }
            Error::Store(StoreError::Corrupted(_)) => Code::InternalFailure,
            Error::Store(StoreError::Full(_)) => Code::OverLimit,
        };
        if code.status().is_server_error() {
            tracing::error!(%error, "SQS request failed");
        }
        SqsError { code, message }
    }
}
