//! The inputs through which a source feeds the pipeline.

use timely::container::CapacityContainerBuilder;
use timely::dataflow::{InputHandle, Scope, Stream};

use crate::dataflow::ingest::IngestBatch;
use crate::dataflow::model::{DeadLetter, IngestCounts, TimeMs, TimedMessage};

/// An input handle of vectors of `D`, at event time.
pub type VecInput<T, D> = InputHandle<T, CapacityContainerBuilder<Vec<D>>>;

/// A worker's handles for admitted messages, source dead letters and ingest counts.
pub struct SourceInputs {
    messages: VecInput<TimeMs, TimedMessage>,
    dead_letters: VecInput<TimeMs, DeadLetter>,
    counts: VecInput<TimeMs, IngestCounts>,
}

/// The streams behind [`SourceInputs`].
pub struct SourceStreams<'scope> {
    /// Admitted messages.
    pub messages: Stream<'scope, TimeMs, Vec<TimedMessage>>,
    /// Messages the source rejected.
    pub dead_letters: Stream<'scope, TimeMs, Vec<DeadLetter>>,
    /// Per-batch ingest counts.
    pub counts: Stream<'scope, TimeMs, Vec<IngestCounts>>,
}

impl Default for SourceInputs {
    fn default() -> Self {
        Self::new()
    }
}

impl SourceInputs {
    /// Fresh handles, at time 0.
    pub fn new() -> Self {
        Self {
            messages: InputHandle::new(),
            dead_letters: InputHandle::new(),
            counts: InputHandle::new(),
        }
    }

    /// Creates the dataflow inputs in `scope`.
    pub fn to_streams<'scope>(&mut self, scope: Scope<'scope, TimeMs>) -> SourceStreams<'scope> {
        SourceStreams {
            messages: self.messages.to_stream(scope),
            dead_letters: self.dead_letters.to_stream(scope),
            counts: self.counts.to_stream(scope),
        }
    }

    /// The time the next batch may carry, at the earliest.
    pub fn time(&self) -> TimeMs {
        *self.messages.time()
    }

    /// Sends a batch at its time (which must not be before [`time`](Self::time)).
    pub fn send(&mut self, batch: &mut IngestBatch) {
        self.advance_to(batch.time_ms);
        // Record by record: the input ships containers of its own size, whose memory is reused,
        // rather than one chunk-sized allocation per batch.
        for message in batch.messages.drain(..) {
            self.messages.send(message);
        }
        for dead in batch.dead_letters.drain(..) {
            self.dead_letters.send(dead);
        }
        self.counts.send(batch.counts);
        batch.counts = IngestCounts::default();
    }

    /// Promises nothing more will be sent before `time_ms`.
    pub fn advance_to(&mut self, time_ms: TimeMs) {
        if time_ms > self.time() {
            self.messages.advance_to(time_ms);
            self.dead_letters.advance_to(time_ms);
            self.counts.advance_to(time_ms);
        }
    }

    /// Flushes buffered records to the dataflow.
    pub fn flush(&mut self) {
        self.messages.flush();
        self.dead_letters.flush();
        self.counts.flush();
    }
}
