//! Separating late readings from on-time ones.

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::progress::operate::FrontierInterest;

use crate::dataflow::EventStream;
use crate::dataflow::event_time::EventTimeConfig;
use crate::dataflow::model::{LateReading, TimedMessage};
use crate::dataflow::window::WindowConfig;

/// On-time messages and late readings.
pub type OnTimeAndLate<'scope> = (
    EventStream<'scope, TimedMessage>,
    EventStream<'scope, LateReading>,
);

/// Splits late readings off a stream of timed messages.
pub trait SplitLate<'scope> {
    /// Returns the messages with only their on-time readings (messages left with none are
    /// dropped) and, separately, every late reading. Lateness is decided per reading against
    /// the watermark it arrived under, so the split is the same for any number of workers.
    fn split_late(self, window: WindowConfig, event_time: EventTimeConfig)
    -> OnTimeAndLate<'scope>;
}

impl<'scope> SplitLate<'scope> for EventStream<'scope, TimedMessage> {
    fn split_late(
        self,
        window: WindowConfig,
        event_time: EventTimeConfig,
    ) -> OnTimeAndLate<'scope> {
        let mut builder = OperatorBuilder::new("SplitLate".to_owned(), self.scope());
        let mut input = builder.new_input(self, Pipeline);
        builder.set_notify_for(0, FrontierInterest::Never);
        let (on_time, on_time_stream) = builder.new_output();
        let (late, late_stream) = builder.new_output();
        let mut on_time = OutputBuilder::<
            _,
            timely::container::CapacityContainerBuilder<Vec<TimedMessage>>,
        >::from(on_time);
        let mut late = OutputBuilder::<
            _,
            timely::container::CapacityContainerBuilder<Vec<LateReading>>,
        >::from(late);
        let lateness = event_time.allowed_lateness_ms;
        builder.build(move |_| {
            move |_frontiers| {
                let mut on_time = on_time.activate();
                let mut late = late.activate();
                input.for_each_stamp(|cap, data| {
                    let mut on_time = on_time.session(&cap);
                    let mut late = late.session(&cap);
                    for mut message in data.flat_map(|d| d.drain(..)) {
                        // The common case, nothing late, keeps the message as it is.
                        if message
                            .stamped(lateness)
                            .all(|(r, w)| !window.is_late(r.ts_ms, w))
                        {
                            on_time.give(message);
                            continue;
                        }
                        let keep: Vec<bool> = message
                            .stamped(lateness)
                            .map(|(r, w)| !window.is_late(r.ts_ms, w))
                            .collect();
                        let mut index = 0;
                        message.readings.retain(|r| {
                            let keep = keep[index];
                            index += 1;
                            if !keep {
                                late.give(LateReading {
                                    device_id: message.device_id.clone(),
                                    metric: r.metric,
                                    ts_ms: r.ts_ms,
                                    value: r.value,
                                });
                            }
                            keep
                        });
                        if !message.readings.is_empty() {
                            on_time.give(message);
                        }
                    }
                });
            }
        });
        (on_time_stream, late_stream)
    }
}
