//! Moving records to the time their input says they belong to.
//!
//! A record is sent into the dataflow at its batch's time, which depends on how the input was
//! cut into batches (chunks, Kafka polls, a restart's catch-up). Where a record's timely time
//! matters downstream (a sink skips what an earlier run wrote before a time; alert decisions
//! are applied in time order), it must not depend on that: such records carry a *stamp*, the
//! watermark of their message, which depends on the input alone, and [`AtStamps`] moves each
//! to it. A stamp is never before its batch's time, so this only ever delays.

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;

use crate::dataflow::EventStream;
use crate::dataflow::model::TimeMs;

/// Moves each `(stamp, record)` to timely time `stamp`.
pub trait AtStamps<'scope, D> {
    /// Emits each record at its stamp (at its own time, if the stamp is behind it).
    ///
    /// # Examples
    ///
    /// ```
    /// use timely::dataflow::operators::{Capture, ToStream};
    /// use timely::dataflow::operators::capture::Extract;
    /// use iotpipe::dataflow::stamp::AtStamps;
    ///
    /// let captured = timely::example(|scope| {
    ///     vec![(5_u64, "b"), (0, "a")].to_stream(scope).at_stamps("Stamp").capture()
    /// });
    /// let by_time = captured.extract();
    /// assert_eq!(by_time, vec![(0, vec!["a"]), (5, vec!["b"])]);
    /// ```
    fn at_stamps(self, name: &str) -> EventStream<'scope, D>;
}

impl<'scope, D: Clone + 'static> AtStamps<'scope, D> for EventStream<'scope, (TimeMs, D)> {
    fn at_stamps(self, name: &str) -> EventStream<'scope, D> {
        self.unary(Pipeline, name, |_cap, _info| {
            move |input, output| {
                input.for_each(|cap, data| {
                    let Some(&time) = cap.least() else { return };
                    for (stamp_ms, record) in data.drain(..) {
                        if stamp_ms <= time {
                            output.session(&cap).give(record);
                        } else {
                            output.session(&cap.delayed(&stamp_ms, 0)).give(record);
                        }
                    }
                });
            }
        })
    }
}
