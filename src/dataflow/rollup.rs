//! Per-site rollups of closed device windows.

use std::collections::BTreeMap;

use differential_dataflow::Hashable;
use rustc_hash::FxHashMap;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::Operator;

use crate::dataflow::EventStream;
use crate::dataflow::model::{ExactSum, MetricId, SiteRollup, TimeMs, WindowAggregate};

/// Running (count, sum) per (site, metric, window start).
type SiteSums = FxHashMap<(String, MetricId, TimeMs), (u64, ExactSum)>;

/// Rolls device windows up per site.
pub trait RollupSites<'scope> {
    /// Sums each site's device aggregates per (metric, window) and emits the rollup once the
    /// frontier passes the windows' close time. Sums are exact, so the rollup is the same
    /// whichever workers the devices lived on.
    fn rollup_sites(self) -> EventStream<'scope, SiteRollup>;
}

impl<'scope> RollupSites<'scope> for EventStream<'scope, WindowAggregate> {
    fn rollup_sites(self) -> EventStream<'scope, SiteRollup> {
        let by_site = Exchange::new(|a: &WindowAggregate| a.site.hashed());
        self.unary_frontier(by_site, "RollupSites", |_cap, _info| {
            let mut pending: BTreeMap<TimeMs, (Capability<TimeMs>, SiteSums)> = BTreeMap::new();
            move |(input, frontier), output| {
                input.for_each(|cap, data| {
                    let Some(time) = cap.least().copied() else {
                        return;
                    };
                    let (_, sums) = pending
                        .entry(time)
                        .or_insert_with(|| (cap.delayed(&time, 0), FxHashMap::default()));
                    for a in data.drain(..) {
                        let entry = sums
                            .entry((a.site, a.metric, a.window_start_ms))
                            .or_insert((0, ExactSum::default()));
                        entry.0 += a.count;
                        entry.1.merge(a.sum);
                    }
                });
                while let Some(entry) = pending.first_entry() {
                    if frontier.less_equal(entry.key()) {
                        break;
                    }
                    let (cap, sums) = entry.remove();
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
