//! Dead letters: records a pipeline could not process, kept with the reason.
//!
//! A record that fails to parse or that a `try_map` stage rejects becomes a
//! [`DeadLetter`]. If the pipeline has a dead-letter sink (any
//! `Sink<Item = DeadLetter>`), the letter goes there and the run continues;
//! otherwise the run fails with [`Error::Record`](crate::Error::Record). A record
//! is never dropped silently.

use serde::{Deserialize, Serialize};

use crate::error::{Location, RecordError, RecordErrorKind};

/// A rejected record with its typed error, its content and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DeadLetter {
    /// Why it was rejected, by which stage, and where it came from.
    pub error: RecordError,
    /// The record as JSON, when it was decoded (a `try_map` input).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub record: Option<serde_json::Value>,
    /// The raw text, when it could not be decoded (a malformed line).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub raw: Option<String>,
    /// The source position after the batch that carried the record, as JSON.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub position: Option<serde_json::Value>,
    /// How many times the record was tried.
    pub attempts: u32,
}

impl DeadLetter {
    /// A letter for raw input that could not be decoded.
    pub fn unparsed(error: RecordError, raw: impl Into<String>) -> Self {
        DeadLetter {
            error,
            record: None,
            raw: Some(raw.into()),
            position: None,
            attempts: 1,
        }
    }

    /// A letter for a decoded record that a stage rejected.
    pub fn rejected(error: RecordError, record: Option<serde_json::Value>) -> Self {
        DeadLetter {
            error,
            record,
            raw: None,
            position: None,
            attempts: 1,
        }
    }

    /// A letter for `record` rejected by transform stage `stage` with `message`.
    pub fn from_transform<T: Serialize>(
        stage: &str,
        message: impl std::fmt::Display,
        record: &T,
    ) -> Self {
        let record = serde_json::to_value(record).ok();
        DeadLetter::rejected(
            RecordError::new(
                RecordErrorKind::Transform,
                stage,
                message,
                Location::default(),
            ),
            record,
        )
    }

    /// The kind of failure.
    pub fn kind(&self) -> RecordErrorKind {
        self.error.kind
    }
}
