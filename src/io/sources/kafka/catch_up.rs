//! Larger fetch responses while the broker, not the dataflow, holds a worker back.
//!
//! The consumer's responses are kept small ([`super::prefetch`]) because each stays in memory
//! until its last message is read. That costs nothing where a fetch is cheap, but tansu's
//! sqlite engine scans a partition's whole backlog for every fetch, whatever it returns: there
//! a consumer that is behind reads less per second of the broker's time the further behind it
//! is: one worker over 8 partitions caught up with W1 at half the speed of 5 MiB responses
//! with 2 MiB ones (docs/benchmarks.md, "Why `-w 1` on the sqlite engine sits at half").
//!
//! So a worker watches two things: whether its partitions lag the broker by more than its
//! queues may prefetch (so it should be fetching all the time), and whether its polls find
//! messages waiting (so the dataflow, not the broker, is what it waits for). Lagging for
//! `grow_after` with most polls in it finding nothing means the broker is the bottleneck: the
//! worker doubles its responses, up to [`FETCH_MAX_BYTES_CATCH_UP`], and again after each
//! further `grow_after` that stays so. Most, not any: a response arrives whole, so even a
//! worker that waits for its broker finds a batch after each one, and even one that the
//! dataflow holds back finds its queues empty now and then. Once its lag has stayed under the
//! prefetch for twice `grow_after`, it goes back to its split. librdkafka cannot change
//! `fetch.max.bytes` on a live client, so the source re-creates its consumer at the
//! partitions' positions for each change ([`super::telemetry`]); the memory spent is bounded by
//! the largest response, and spent only while catching up.

use std::time::{Duration, Instant};

/// Largest response a worker grows to: librdkafka's default for a consumer of one partition
/// before issue 20 (tansu 0.6.0 serves at most 5 MiB of it; Kafka bounds each partition's
/// share by `max.partition.fetch.bytes`).
pub const FETCH_MAX_BYTES_CATCH_UP: u64 = 8 << 20;

/// What a worker saw in one poll of its partitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PollSeen {
    /// The poll found no message waiting.
    pub dry: bool,
    /// Messages between the partitions' positions and their ends, summed over those whose end
    /// is known (asked when the consumer opens, then librdkafka's statistics); `None` while
    /// none is.
    pub lag_messages: Option<u64>,
    /// Whether every partition's end is known: a lag summed over some is only a lower bound,
    /// enough to say the worker lags but not that it caught up.
    pub lag_complete: bool,
}

/// Decides a worker's fetch response size from what its polls see.
///
/// ```
/// # use std::time::{Duration, Instant};
/// # use iotpipe::io::sources::kafka::catch_up::{PollSeen, ResponseSizer};
/// let mut sizer = ResponseSizer::new(2 << 20, 20_000, Duration::from_secs(5));
/// let start = Instant::now();
/// let dry = PollSeen { dry: true, lag_messages: Some(500_000), lag_complete: true };
/// assert_eq!(sizer.observe(start, dry), None);
/// assert_eq!(sizer.observe(start + Duration::from_secs(5), dry), Some(4 << 20));
/// ```
#[derive(Debug)]
pub struct ResponseSizer {
    split_bytes: u64,
    current_bytes: u64,
    prefetch_messages: u64,
    grow_after: Duration,
    /// Since when the worker has lagged, in the current step, and how many of its polls since
    /// found nothing, of how many.
    lagging_since: Option<Instant>,
    dry_polls: u64,
    polls: u64,
    /// Since when its lag has stayed within its prefetch.
    caught_up_since: Option<Instant>,
}

impl ResponseSizer {
    /// A worker whose split response is `split_bytes` and whose queues may prefetch
    /// `prefetch_messages` together, growing after `grow_after` of lagging with dry queues.
    pub fn new(split_bytes: u64, prefetch_messages: u64, grow_after: Duration) -> Self {
        Self {
            split_bytes,
            current_bytes: split_bytes,
            prefetch_messages,
            grow_after,
            lagging_since: None,
            dry_polls: 0,
            polls: 0,
            caught_up_since: None,
        }
    }

    /// The response size now.
    pub fn current_bytes(&self) -> u64 {
        self.current_bytes
    }

    /// Whether the responses are larger than the split.
    pub fn grown(&self) -> bool {
        self.current_bytes > self.split_bytes
    }

    /// The consumer now fetches with `bytes`: what [`Self::observe`] proposed, once the
    /// consumer was re-created with it.
    pub fn resized(&mut self, bytes: u64) {
        self.current_bytes = bytes;
    }

    /// Takes one poll's view at `now`; returns a new response size to re-create the consumer
    /// with, which counts once [`Self::resized`] says so (until then, a proposal that could
    /// not be carried out is made again after another wait).
    pub fn observe(&mut self, now: Instant, seen: PollSeen) -> Option<u64> {
        let lag = seen.lag_messages?;
        if lag <= self.prefetch_messages {
            if !seen.lag_complete {
                return None;
            }
            self.lagging_since = None;
            let since = *self.caught_up_since.get_or_insert(now);
            if self.grown() && now.duration_since(since) >= 2 * self.grow_after {
                self.caught_up_since = Some(now);
                return Some(self.split_bytes);
            }
            return None;
        }
        self.caught_up_since = None;
        let since = *self.lagging_since.get_or_insert_with(|| {
            self.dry_polls = 0;
            self.polls = 0;
            now
        });
        self.polls += 1;
        self.dry_polls += u64::from(seen.dry);
        if now.duration_since(since) < self.grow_after {
            return None;
        }
        // The step is over: judge it, and start the next, which must show the new client.
        let starved = self.dry_polls * DRY_SHARE.1 >= self.polls * DRY_SHARE.0;
        tracing::debug!(
            dry_polls = self.dry_polls,
            polls = self.polls,
            lag_messages = lag,
            fetch_max_bytes = self.current_bytes,
            "lagging step judged"
        );
        self.lagging_since = None;
        if !starved || self.current_bytes >= FETCH_MAX_BYTES_CATCH_UP {
            return None;
        }
        Some(
            self.current_bytes
                .saturating_mul(2)
                .min(FETCH_MAX_BYTES_CATCH_UP),
        )
    }
}

/// The share of a lagging step's polls that must find nothing for the broker to be the
/// bottleneck, as a fraction: three in four.
const DRY_SHARE: (u64, u64) = (3, 4);

#[cfg(test)]
mod tests {
    use super::*;

    const STEP: Duration = Duration::from_secs(5);

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    /// Observes, and re-creates the consumer with what is proposed, as the source does.
    fn applied(sizer: &mut ResponseSizer, now: Instant, seen: PollSeen) -> Option<u64> {
        let proposed = sizer.observe(now, seen)?;
        sizer.resized(proposed);
        Some(proposed)
    }

    fn seen(dry: bool, lag: u64) -> PollSeen {
        PollSeen {
            dry,
            lag_messages: Some(lag),
            lag_complete: true,
        }
    }

    /// Polls every `every_ms` from `from_ms` to `to_ms` (exclusive), one in `found_every`
    /// finding messages; returns the sizes it changed to.
    fn polls(
        sizer: &mut ResponseSizer,
        start: Instant,
        (from_ms, to_ms, every_ms): (u64, u64, u64),
        found_every: u64,
        lag: u64,
    ) -> Vec<(u64, u64)> {
        (from_ms..to_ms)
            .step_by(every_ms as usize)
            .enumerate()
            .filter_map(|(i, ms)| {
                let dry = !(i as u64).is_multiple_of(found_every);
                applied(sizer, at(start, ms), seen(dry, lag)).map(|b| (ms, b))
            })
            .collect()
    }

    #[test]
    fn lagging_with_mostly_dry_polls_doubles_each_step_up_to_the_cap_and_back_once_caught_up() {
        let start = Instant::now();
        let mut sizer = ResponseSizer::new(2 << 20, 20_000, STEP);
        // A response a second, polled every millisecond in between: the broker holds it back.
        let grown = polls(&mut sizer, start, (0, 30_000, 1), 1_000, 500_000);
        assert_eq!(grown, vec![(5_000, 4 << 20), (10_001, 8 << 20)]);
        assert_eq!(sizer.current_bytes(), FETCH_MAX_BYTES_CATCH_UP);
        // Caught up: back to the split after twice the step, not before.
        assert_eq!(
            applied(&mut sizer, at(start, 31_000), seen(true, 3_000)),
            None
        );
        assert_eq!(
            applied(&mut sizer, at(start, 40_999), seen(false, 3_000)),
            None
        );
        assert_eq!(
            applied(&mut sizer, at(start, 41_000), seen(true, 3_000)),
            Some(2 << 20)
        );
        assert!(!sizer.grown());
        assert_eq!(
            applied(&mut sizer, at(start, 60_000), seen(true, 3_000)),
            None
        );
    }

    #[test]
    fn a_short_lag_restarts_the_step_and_one_lagging_poll_keeps_the_size() {
        let start = Instant::now();
        let mut sizer = ResponseSizer::new(3 << 20, 20_000, STEP);
        assert_eq!(
            polls(&mut sizer, start, (0, 4_000, 1), 100, 500_000),
            vec![]
        );
        // Lag within the prefetch: the step starts again.
        assert_eq!(
            applied(&mut sizer, at(start, 4_000), seen(true, 20_000)),
            None
        );
        let grown = polls(&mut sizer, start, (4_001, 12_000, 1), 100, 500_000);
        assert_eq!(grown, vec![(9_001, 6 << 20)]);
        // Caught up, then one lagging poll: the wait for going back starts again.
        assert_eq!(
            applied(&mut sizer, at(start, 20_000), seen(true, 100)),
            None
        );
        assert_eq!(
            applied(&mut sizer, at(start, 25_000), seen(true, 500_000)),
            None
        );
        assert_eq!(
            applied(&mut sizer, at(start, 26_000), seen(true, 100)),
            None
        );
        assert_eq!(
            applied(&mut sizer, at(start, 35_999), seen(true, 100)),
            None
        );
        assert_eq!(
            applied(&mut sizer, at(start, 36_000), seen(true, 100)),
            Some(3 << 20)
        );
    }

    #[test]
    fn a_lag_over_some_partitions_can_grow_the_responses_but_not_bring_them_back() {
        let start = Instant::now();
        let mut sizer = ResponseSizer::new(2 << 20, 20_000, STEP);
        let partial = |lag| PollSeen {
            dry: true,
            lag_messages: Some(lag),
            lag_complete: false,
        };
        assert_eq!(applied(&mut sizer, start, partial(500_000)), None);
        assert_eq!(
            applied(&mut sizer, at(start, 5_000), partial(500_000)),
            Some(4 << 20)
        );
        // The partitions reported so far are caught up, the others unknown: no judgement.
        for ms in (5_001..30_000).step_by(100) {
            assert_eq!(applied(&mut sizer, at(start, ms), partial(10)), None);
        }
        assert!(sizer.grown());
    }

    #[test]
    fn a_dataflow_that_is_the_bottleneck_never_grows_the_responses() {
        let start = Instant::now();
        let mut sizer = ResponseSizer::new(2 << 20, 20_000, STEP);
        // Messages waiting at most polls, and a dry one now and then (even every other).
        for found_every in [1, 2] {
            let changed = polls(&mut sizer, start, (0, 120_000, 30), found_every, 2_000_000);
            assert_eq!(changed, vec![]);
        }
        // Nor does a lag the broker has not reported yet.
        let unknown = PollSeen {
            dry: true,
            lag_messages: None,
            lag_complete: false,
        };
        for ms in (0..120_000).step_by(50) {
            assert_eq!(applied(&mut sizer, at(start, ms), unknown), None);
        }
        assert_eq!(sizer.current_bytes(), 2 << 20);
    }

    #[test]
    fn a_size_the_consumer_could_not_take_is_proposed_again_after_another_wait() {
        let start = Instant::now();
        let mut sizer = ResponseSizer::new(2 << 20, 20_000, STEP);
        let dry = seen(true, 500_000);
        assert_eq!(sizer.observe(start, dry), None);
        assert_eq!(sizer.observe(at(start, 5_000), dry), Some(4 << 20));
        // Not carried out: the size stays, and the next step proposes the same again.
        assert_eq!(sizer.current_bytes(), 2 << 20);
        assert_eq!(sizer.observe(at(start, 5_001), dry), None);
        assert_eq!(sizer.observe(at(start, 10_000), dry), None);
        assert_eq!(sizer.observe(at(start, 10_001), dry), Some(4 << 20));
        sizer.resized(4 << 20);
        // Going back, not carried out either: proposed again after another two steps.
        let caught_up = seen(true, 100);
        assert_eq!(sizer.observe(at(start, 11_000), caught_up), None);
        assert_eq!(sizer.observe(at(start, 21_000), caught_up), Some(2 << 20));
        assert_eq!(sizer.observe(at(start, 21_001), caught_up), None);
        assert_eq!(sizer.observe(at(start, 31_000), caught_up), Some(2 << 20));
        assert!(sizer.grown());
    }
}
