//! The inputs through which a source feeds the pipeline.

use timely::container::CapacityContainerBuilder;
use timely::dataflow::{InputHandle, ProbeHandle, Scope, Stream};

use crate::dataflow::alert::AlertControl;
use crate::dataflow::ingest::IngestBatch;
use crate::dataflow::model::{ClockFault, DeadLetter, IngestCounts, TimeMs, TimedMessage};
use crate::dataflow::registry::RegistryChange;
use crate::dataflow::stamp::AtStamps;
use crate::dataflow::{
    EventStream, PipelineConfig, PipelineInputs, PipelineOutputs, RegistryUpdate, pipeline,
};

/// An input handle of vectors of `D`, at event time.
pub type VecInput<T, D> = InputHandle<T, CapacityContainerBuilder<Vec<D>>>;

/// A worker's handles for admitted messages, source dead letters and ingest counts.
pub struct SourceInputs {
    messages: VecInput<TimeMs, TimedMessage>,
    /// Each with its message's stamp, at which it is emitted (see [`crate::dataflow::stamp`]).
    dead_letters: VecInput<TimeMs, (TimeMs, DeadLetter)>,
    /// Likewise, each with its message's stamp.
    clock_faults: VecInput<TimeMs, (TimeMs, ClockFault)>,
    counts: VecInput<TimeMs, IngestCounts>,
}

/// The streams behind [`SourceInputs`].
pub struct SourceStreams<'scope> {
    /// Admitted messages.
    pub messages: Stream<'scope, TimeMs, Vec<TimedMessage>>,
    /// Messages the source rejected, at their messages' stamps.
    pub dead_letters: Stream<'scope, TimeMs, Vec<DeadLetter>>,
    /// Messages stamped far off the fleet time, at their stamps.
    pub clock_faults: Stream<'scope, TimeMs, Vec<ClockFault>>,
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
            clock_faults: InputHandle::new(),
            counts: InputHandle::new(),
        }
    }

    /// Creates the dataflow inputs in `scope`.
    pub fn to_streams<'scope>(&mut self, scope: Scope<'scope, TimeMs>) -> SourceStreams<'scope> {
        SourceStreams {
            messages: self.messages.to_stream(scope),
            dead_letters: self
                .dead_letters
                .to_stream(scope)
                .at_stamps("StampDeadLetters"),
            clock_faults: self
                .clock_faults
                .to_stream(scope)
                .at_stamps("StampClockFaults"),
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
        self.send_now(batch);
    }

    /// Sends a batch at the input's current time, which must not be after the batch's own:
    /// for a source of several partitions, whose batches of one round may come in any order
    /// and whose input follows the least of them.
    pub fn send_now(&mut self, batch: &mut IngestBatch) {
        debug_assert!(
            batch.time_ms >= self.time(),
            "a batch sent behind the input"
        );
        // Record by record: the input ships containers of its own size, whose memory is reused,
        // rather than one chunk-sized allocation per batch.
        for message in batch.messages.drain(..) {
            self.messages.send(message);
        }
        for dead in batch.dead_letters.drain(..) {
            self.dead_letters.send(dead);
        }
        for fault in batch.clock_faults.drain(..) {
            self.clock_faults.send(fault);
        }
        self.counts.send(batch.counts);
        batch.counts = IngestCounts::default();
    }

    /// Promises nothing more will be sent before `time_ms`.
    pub fn advance_to(&mut self, time_ms: TimeMs) {
        if time_ms > self.time() {
            self.messages.advance_to(time_ms);
            self.dead_letters.advance_to(time_ms);
            self.clock_faults.advance_to(time_ms);
            self.counts.advance_to(time_ms);
        }
    }

    /// Flushes buffered records to the dataflow.
    pub fn flush(&mut self) {
        self.messages.flush();
        self.dead_letters.flush();
        self.clock_faults.flush();
        self.counts.flush();
    }
}

/// A worker's inputs into the pipeline: its share of the messages, the registry changelog, and
/// the silences and acknowledgements.
pub struct PipelineSources {
    /// Admitted messages, dead letters and counts.
    pub source: SourceInputs,
    registry: Option<VecInput<TimeMs, RegistryUpdate>>,
    controls: Option<VecInput<TimeMs, AlertControl>>,
}

impl Default for PipelineSources {
    fn default() -> Self {
        Self::new()
    }
}

impl PipelineSources {
    /// Fresh inputs.
    pub fn new() -> Self {
        Self {
            source: SourceInputs::new(),
            registry: Some(VecInput::new()),
            controls: Some(VecInput::new()),
        }
    }

    /// Builds the pipeline over these inputs; returns its outputs and the ingest counts.
    pub fn build<'scope>(
        &mut self,
        scope: Scope<'scope, TimeMs>,
        config: &PipelineConfig,
    ) -> (PipelineOutputs<'scope>, EventStream<'scope, IngestCounts>) {
        let streams = self.source.to_streams(scope);
        let registry = self
            .registry
            .as_mut()
            .expect("the pipeline is built before the registry is closed")
            .to_stream(scope);
        let alert_controls = self
            .controls
            .as_mut()
            .expect("the pipeline is built before the controls are closed")
            .to_stream(scope);
        let inputs = PipelineInputs {
            messages: streams.messages,
            dead_letters: streams.dead_letters,
            clock_faults: streams.clock_faults,
            registry,
            alert_controls,
        };
        (pipeline(inputs, config), streams.counts)
    }

    /// The registry input, for a source that follows a live changelog (`None` once closed).
    pub fn registry_input(&mut self) -> Option<&mut VecInput<TimeMs, RegistryUpdate>> {
        self.registry.as_mut()
    }

    /// Closes the registry input: a worker that does not feed it must, or the registry never
    /// becomes complete for any time.
    pub fn close_registry(&mut self) {
        self.registry = None;
    }

    /// Sends a registry changelog known up front and closes the registry input, so the
    /// arrangement is complete for every time. Every worker calls it; one passes the changes.
    pub fn load_registry_and_close(&mut self, changes: &[RegistryChange]) {
        if let Some(mut input) = self.registry.take() {
            let mut lines = crate::dataflow::metadata::LineEntities::default();
            for update in changes.iter().flat_map(|change| lines.updates(change)) {
                input.send(update);
            }
        }
    }

    /// The input of silences and acknowledgements, for a source that follows them live
    /// (`None` once closed).
    pub fn controls_input(&mut self) -> Option<&mut VecInput<TimeMs, AlertControl>> {
        self.controls.as_mut()
    }

    /// Takes the input of silences and acknowledgements out, for a source that feeds it live
    /// while the messages' input is used apart (`None` once closed or taken).
    pub fn take_controls_input(&mut self) -> Option<VecInput<TimeMs, AlertControl>> {
        self.controls.take()
    }

    /// Sends silences and acknowledgements known up front and closes their input, so alert
    /// notifications are complete for every time. Every worker calls it; one passes them.
    pub fn load_controls_and_close(&mut self, controls: &[AlertControl]) {
        if let Some(mut input) = self.controls.take() {
            for control in controls {
                input.send(control.clone());
            }
        }
    }
}

/// Sends what a follower forwarded into `input` at the input's time, and seals that time at
/// once, so the dataflow sees it without waiting for the watermark to move (registry changes
/// and silences hold from their own effective times, carried as data); then, once the
/// follower has loaded what the store held at start, advances the input to the least partition
/// watermark plus `lead_ms`. The registry leads by the allowed lateness and clock skew (the
/// furthest a message's own time can be ahead of its stamp), so no message can still need an
/// earlier entry; silences and acknowledgements lead by nothing, so the notification policy
/// sees them at its next tick. The time sent at, if anything was.
pub fn feed_live<D: Clone + 'static>(
    arrived: impl Iterator<Item = D>,
    input: &mut VecInput<TimeMs, D>,
    loaded: bool,
    source_probe: &ProbeHandle<TimeMs>,
    lead_ms: TimeMs,
) -> Option<TimeMs> {
    let sent_at = *input.time();
    let mut sent = false;
    for entry in arrived {
        input.send(entry);
        sent = true;
    }
    let mut target = if sent { sent_at + 1 } else { sent_at };
    if loaded && let Some(frontier) = source_probe.with_frontier(|f| f.first().copied()) {
        target = target.max(frontier.saturating_add(lead_ms));
    }
    if target > sent_at {
        input.advance_to(target);
    }
    input.flush();
    sent.then_some(sent_at)
}
