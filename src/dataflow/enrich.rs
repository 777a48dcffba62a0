//! Enrichment: each message looks up its device in the arranged registry, as of its own time.
//!
//! The registry is a differential arrangement built from its changelog by `arrange_from_upsert`,
//! so an upsert or delete at event time `t` holds for messages from `t` on. Messages are a
//! stream, not a collection: they are looked up in the arrangement's trace and never arranged
//! themselves (the half-join pattern of differential's `dogsdogsdogs`), so state stays bounded by
//! devices, not messages.

use differential_dataflow::Hashable;
use differential_dataflow::operators::arrange::upsert::arrange_from_upsert;
use differential_dataflow::operators::arrange::{Arranged, TraceAgent};
use differential_dataflow::trace::cursor::cursor_list;
use differential_dataflow::trace::implementations::{ValBuilder, ValSpine};
use differential_dataflow::trace::{Cursor, TraceReader};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::{Capability, OkErr};
use timely::progress::Antichain;

use crate::dataflow::model::{
    DeadLetter, DeadLetterReason, DeviceId, EnrichedMessage, SharedDeviceInfo, TimeMs, TimedMessage,
};
use crate::dataflow::window::WindowConfig;

/// A registry change as the dataflow takes it: `(device_id, entry or delete, effective time)`.
pub type RegistryUpdate = (DeviceId, Option<SharedDeviceInfo>, TimeMs);

/// The trace behind the arranged registry.
pub type RegistryTrace = TraceAgent<ValSpine<DeviceId, SharedDeviceInfo, TimeMs, isize>>;

/// The registry, arranged by device id.
pub type RegistryArrangement<'scope> = Arranged<'scope, RegistryTrace>;

/// Turns a registry changelog into an arrangement.
pub trait ArrangeRegistry<'scope> {
    /// Arranges the changelog by device id; each update holds from its effective time on.
    fn arrange_registry(self) -> RegistryArrangement<'scope>;
}

impl<'scope> ArrangeRegistry<'scope> for Stream<'scope, TimeMs, Vec<RegistryUpdate>> {
    fn arrange_registry(self) -> RegistryArrangement<'scope> {
        arrange_from_upsert::<
            ValBuilder<DeviceId, SharedDeviceInfo, TimeMs, isize>,
            ValSpine<DeviceId, SharedDeviceInfo, TimeMs, isize>,
            DeviceId,
            SharedDeviceInfo,
        >(self, "ArrangeRegistry")
    }
}

/// Joins messages with the registry.
pub trait Enrich<'scope> {
    /// Looks each message's device up in `registry` as of the message's time, once the registry
    /// is complete through that time. Returns the enriched messages, partitioned by device, and
    /// dead letters (`unknown_device`) for messages whose device is not registered then.
    ///
    /// Messages must carry on-time readings only: their times are then at most one window behind
    /// the frontier, which is how far back the registry trace is kept readable.
    fn enrich(
        self,
        registry: &RegistryArrangement<'scope>,
        window: WindowConfig,
    ) -> (
        Stream<'scope, TimeMs, Vec<EnrichedMessage>>,
        Stream<'scope, TimeMs, Vec<DeadLetter>>,
    );
}

impl<'scope> Enrich<'scope> for Stream<'scope, TimeMs, Vec<TimedMessage>> {
    fn enrich(
        self,
        registry: &RegistryArrangement<'scope>,
        window: WindowConfig,
    ) -> (
        Stream<'scope, TimeMs, Vec<EnrichedMessage>>,
        Stream<'scope, TimeMs, Vec<DeadLetter>>,
    ) {
        let mut trace = registry.trace.clone();
        // The arrangement is partitioned by the same hash, so each lookup is local.
        let by_device = Exchange::new(|m: &TimedMessage| m.device_id.hashed());
        type Joined = Result<EnrichedMessage, DeadLetter>;
        self.binary_frontier::<_, CapacityContainerBuilder<Vec<Joined>>, _, _, _, _>(
            registry.stream.clone(),
            by_device,
            Pipeline,
            "Enrich",
            move |_cap, _info| {
                let mut stash: Vec<(Capability<TimeMs>, Vec<TimedMessage>)> = Vec::new();
                let mut upper = Antichain::new();
                move |(input, frontier), (registry_batches, _), output| {
                    input.for_each(|cap, data| {
                        if let Some(cap) = cap.retain_least(0) {
                            stash.push((cap, std::mem::take(data)));
                        }
                    });
                    // The batches are read through the trace; the stream only wakes us up.
                    registry_batches.for_each(|_, _| {});

                    trace.read_upper(&mut upper);
                    let is_ready = |m: &TimedMessage| !upper.less_equal(&m.ts_ms);
                    if stash.iter().any(|(_, ms)| ms.iter().any(is_ready)) {
                        let batches = trace
                            .batches_through(Antichain::new().borrow())
                            .expect("the registry trace is readable from our compaction frontier");
                        let (mut cursor, storage) = cursor_list(batches);
                        for (cap, messages) in stash.iter_mut() {
                            let (mut ready, waiting): (Vec<_>, Vec<_>) =
                                std::mem::take(messages).into_iter().partition(is_ready);
                            *messages = waiting;
                            // Cursors seek forward only: visit devices in key order.
                            ready.sort_unstable_by(|a, b| a.device_id.cmp(&b.device_id));
                            cursor.rewind_keys(&storage);
                            let mut session = output.session(cap);
                            for message in ready {
                                cursor.seek_key(&storage, &message.device_id);
                                let mut found: Option<SharedDeviceInfo> = None;
                                if cursor.get_key(&storage) == Some(&message.device_id) {
                                    while let Some(info) = cursor.get_val(&storage) {
                                        let mut count = 0isize;
                                        cursor.map_times(&storage, |time, diff| {
                                            if *time <= message.ts_ms {
                                                count += *diff;
                                            }
                                        });
                                        if count > 0 {
                                            found = Some(info.clone());
                                        }
                                        cursor.step_val(&storage);
                                    }
                                    cursor.rewind_vals(&storage);
                                }
                                session.give(match found {
                                    Some(device) => Ok(EnrichedMessage {
                                        device_id: message.device_id,
                                        device,
                                        readings: message.readings,
                                    }),
                                    None => Err(unknown_device(&message)),
                                });
                            }
                        }
                        stash.retain(|(_, messages)| !messages.is_empty());
                    }

                    // Keep the registry readable as far back as any message may still look.
                    let oldest = frontier
                        .frontier()
                        .iter()
                        .chain(stash.iter().map(|(cap, _)| cap.time()))
                        .min()
                        .copied();
                    let readable = match oldest {
                        Some(t) => Antichain::from_elem(t.saturating_sub(window.length_ms)),
                        None => Antichain::new(),
                    };
                    trace.set_logical_compaction(readable.borrow());
                    trace.set_physical_compaction(readable.borrow());
                }
            },
        )
        .ok_err(|joined: Joined| joined)
    }
}

/// The dead letter for a message whose device the arrangement does not hold at its time.
fn unknown_device(message: &TimedMessage) -> DeadLetter {
    DeadLetter {
        reason: DeadLetterReason::UnknownDevice,
        detail: format!("not in the registry at {} ms", message.ts_ms),
        raw: serde_json::json!({
            "device_id": message.device_id,
            "ts_ms": message.ts_ms,
            "readings": message.readings.len(),
        })
        .to_string(),
    }
}
