//! Per-site rollups of closed device windows.

use differential_dataflow::Hashable;
use rustc_hash::FxHashMap;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::Operator;

use crate::dataflow::EventStream;
use crate::dataflow::gather::GatherByTime;
use crate::dataflow::model::{ExactSum, MetricId, SiteRollup, TimeMs, WindowAggregate};

/// Running (count, sum) per (site, metric, window start).
type SiteSums = FxHashMap<(String, MetricId, TimeMs), (u64, ExactSum)>;

/// Rolls device windows up per site.
pub trait RollupSites<'scope> {
    /// Sums each site's device aggregates per (metric, window) and emits the rollup once the
    /// frontier passes the windows' close time. Sums are exact, so the rollup is the same
    /// whichever workers the devices lived on.
    ///
    /// # Examples
    ///
    /// ```
    /// use iotpipe::dataflow::RollupSites;
    /// use iotpipe::dataflow::model::{ExactSum, MetricId, WindowAggregate};
    /// use timely::dataflow::operators::capture::Extract;
    /// use timely::dataflow::operators::vec::Map;
    /// use timely::dataflow::operators::{Capture, ToStream};
    ///
    /// let window = |device: &str, values: &[f64]| {
    ///     let mut sum = ExactSum::default();
    ///     values.iter().for_each(|v| sum.add(*v));
    ///     WindowAggregate {
    ///         device_id: device.into(),
    ///         metric: MetricId(0),
    ///         window_start_ms: 0,
    ///         site: "site-a".into(),
    ///         count: values.len() as u64,
    ///         min: 0.0,
    ///         max: 0.0,
    ///         sum,
    ///         sum_squares: 0.0,
    ///         first_ts_ms: 0,
    ///         last_ts_ms: 0,
    ///         threshold_breaches: 0,
    ///     }
    /// };
    /// let windows = vec![window("dev-1", &[1.0, 2.0]), window("dev-2", &[6.0])];
    /// let captured = timely::example(move |scope| {
    ///     let rollups = windows.to_stream(scope).rollup_sites();
    ///     rollups.map(|r| (r.site.clone(), r.count, r.mean().to_string())).capture()
    /// });
    /// let rollups = captured.extract();
    /// assert_eq!(rollups[0].1, vec![("site-a".to_string(), 3, "3".to_string())]);
    /// ```
    fn rollup_sites(self) -> EventStream<'scope, SiteRollup>;
}

impl<'scope> RollupSites<'scope> for EventStream<'scope, WindowAggregate> {
    fn rollup_sites(self) -> EventStream<'scope, SiteRollup> {
        let by_site = Exchange::new(|a: &WindowAggregate| a.site.hashed());
        self.unary_frontier(by_site, "RollupSites", |_cap, _info| {
            let mut pending: GatherByTime<Capability<TimeMs>, SiteSums, ()> =
                GatherByTime::default();
            move |(input, frontier), output| {
                input.for_each(|cap, data| {
                    let Some(time) = cap.least().copied() else {
                        return;
                    };
                    let (sums, ()) = pending.at(time, || cap.delayed(&time, 0));
                    for a in data.drain(..) {
                        let entry = sums
                            .entry((a.site, a.metric, a.window_start_ms))
                            .or_insert((0, ExactSum::default()));
                        entry.0 += a.count;
                        entry.1.merge(a.sum);
                    }
                });
                while let Some((_, cap, sums, ())) = pending.next_ready(&[frontier]) {
                    let mut rollups: Vec<SiteRollup> = sums
                        .into_iter()
                        .map(
                            |((site, metric, window_start_ms), (count, sum))| SiteRollup {
                                site,
                                metric,
                                window_start_ms,
                                count,
                                sum,
                            },
                        )
                        .collect();
                    output.session(&cap).give_container(&mut rollups);
                }
            }
        })
    }
}
