//! Closed windows as InfluxDB line protocol (escaping by the `influxdb-line-protocol` crate).
//!
//! | measurement | tags | fields | time |
//! |---|---|---|---|
//! | `iotpipe_aggregate` | `device_id`, `metric`, `site` | `count` (integer), `min`, `max`, `mean`, `threshold_breaches` (integer) | window start |
//! | `iotpipe_site_rollup` | `site`, `metric` | `count` (integer), `mean` | window start |
//!
//! Tags are bounded sets (devices, metrics, sites); values are fields. A window's point is the
//! same series and timestamp however often it is written, so writing twice (a replay, a
//! restart) leaves the same points.

use influxdb_line_protocol::LineProtocolBuilder;

use crate::dataflow::model::{SiteRollup, WindowAggregate};
use crate::dataflow::schema::MetricCatalog;

/// Appends the point of a closed device window.
pub fn aggregate_line(buffer: &mut Vec<u8>, a: &WindowAggregate, catalog: &MetricCatalog) {
    let lines = LineProtocolBuilder::new_with(std::mem::take(buffer))
        .measurement("iotpipe_aggregate")
        .tag("device_id", a.device_id.as_str())
        .tag("metric", catalog.name(a.metric))
        .tag("site", &a.site)
        .field("count", a.count as i64)
        .field("min", a.min)
        .field("max", a.max)
        .field("mean", a.mean())
        .field("threshold_breaches", a.threshold_breaches as i64)
        .timestamp(a.window_start_ms as i64)
        .close_line();
    *buffer = lines.build();
}

/// Appends the point of a closed site window.
pub fn rollup_line(buffer: &mut Vec<u8>, r: &SiteRollup, catalog: &MetricCatalog) {
    let lines = LineProtocolBuilder::new_with(std::mem::take(buffer))
        .measurement("iotpipe_site_rollup")
        .tag("site", &r.site)
        .tag("metric", catalog.name(r.metric))
        .field("count", r.count as i64)
        .field("mean", r.mean())
        .timestamp(r.window_start_ms as i64)
        .close_line();
    *buffer = lines.build();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataflow::model::{ExactSum, MetricId};
    use crate::dataflow::schema::SchemaSet;

    #[test]
    fn tags_are_escaped_and_counts_are_integers() {
        let schemas = SchemaSet::embedded();
        let catalog = schemas.catalog();
        let aggregate = WindowAggregate {
            device_id: "dev 1,a=b".into(),
            metric: MetricId(0),
            window_start_ms: 1_704_067_200_000,
            site: "site=0".into(),
            count: 2,
            min: 1.0,
            max: 3.0,
            sum: ExactSum(4_000_000_000),
            threshold_breaches: 1,
        };
        let mut buffer = Vec::new();
        aggregate_line(&mut buffer, &aggregate, catalog);
        let line = String::from_utf8(buffer).unwrap();
        let metric = catalog.name(MetricId(0));
        assert_eq!(
            line,
            format!(
                "iotpipe_aggregate,device_id=dev\\ 1\\,a\\=b,metric={metric},site=site\\=0 \
                 count=2i,min=1,max=3,mean=2,threshold_breaches=1i 1704067200000\n"
            )
        );
    }
}
