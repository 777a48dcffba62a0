//! One failure policy for every sink and for the bridge.
//!
//! Whatever a service answers when iotpipe hands it a record, the answer is one of three
//! [`FailureClass`]es, decided here and nowhere else:
//!
//! - **Transient** (a connection refused or lost, a timeout, HTTP 5xx, 408 or 429, a Kafka broker
//!   or leader not available): retry with backoff, without limit, and hold the record back, so
//!   that the sink's capability holds the written frontier and the source pauses
//!   (backpressure). Nothing is lost; a restart resumes from before it.
//! - **Record** (the record itself is refused: too large, a value the server cannot hold; HTTP
//!   400, 413 or 422; Kafka `MessageSizeTooLarge`, `InvalidRecord`): that record becomes a
//!   `sink_rejected` dead letter with the server's reason and the sink moves on. Retrying would
//!   meet the same refusal forever and stall the pipeline behind it.
//! - **Sink** (the sink cannot work at all: authentication or authorisation refused, an unknown
//!   topic, database or path; HTTP 401, 403, 404, 405): after [`SINK_FAILURE_TRIES`] answers in a
//!   row, the service stops with one error naming the config field, having flushed what it could.
//!   What was not written is not checkpointed, so a restart with the field fixed resumes it.
//!
//! Each outcome is counted (`iotpipe_sink_failures_total{sink, class}`) and logged with
//! structured fields by the adapter that met it.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// How many answers in a row that say the sink cannot work end the service. Several, because
/// a topic or database being created, or a credential being rotated, answers so for a moment.
pub const SINK_FAILURE_TRIES: u32 = 5;

/// What a failure means for the record and the sink (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureClass {
    /// Retry with backoff, hold back, lose nothing.
    Transient,
    /// This record is refused for good: a dead letter, and move on.
    Record,
    /// The sink cannot work: stop with an error naming the config field.
    Sink,
}

impl FailureClass {
    /// The class's label in metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Self::Transient => "transient",
            Self::Record => "record",
            Self::Sink => "sink",
        }
    }

    /// The class of an HTTP answer that is not a success.
    pub fn of_http_status(status: u16) -> Self {
        match status {
            400 | 413 | 422 => Self::Record,
            401 | 403 | 404 | 405 => Self::Sink,
            _ => Self::Transient,
        }
    }

    /// The class of a Kafka error code, from a produce call or a delivery report.
    pub fn of_kafka_code(code: RDKafkaErrorCode) -> Self {
        use RDKafkaErrorCode as C;
        match code {
            C::MessageSizeTooLarge
            | C::InvalidMessageSize
            | C::MessageBatchTooLarge
            | C::InvalidRecord
            | C::InvalidTimestamp
            | C::PolicyViolation
            | C::InvalidArgument => Self::Record,
            C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::Authentication
            | C::SaslAuthenticationFailed
            | C::UnknownTopic
            | C::UnknownTopicOrPartition
            | C::InvalidTopic
            | C::Fatal => Self::Sink,
            _ => Self::Transient,
        }
    }

    /// The class of a Kafka error (errors without a code are transient: a client that
    /// cannot tell is retried, never dropped).
    pub fn of_kafka(error: &KafkaError) -> Self {
        error
            .rdkafka_error_code()
            .map_or(Self::Transient, Self::of_kafka_code)
    }
}

/// Counts answers that say a sink cannot work, in a row; any success starts again.
#[derive(Clone, Copy, Debug, Default)]
pub struct SinkStrikes(u32);

impl SinkStrikes {
    /// Notes an answer of `class` (`None`: a success); returns whether the sink is now to be
    /// given up.
    pub fn note(&mut self, class: Option<FailureClass>) -> bool {
        match class {
            Some(FailureClass::Sink) => self.0 += 1,
            Some(FailureClass::Transient) => {}
            Some(FailureClass::Record) | None => self.0 = 0,
        }
        self.0 >= SINK_FAILURE_TRIES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_answers_fall_in_one_class_each() {
        assert_eq!(FailureClass::of_http_status(413), FailureClass::Record);
        assert_eq!(FailureClass::of_http_status(400), FailureClass::Record);
        assert_eq!(FailureClass::of_http_status(401), FailureClass::Sink);
        assert_eq!(FailureClass::of_http_status(404), FailureClass::Sink);
        for status in [408, 429, 500, 502, 503, 504] {
            assert_eq!(
                FailureClass::of_http_status(status),
                FailureClass::Transient
            );
        }
    }

    #[test]
    fn kafka_codes_fall_in_one_class_each() {
        use RDKafkaErrorCode as C;
        assert_eq!(
            FailureClass::of_kafka_code(C::MessageSizeTooLarge),
            FailureClass::Record
        );
        assert_eq!(
            FailureClass::of_kafka_code(C::TopicAuthorizationFailed),
            FailureClass::Sink
        );
        for code in [
            C::QueueFull,
            C::AllBrokersDown,
            C::LeaderNotAvailable,
            C::NotEnoughReplicas,
            C::RequestTimedOut,
            C::MessageTimedOut,
        ] {
            assert_eq!(FailureClass::of_kafka_code(code), FailureClass::Transient);
        }
        let produce = KafkaError::MessageProduction(C::MessageSizeTooLarge);
        assert_eq!(FailureClass::of_kafka(&produce), FailureClass::Record);
        assert_eq!(
            FailureClass::of_kafka(&KafkaError::Canceled),
            FailureClass::Transient
        );
    }

    #[test]
    fn a_sink_is_given_up_after_answers_in_a_row() {
        let mut strikes = SinkStrikes::default();
        for _ in 1..SINK_FAILURE_TRIES {
            assert!(!strikes.note(Some(FailureClass::Sink)));
        }
        // A transient failure neither counts nor clears; a success clears.
        assert!(!strikes.note(Some(FailureClass::Transient)));
        assert!(!strikes.note(None));
        for _ in 1..SINK_FAILURE_TRIES {
            assert!(!strikes.note(Some(FailureClass::Sink)));
        }
        assert!(strikes.note(Some(FailureClass::Sink)));
    }
}
