//! Gathering by time: what several operators share. Records of one or two inputs are kept per
//! timely time, with what the operator needs to answer at that time (a capability, or nothing in
//! a sink), and handed out time by time, in time order, once every input's frontier has passed
//! the time: then nothing more can arrive for it, so processing it is deterministic whatever the
//! arrival order and the batching of the records.
//!
//! `DeliverInOrder`, `DetectSilence`, `EvaluateAlerts` and `CorrelateSites` are this plus what
//! each does with a completed time.

use std::collections::BTreeMap;

use timely::progress::frontier::MutableAntichain;

use crate::dataflow::model::TimeMs;

/// Records gathered per time: `stamp` is what answers at the time (a capability), `left` and
/// `right` what each input brought.
///
/// ```
/// use iotpipe::dataflow::gather::GatherByTime;
/// use timely::progress::frontier::MutableAntichain;
///
/// let mut gathered: GatherByTime<(), Vec<&str>, bool> = GatherByTime::default();
/// gathered.at(20, || ()).0.push("late");
/// gathered.at(10, || ()).0.push("early");
/// *gathered.at(10, || ()).1 = true;
///
/// // The input's frontier is at 20: time 10 is complete, 20 is not.
/// let frontier = MutableAntichain::from_elem(20);
/// let ready = gathered.next_ready(&[&frontier]);
/// assert_eq!(ready, Some((10, (), vec!["early"], true)));
/// assert_eq!(gathered.next_ready(&[&frontier]), None);
/// assert_eq!(gathered.len(), 1);
/// ```
#[derive(Debug)]
pub struct GatherByTime<S, L, R> {
    pending: BTreeMap<TimeMs, (S, L, R)>,
}

impl<S, L, R> Default for GatherByTime<S, L, R> {
    fn default() -> Self {
        Self {
            pending: BTreeMap::new(),
        }
    }
}

impl<S, L: Default, R: Default> GatherByTime<S, L, R> {
    /// What is gathered at `time` so far, made empty (with `stamp()`) if nothing is.
    pub fn at(&mut self, time: TimeMs, stamp: impl FnOnce() -> S) -> (&mut L, &mut R) {
        let (_, left, right) = self
            .pending
            .entry(time)
            .or_insert_with(|| (stamp(), L::default(), R::default()));
        (left, right)
    }

    /// The earliest time every frontier has passed, with what was gathered at it, which is
    /// forgotten here; `None` while the earliest time gathered is still open.
    pub fn next_ready(
        &mut self,
        frontiers: &[&MutableAntichain<TimeMs>],
    ) -> Option<(TimeMs, S, L, R)> {
        let entry = self.pending.first_entry()?;
        let time = *entry.key();
        if frontiers.iter().any(|f| f.less_equal(&time)) {
            return None;
        }
        let (stamp, left, right) = entry.remove();
        Some((time, stamp, left, right))
    }

    /// How many times are gathered and not yet handed out.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether nothing is gathered.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against a plain computation: whatever the order records arrive in, each time comes out
    /// once, in time order, with all its records, and only once both frontiers passed it.
    #[test]
    fn times_come_out_whole_in_order_once_both_frontiers_pass() {
        let arrivals = [(30, 'c'), (10, 'a'), (20, 'b'), (10, 'd'), (30, 'e')];
        let mut gathered: GatherByTime<TimeMs, Vec<char>, Vec<char>> = GatherByTime::default();
        for (time, record) in arrivals {
            gathered.at(time, || time).0.push(record);
        }
        gathered.at(20, || 20).1.push('x');
        let left = MutableAntichain::from_elem(25);
        let right = MutableAntichain::from_elem(15);
        let mut out = Vec::new();
        while let Some(ready) = gathered.next_ready(&[&left, &right]) {
            out.push(ready);
        }
        assert_eq!(out, vec![(10, 10, vec!['a', 'd'], vec![])]);
        let right = MutableAntichain::from_elem(40);
        while let Some(ready) = gathered.next_ready(&[&left, &right]) {
            out.push(ready);
        }
        assert_eq!(out.len(), 2);
        assert_eq!(out[1], (20, 20, vec!['b'], vec!['x']));
        let left = MutableAntichain::new();
        while let Some(ready) = gathered.next_ready(&[&left, &right]) {
            out.push(ready);
        }
        assert_eq!(out[2], (30, 30, vec!['c', 'e'], vec![]));
        assert!(gathered.is_empty());
    }
}
