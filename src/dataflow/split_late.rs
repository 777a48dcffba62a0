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
    ///
    /// # Examples
    ///
    /// ```
    /// use iotpipe::dataflow::model::{MetricId, Reading, TimedMessage};
    /// use iotpipe::dataflow::{EventTimeConfig, SplitLate, WindowConfig};
    /// use timely::dataflow::operators::capture::Event;
    /// use timely::dataflow::operators::{Capture, ToStream};
    ///
    /// fn records<D>(events: std::sync::mpsc::Receiver<Event<u64, Vec<D>>>) -> Vec<D> {
    ///     let data = events.try_iter().filter_map(|e| match e {
    ///         Event::Messages(_, data) => Some(data),
    ///         Event::Progress(_) => None,
    ///     });
    ///     data.flatten().collect()
    /// }
    ///
    /// // The watermark has passed the first minute when this message arrives: its reading at
    /// // 30 s is late, the one at 70 s is on time.
    /// let reading = |ts_ms| Reading { metric: MetricId(0), ts_ms, value: 1.0 };
    /// let message = TimedMessage {
    ///     device_id: "dev-1".into(),
    ///     ts_ms: 70_000,
    ///     watermark_ms: 60_000,
    ///     watermark_ceiling_ms: u64::MAX,
    ///     readings: smallvec::smallvec![reading(30_000), reading(70_000)],
    /// };
    /// let (on_time, late) = timely::example(move |scope| {
    ///     let (on_time, late) = vec![message]
    ///         .to_stream(scope)
    ///         .split_late(WindowConfig::default(), EventTimeConfig::default());
    ///     (on_time.capture(), late.capture())
    /// });
    /// assert_eq!(records(on_time)[0].readings.to_vec(), vec![reading(70_000)]);
    /// assert_eq!(records(late)[0].ts_ms, 30_000);
    /// ```
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
                    // Messages stay in their container, which goes on whole: late readings
                    // leave their message, and a message left with none leaves the container.
                    // Moving every message into a new container cost more than the check.
                    for messages in data {
                        messages.retain_mut(|message| {
                            // The common case, nothing late, keeps the message as it is.
                            if message
                                .stamped(lateness)
                                .all(|(r, w)| !window.is_late(r.ts_ms, w))
                            {
                                return true;
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
                            !message.readings.is_empty()
                        });
                        if !messages.is_empty() {
                            on_time.give_container(messages);
                        }
                    }
                });
            }
        });
        (on_time_stream, late_stream)
    }
}

#[cfg(test)]
mod tests {
    use timely::dataflow::operators::capture::Event;
    use timely::dataflow::operators::{Capture, ToStream};

    use super::*;
    use crate::dataflow::model::{MetricId, Reading};

    fn records<D>(events: std::sync::mpsc::Receiver<Event<u64, Vec<D>>>) -> Vec<D> {
        let data = events.try_iter().filter_map(|e| match e {
            Event::Messages(_, data) => Some(data),
            Event::Progress(_) => None,
        });
        data.flatten().collect()
    }

    /// One container holding an on-time message, a late one and a mixed one: the on-time
    /// readings go on in their messages and their order, the late message leaves the container.
    #[test]
    fn a_container_keeps_its_on_time_messages_in_order_and_loses_its_late_ones() {
        let reading = |ts_ms| Reading {
            metric: MetricId(0),
            ts_ms,
            value: ts_ms as f64,
        };
        let message = |device: &str, readings: Vec<Reading>| TimedMessage {
            device_id: device.into(),
            ts_ms: 70_000,
            watermark_ms: 60_000,
            watermark_ceiling_ms: u64::MAX,
            readings: readings.into_iter().collect(),
        };
        let messages = vec![
            message("on-time", vec![reading(61_000), reading(62_000)]),
            message("late", vec![reading(10_000)]),
            message("mixed", vec![reading(20_000), reading(63_000)]),
        ];
        let (on_time, late) = timely::example(move |scope| {
            let (on_time, late) = messages
                .to_stream(scope)
                .split_late(WindowConfig::default(), EventTimeConfig::default());
            (on_time.capture(), late.capture())
        });
        let on_time: Vec<(String, Vec<u64>)> = records(on_time)
            .into_iter()
            .map(|m| {
                let times = m.readings.iter().map(|r| r.ts_ms).collect();
                (m.device_id.to_string(), times)
            })
            .collect();
        assert_eq!(
            on_time,
            vec![
                ("on-time".to_string(), vec![61_000, 62_000]),
                ("mixed".to_string(), vec![63_000]),
            ]
        );
        let mut late: Vec<(String, u64)> = records(late)
            .into_iter()
            .map(|l| (l.device_id.to_string(), l.ts_ms))
            .collect();
        late.sort();
        assert_eq!(
            late,
            vec![("late".to_string(), 10_000), ("mixed".to_string(), 20_000)]
        );
    }
}
