//! Separating late readings from on-time ones.

use timely::dataflow::Stream;
use timely::dataflow::operators::OkErr;
use timely::dataflow::operators::vec::Map;

use crate::dataflow::model::{LateReading, TimeMs, TimedMessage};
use crate::dataflow::window::WindowConfig;

/// Splits late readings off a stream of timed messages.
pub trait SplitLate<'scope> {
    /// Returns the messages with only their on-time readings (messages left with none are
    /// dropped) and, separately, every late reading. Lateness is decided per reading against
    /// the watermark it was stamped with, so the split is the same for any number of workers.
    fn split_late(
        self,
        window: WindowConfig,
    ) -> (
        Stream<'scope, TimeMs, Vec<TimedMessage>>,
        Stream<'scope, TimeMs, Vec<LateReading>>,
    );
}

impl<'scope> SplitLate<'scope> for Stream<'scope, TimeMs, Vec<TimedMessage>> {
    fn split_late(
        self,
        window: WindowConfig,
    ) -> (
        Stream<'scope, TimeMs, Vec<TimedMessage>>,
        Stream<'scope, TimeMs, Vec<LateReading>>,
    ) {
        self.flat_map(move |mut message: TimedMessage| {
            let mut late = Vec::new();
            message.readings.retain(|stamped| {
                let r = stamped.reading;
                if window.is_late(r.ts_ms, stamped.watermark_ms) {
                    late.push(Err(LateReading {
                        device_id: message.device_id.clone(),
                        metric: r.metric,
                        ts_ms: r.ts_ms,
                        value: r.value,
                    }));
                    false
                } else {
                    true
                }
            });
            if !message.readings.is_empty() {
                late.push(Ok(message));
            }
            late
        })
        .ok_err(|split| split)
    }
}
