//! Latency from a message's arrival to a frontier passing its time: the arrivals of each time
//! wait here until a probe's frontier passes it, and are then observed into a histogram.

use std::collections::VecDeque;
use std::time::Instant;

use crate::dataflow::model::TimeMs;
use crate::io::support::metrics::Histogram;

/// Arrivals not yet passed by the frontier, in time order.
#[derive(Debug, Default)]
pub struct ArrivalLatency {
    /// (input time, earliest arrival at that time, messages).
    pending: VecDeque<(TimeMs, Instant, u64)>,
}

impl ArrivalLatency {
    /// Records `messages` that arrived `at`, sent into the dataflow at `time` (which does not
    /// go back).
    pub fn arrived(&mut self, time: TimeMs, at: Instant, messages: u64) {
        if messages == 0 {
            return;
        }
        match self.pending.back_mut() {
            Some((t, _, n)) if *t >= time => *n += messages,
            _ => self.pending.push_back((time, at, messages)),
        }
    }

    /// Records one arrival at `time` (a batch), unless one already waits there: a time's
    /// latency counts from its first read.
    pub fn first_arrival(&mut self, time: TimeMs, at: Instant) {
        if self.pending.back().is_none_or(|(t, _, _)| *t < time) {
            self.pending.push_back((time, at, 1));
        }
    }

    /// Observes every arrival whose time the frontier has passed (`None`: the frontier is
    /// empty and all have), as one observation per message.
    pub fn passed(&mut self, frontier: Option<TimeMs>, histogram: &Histogram) {
        while let Some((time, at, messages)) = self.pending.front().copied() {
            if frontier.is_some_and(|f| time >= f) {
                break;
            }
            histogram.observe_many(at.elapsed(), messages);
            self.pending.pop_front();
        }
    }

    /// Arrivals still waiting.
    pub fn waiting(&self) -> u64 {
        self.pending.iter().map(|(_, _, n)| n).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_are_observed_once_the_frontier_passes_their_time() {
        let histogram = Histogram::default();
        let mut latency = ArrivalLatency::default();
        let now = Instant::now();
        latency.arrived(10, now, 3);
        latency.arrived(10, now, 2);
        latency.arrived(20, now, 4);
        latency.passed(Some(10), &histogram);
        assert_eq!(histogram.count(), 0);
        latency.passed(Some(11), &histogram);
        assert_eq!((histogram.count(), latency.waiting()), (5, 4));
        latency.passed(None, &histogram);
        assert_eq!((histogram.count(), latency.waiting()), (9, 0));
    }
}
