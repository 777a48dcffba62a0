//! The dataflow operator that writes a stream to InfluxDB, and knows when it is written.
//!
//! As the Kafka sinks do (see [`crate::io::sinks::kafka`]), a sink holds a capability at each
//! time until InfluxDB has accepted every point of that time, so the frontier of its output is
//! the time before which the stream is stored: commits and latency follow it. Its output
//! carries the records InfluxDB refused, as dead letters, at their times.
//!
//! Records gather into batches of up to `batch_points` records, sent when full or when the
//! oldest has waited `linger_ms`. When the process's queue of batches is full, the sink keeps
//! its batches and holds `full`, and the source stops reading: a slow or dead InfluxDB holds the
//! dataflow back instead of losing points or growing memory.

use std::cell::Cell;
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::Operator;

use crate::dataflow::EventStream;
use crate::dataflow::model::{DeadLetter, TimeMs};
use crate::io::sinks::influx::pool::{BatchReply, InfluxBatch, InfluxPool, Lane};

/// Where a sink writes.
#[derive(Clone)]
pub struct InfluxTarget {
    /// The process's writers.
    pub pool: InfluxPool,
    /// Records at times before this were written by an earlier run: they are skipped.
    pub skip_before_ms: TimeMs,
    /// Held while this worker's batches wait for room in the queue: the source should pause.
    pub full: HeldBack,
    /// The writers' queue the batches take.
    pub lane: Lane,
}

/// The sinks of a worker that wait for room in the writers' queue: the source pauses while
/// any does.
#[derive(Clone, Debug, Default)]
pub struct HeldBack(Rc<Cell<usize>>);

impl HeldBack {
    /// Whether a sink is waiting.
    pub fn is_held(&self) -> bool {
        self.0.get() > 0
    }

    /// One sink's state: `holding` is whether it held before, `now` whether it does now.
    fn hold(&self, holding: &mut bool, now: bool) {
        if now != *holding {
            self.0.set(if now {
                self.0.get() + 1
            } else {
                self.0.get() - 1
            });
            *holding = now;
        }
    }
}

/// Writes a stream to InfluxDB.
pub trait WriteToInflux<'scope, D> {
    /// Writes each record as `encode` appends its line protocol (one or more points, or none)
    /// to the buffer; returns the refused records as dead letters, in a stream whose frontier
    /// is the time before which InfluxDB holds everything of this stream.
    fn write_to_influx<F>(
        self,
        name: &str,
        target: InfluxTarget,
        encode: F,
    ) -> EventStream<'scope, DeadLetter>
    where
        F: FnMut(&D, &mut Vec<u8>) + 'static;
}

impl<'scope, D: Clone + 'static> WriteToInflux<'scope, D> for EventStream<'scope, D> {
    fn write_to_influx<F>(
        self,
        name: &str,
        target: InfluxTarget,
        mut encode: F,
    ) -> EventStream<'scope, DeadLetter>
    where
        F: FnMut(&D, &mut Vec<u8>) + 'static,
    {
        let scope = self.scope();
        let batch_points = target.pool.config.batch_points;
        let linger = Duration::from_millis(target.pool.config.linger_ms);
        self.unary_frontier::<CapacityContainerBuilder<Vec<DeadLetter>>, _, _, _>(
            Pipeline,
            name,
            move |_initial, info| {
                let activator = scope.activator_for(info.address.clone());
                let (outcomes, replies) = std::sync::mpsc::channel();
                let reply = BatchReply {
                    outcomes,
                    activator: scope.worker().sync_activator_for(info.address.to_vec()),
                };
                // Per time: its capability and how many runs of its records wait in batches
                // (open, queued or in flight) that InfluxDB has not answered.
                let mut held: BTreeMap<TimeMs, (Capability<TimeMs>, usize)> = BTreeMap::new();
                let mut open = InfluxBatch::new(reply.clone(), Vec::new());
                // Line buffers of answered batches, filled again by the next ones.
                let mut spare: Vec<Vec<u8>> = Vec::new();
                let mut opened_at = Instant::now();
                let mut waiting: VecDeque<InfluxBatch> = VecDeque::new();
                let mut holding = false;
                move |(input, frontier), output| {
                    for outcome in replies.try_iter() {
                        for (time, dead) in outcome.rejected {
                            let (cap, _) = &held[&time];
                            output.session(cap).give(dead);
                        }
                        for time in runs(&outcome.times) {
                            held.get_mut(&time).expect("a sent time is held").1 -= 1;
                        }
                        if spare.len() < 2 {
                            spare.push(outcome.spare_lines);
                        }
                    }
                    let mut seal = |open: &mut InfluxBatch| {
                        let lines = spare.pop().unwrap_or_default();
                        let mut batch =
                            std::mem::replace(open, InfluxBatch::new(reply.clone(), lines));
                        target.pool.sealed(&mut batch);
                        waiting.push_back(batch);
                    };
                    input.for_each(|cap, records| {
                        let Some(time) = cap.least().copied() else {
                            return;
                        };
                        if time < target.skip_before_ms {
                            return;
                        }
                        if let Entry::Vacant(entry) = held.entry(time) {
                            let Some(retained) = cap.retain_least(0) else {
                                return;
                            };
                            entry.insert((retained, 0));
                        }
                        for record in records.drain(..) {
                            let before = open.lines.len();
                            encode(&record, &mut open.lines);
                            if open.lines.len() == before {
                                continue;
                            }
                            if open.is_empty() {
                                opened_at = Instant::now();
                            }
                            if open.times.last() != Some(&time) {
                                // A run of this time starts in the batch: one more holds it.
                                held.get_mut(&time).expect("held above").1 += 1;
                            }
                            open.ends.push(open.lines.len());
                            open.times.push(time);
                            if open.len() >= batch_points {
                                seal(&mut open);
                            }
                        }
                    });
                    if !open.is_empty() && (opened_at.elapsed() >= linger || frontier.is_empty()) {
                        seal(&mut open);
                    }
                    target.pool.send_waiting(target.lane, &mut waiting);
                    target.full.hold(&mut holding, !waiting.is_empty());
                    // A time is written once no record can still come for it and InfluxDB has
                    // answered every batch holding it (the open one counts too).
                    held.retain(|time, (_, runs)| frontier.less_equal(time) || *runs > 0);
                    if !waiting.is_empty() {
                        activator.activate_after(Duration::from_millis(2));
                    } else if !open.is_empty() {
                        activator.activate_after(linger.saturating_sub(opened_at.elapsed()));
                    }
                }
            },
        )
    }
}

/// The time of each run of equal times in a batch's records (records arrive a time at a time,
/// so mostly one run).
fn runs(times: &[TimeMs]) -> impl Iterator<Item = TimeMs> + '_ {
    times.chunk_by(|a, b| a == b).map(|run| run[0])
}
