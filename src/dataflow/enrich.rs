//! Enrichment: each message looks up its device in the arranged registry, as of its own time.
//!
//! The registry is a differential arrangement of each device's entry, resolved from the metadata
//! (see [`crate::dataflow::metadata`]), so a change at event time `t` holds for messages from `t`
//! on. Messages are a
//! stream, not a collection: they are looked up in the arrangement's trace and never arranged
//! themselves (the half-join pattern of differential's `dogsdogsdogs`), so state stays bounded by
//! devices, not messages.

use differential_dataflow::Hashable;
use differential_dataflow::operators::arrange::{Arranged, TraceAgent};
use differential_dataflow::trace::implementations::ValSpine;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use crate::dataflow::EventStream;
use crate::dataflow::metadata::Version;
use crate::dataflow::metadata::lookup::{History, RegistryLookup, in_force};
use crate::dataflow::model::{
    DeadLetter, DeadLetterReason, DeviceId, EnrichedMessage, SharedDeviceInfo, TimeMs, TimedMessage,
};
use crate::dataflow::stamp::AtStamps;
use crate::dataflow::window::WindowConfig;

/// The trace behind the arranged registry.
pub type RegistryTrace = TraceAgent<ValSpine<DeviceId, Version<SharedDeviceInfo>, TimeMs, isize>>;

/// The registry, arranged by device id (see
/// [`ResolveRegistry`](crate::dataflow::metadata::ResolveRegistry)).
pub type RegistryArrangement<'scope> = Arranged<'scope, RegistryTrace>;

/// Enriched messages and dead letters for unregistered devices.
pub type EnrichedAndUnknown<'scope> = (
    EventStream<'scope, EnrichedMessage>,
    EventStream<'scope, DeadLetter>,
);

/// Joins messages with the registry.
pub trait Enrich<'scope> {
    /// Looks each message's device up in `registry` as of the message's time, once the registry
    /// is complete through that time. Returns the enriched messages, partitioned by device, and
    /// dead letters (`unknown_device`) for messages whose device is not registered then.
    ///
    /// Messages must carry on-time readings only: their times are then at most one window behind
    /// the frontier, which is how far back the registry trace is kept readable.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    ///
    /// use iotpipe::dataflow::model::{DeviceInfo, MetricId, Reading, TimedMessage};
    /// use iotpipe::dataflow::registry::RegistryChange;
    /// use iotpipe::dataflow::{Enrich, RegistryUpdate, ResolveRegistry, WindowConfig};
    /// use timely::dataflow::operators::capture::Extract;
    /// use timely::dataflow::operators::vec::Map;
    /// use timely::dataflow::operators::{Capture, Input};
    ///
    /// // dev-1 is at site a from the start and moves to site b at 120 s; dev-9 is never
    /// // registered. Each message is enriched with the entry in force at its time.
    /// let at = |site: &str, effective_ms| RegistryChange {
    ///     device_id: "dev-1".into(),
    ///     effective_ms,
    ///     info: Some(Arc::new(DeviceInfo { site: site.into(), ..DeviceInfo::default() })),
    /// };
    /// let message = |device: &str, ts_ms| TimedMessage {
    ///     device_id: device.into(),
    ///     ts_ms,
    ///     watermark_ms: ts_ms - 30_000,
    ///     watermark_ceiling_ms: u64::MAX,
    ///     readings: smallvec::smallvec![Reading { metric: MetricId(0), ts_ms, value: 1.0 }],
    /// };
    /// let (enriched, unknown) = timely::example(move |scope| {
    ///     let (mut registry, changes) = scope.new_input::<Vec<RegistryUpdate>>();
    ///     let (mut messages, stream) = scope.new_input::<Vec<TimedMessage>>();
    ///     let (enriched, unknown) =
    ///         stream.enrich(&changes.resolve_registry(), WindowConfig::default());
    ///     let enriched = enriched.map(|m| (m.device.site.clone(), m.readings[0].ts_ms));
    ///     let unknown = unknown.map(|d| d.reason.code());
    ///     for update in [at("a", 0), at("b", 120_000)].iter().flat_map(RegistryChange::to_updates) {
    ///         registry.send(update);
    ///     }
    ///     messages.send(message("dev-1", 60_000));
    ///     messages.send(message("dev-1", 180_000));
    ///     messages.send(message("dev-9", 60_000));
    ///     (enriched.capture(), unknown.capture())
    /// });
    /// let mut enriched: Vec<_> = enriched.extract().into_iter().flat_map(|(_, m)| m).collect();
    /// enriched.sort();
    /// assert_eq!(enriched, vec![("a".into(), 60_000), ("b".into(), 180_000)]);
    /// let unknown: Vec<_> = unknown.extract().into_iter().flat_map(|(_, d)| d).collect();
    /// assert_eq!(unknown, vec!["unknown_device"]);
    /// ```
    fn enrich(
        self,
        registry: &RegistryArrangement<'scope>,
        window: WindowConfig,
    ) -> EnrichedAndUnknown<'scope>;
}

impl<'scope> Enrich<'scope> for EventStream<'scope, TimedMessage> {
    fn enrich(
        self,
        registry: &RegistryArrangement<'scope>,
        window: WindowConfig,
    ) -> EnrichedAndUnknown<'scope> {
        let trace = registry.trace.clone();
        let mut builder = OperatorBuilder::new("Enrich".to_owned(), self.scope());
        // The arrangement is partitioned by the same hash, so each lookup is local.
        let mut messages_in =
            builder.new_input(self, Exchange::new(|m: &TimedMessage| m.device_id.hashed()));
        let mut registry_in = builder.new_input(registry.stream.clone(), Pipeline);
        // Two outputs rather than one of `Result`s split afterwards: every message would be
        // moved once more, and enrichment sees every message.
        let (enriched_out, enriched) = builder.new_output();
        let (unknown_out, unknown) = builder.new_output();
        let mut enriched_out: OutputBuilder<_, CapacityContainerBuilder<Vec<EnrichedMessage>>> =
            OutputBuilder::from(enriched_out);
        // Unknown devices' dead letters carry their message's stamp (see `stamp`).
        let mut unknown_out: OutputBuilder<_, CapacityContainerBuilder<Vec<(TimeMs, DeadLetter)>>> =
            OutputBuilder::from(unknown_out);
        builder.build(move |_caps| {
            // Messages waiting for the registry, with capabilities for both outputs.
            let mut stash: Vec<(Capability<TimeMs>, Capability<TimeMs>, Vec<TimedMessage>)> =
                Vec::new();
            let mut lookup = RegistryLookup::new(trace);
            move |frontiers| {
                let mut enriched_out = enriched_out.activate();
                let mut unknown_out = unknown_out.activate();
                messages_in.for_each(|cap, data| {
                    if let Some(&time) = cap.least() {
                        let caps = (cap.delayed(&time, 0), cap.delayed(&time, 1));
                        stash.push((caps.0, caps.1, std::mem::take(data)));
                    }
                });
                // A registry batch makes the cached histories of its devices stale.
                registry_in.for_each(|_, spans| {
                    for batch in spans.iter().filter_map(|span| span.inner.as_ref()) {
                        lookup.forget_changed(batch, |_, _| {});
                    }
                });

                // A message is answered once every registry batch with updates at or before
                // its time has reached this operator: the batch stream's frontier, not the
                // trace's upper, which can run ahead of the batches (and of the invalidations
                // above) that this operator has seen.
                let registry_frontier = frontiers[1].frontier();
                let is_ready = |m: &TimedMessage| !registry_frontier.less_equal(&m.ts_ms);
                for (enriched_cap, unknown_cap, messages) in stash.iter_mut() {
                    // Usually the registry is ahead of every message: take the batch whole
                    // rather than copying it into a new vector.
                    let ready = if messages.iter().all(is_ready) {
                        std::mem::take(messages)
                    } else if messages.iter().any(is_ready) {
                        let (ready, waiting): (Vec<_>, Vec<_>) =
                            std::mem::take(messages).into_iter().partition(is_ready);
                        *messages = waiting;
                        ready
                    } else {
                        continue;
                    };
                    let mut enriched = enriched_out.session(enriched_cap);
                    let mut unknown = unknown_out.session(unknown_cap);
                    let mut answer = |message: TimedMessage, history: Option<&History>| {
                        let found = history.and_then(|history| {
                            let at = in_force(history, message.ts_ms)?;
                            history[at].1.clone()
                        });
                        match found {
                            Some(device) => enriched.give(EnrichedMessage {
                                device_id: message.device_id,
                                device,
                                ts_ms: message.ts_ms,
                                stamp_ms: message.watermark_ms,
                                readings: message.readings,
                            }),
                            None => unknown.give((message.watermark_ms, unknown_device(&message))),
                        }
                    };
                    // One probe of the cache per message; the few whose device it does not
                    // hold yet are loaded together (one pass over the trace) and answered last.
                    let mut missing = Vec::new();
                    for message in ready {
                        match lookup.history(&message.device_id) {
                            Some(history) => answer(message, Some(history)),
                            None => missing.push(message),
                        }
                    }
                    if !missing.is_empty() {
                        lookup.load(missing.iter().map(|m| &m.device_id));
                        for message in missing {
                            let history = lookup.history(&message.device_id);
                            answer(message, history);
                        }
                    }
                }
                stash.retain(|(_, _, messages)| !messages.is_empty());

                // Keep the registry readable as far back as any message may still look.
                let oldest = frontiers[0]
                    .frontier()
                    .iter()
                    .chain(stash.iter().map(|(cap, _, _)| cap.time()))
                    .min()
                    .copied();
                lookup.compact_to(oldest.map(|t| t.saturating_sub(window.length_ms)));
            }
        });
        (enriched, unknown.at_stamps("StampUnknownDevices"))
    }
}

/// The dead letter for a message whose device the arrangement does not hold at its time.
fn unknown_device(message: &TimedMessage) -> DeadLetter {
    let raw = serde_json::json!({
        "device_id": message.device_id,
        "ts_ms": message.ts_ms,
        "readings": message.readings.len(),
    })
    .to_string();
    DeadLetter::new(
        DeadLetterReason::UnknownDevice,
        format!("not in the registry at {} ms", message.ts_ms),
        raw.as_bytes(),
    )
}
