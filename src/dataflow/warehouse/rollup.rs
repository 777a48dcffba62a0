//! The warehouse's rollups: mergeable aggregates, attributed to the hierarchy as it was, and
//! grouped up the levels. Pure: rows in, rows out.
//!
//! A level above the device is a group-by over device rows, and a day is a merge of its hours,
//! because every row holds what merges exactly (count, sum, sum of squares, min, max, first and
//! last reading), never a mean.

use std::collections::BTreeMap;

use crate::dataflow::model::TimeMs;
use crate::dataflow::schema::{format_rfc3339_ms, parse_rfc3339_ms};

/// One hour in ms.
pub const HOUR_MS: TimeMs = 3_600_000;
/// One day in ms.
pub const DAY_MS: TimeMs = 24 * HOUR_MS;

/// What merges exactly over windows, hours, devices and places.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Aggregate {
    /// Readings.
    pub count: u64,
    /// Their sum.
    pub sum: f64,
    /// The sum of their squares (NaN when a window written by an iotpipe before 0.1 had none).
    pub sum_squares: f64,
    /// The smallest.
    pub min: f64,
    /// The largest.
    pub max: f64,
    /// Event time of the first (none when a window had none recorded).
    pub first_ts_ms: Option<TimeMs>,
    /// Event time of the last.
    pub last_ts_ms: Option<TimeMs>,
}

impl Aggregate {
    /// Adds `other` in: counts, sums and squares add; extremes and first and last are taken.
    pub fn merge(&mut self, other: &Aggregate) {
        self.count += other.count;
        self.sum += other.sum;
        self.sum_squares += other.sum_squares;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.first_ts_ms = merge_option(self.first_ts_ms, other.first_ts_ms, TimeMs::min);
        self.last_ts_ms = merge_option(self.last_ts_ms, other.last_ts_ms, TimeMs::max);
    }
}

fn merge_option(
    a: Option<TimeMs>,
    b: Option<TimeMs>,
    pick: fn(TimeMs, TimeMs) -> TimeMs,
) -> Option<TimeMs> {
    match (a, b) {
        (Some(a), Some(b)) => Some(pick(a, b)),
        // A piece without a first time leaves the whole without one: unknown, not wrong.
        _ => None,
    }
}

/// The places a device's data is attributed to: one name per level (`org`, `site`,
/// `building`, then the day's other levels in order), none where the device had no place of
/// that level, or was not registered, at the data's time.
pub type Places = Vec<Option<String>>;

/// A device's aggregate over a period (an hour or a day), at the places it belonged to then.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DeviceKey {
    /// Start of the period.
    pub period_start_ms: TimeMs,
    /// The device.
    pub device_id: String,
    /// The metric's name.
    pub metric: String,
    /// Its places (see [`Places`]).
    pub places: Places,
}

/// An aggregate at one level of the hierarchy: the first `depth` of the places (1: org, 2:
/// site, 3: building).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PlaceKey {
    /// Start of the period.
    pub period_start_ms: TimeMs,
    /// Org, site, building, as deep as the level goes.
    pub places: Places,
    /// The metric's name.
    pub metric: String,
}

/// The levels above the device that get tables, with the depth of their key.
pub const LEVELS: [(&str, usize); 3] = [("building", 3), ("site", 2), ("org", 1)];

/// Rows keyed and sorted, as they are written.
pub type Rows<K> = BTreeMap<K, Aggregate>;

/// Adds `aggregate` to the row of `key`.
pub fn add<K: Ord>(rows: &mut Rows<K>, key: K, aggregate: &Aggregate) {
    rows.entry(key)
        .and_modify(|a| a.merge(aggregate))
        .or_insert(*aggregate);
}

/// The rows of one level (`depth` places deep) over device rows.
pub fn group_places(devices: &Rows<DeviceKey>, depth: usize) -> Rows<PlaceKey> {
    let mut rows = Rows::new();
    for (key, aggregate) in devices {
        let place = PlaceKey {
            period_start_ms: key.period_start_ms,
            places: key.places[..depth].to_vec(),
            metric: key.metric.clone(),
        };
        add(&mut rows, place, aggregate);
    }
    rows
}

/// A row's key with its period: what moving an hour's row into its day changes.
pub trait Period: Ord + Clone {
    /// The same key for the period starting at `start_ms`.
    fn in_period(&self, start_ms: TimeMs) -> Self;
}

impl Period for DeviceKey {
    fn in_period(&self, start_ms: TimeMs) -> Self {
        DeviceKey {
            period_start_ms: start_ms,
            ..self.clone()
        }
    }
}

impl Period for PlaceKey {
    fn in_period(&self, start_ms: TimeMs) -> Self {
        PlaceKey {
            period_start_ms: start_ms,
            ..self.clone()
        }
    }
}

/// Adds hourly rows into the rows of the day starting at `day_start_ms` (a day's hours may
/// come a chunk at a time).
pub fn add_to_day<K: Period>(days: &mut Rows<K>, hours: &Rows<K>, day_start_ms: TimeMs) {
    for (key, aggregate) in hours {
        add(days, key.in_period(day_start_ms), aggregate);
    }
}

/// `YYYY-MM-DD` of the UTC day holding `ts_ms`.
pub fn date_of(ts_ms: TimeMs) -> String {
    let mut date = format_rfc3339_ms(ts_ms);
    date.truncate("YYYY-MM-DD".len());
    date
}

/// The start (epoch ms) of the UTC day `YYYY-MM-DD`, if it is one.
pub fn parse_date(date: &str) -> Option<TimeMs> {
    if date.len() != "YYYY-MM-DD".len() {
        return None;
    }
    parse_rfc3339_ms(&format!("{date}T00:00:00Z"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aggregate(count: u64, sum: f64, min: f64, max: f64, first: u64, last: u64) -> Aggregate {
        Aggregate {
            count,
            sum,
            sum_squares: sum * sum,
            min,
            max,
            first_ts_ms: Some(first),
            last_ts_ms: Some(last),
        }
    }

    #[test]
    fn dates_round_trip_and_reject_what_is_not_a_day() {
        assert_eq!(date_of(0), "1970-01-01");
        assert_eq!(date_of(1_704_067_200_000), "2024-01-01");
        assert_eq!(date_of(1_709_164_800_000), "2024-02-29");
        for day in [0, 1, 59, 60, 365, 10_957, 19_723, 19_782, 20_000, 30_000] {
            let start = day * DAY_MS;
            assert_eq!(parse_date(&date_of(start)), Some(start));
        }
        for bad in [
            "2024-02-30",
            "2023-02-29",
            "2024-13-01",
            "2024-1-01",
            "x",
            "2024-01-01-",
        ] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn levels_and_days_are_group_bys_over_device_hours() {
        let place = |site: &str, building: &str| {
            vec![
                Some("org".to_owned()),
                Some(site.to_owned()),
                Some(building.to_owned()),
            ]
        };
        let mut hours = Rows::new();
        for (hour, device, site, building, a) in [
            (0, "d1", "s1", "b1", aggregate(2, 3.0, 1.0, 2.0, 10, 20)),
            (0, "d2", "s1", "b2", aggregate(1, 5.0, 5.0, 5.0, 15, 15)),
            (
                1,
                "d1",
                "s2",
                "b3",
                aggregate(3, 6.0, 1.0, 3.0, HOUR_MS, HOUR_MS + 9),
            ),
        ] {
            let key = DeviceKey {
                period_start_ms: hour * HOUR_MS,
                device_id: device.into(),
                metric: "t".into(),
                places: place(site, building),
            };
            add(&mut hours, key, &a);
        }
        let sites = group_places(&hours, 2);
        let s1 = &sites[&PlaceKey {
            period_start_ms: 0,
            places: vec![Some("org".into()), Some("s1".into())],
            metric: "t".into(),
        }];
        assert_eq!((s1.count, s1.sum, s1.min, s1.max), (3, 8.0, 1.0, 5.0));
        assert_eq!((s1.first_ts_ms, s1.last_ts_ms), (Some(10), Some(20)));
        let mut orgs_by_day = Rows::new();
        add_to_day(&mut orgs_by_day, &group_places(&hours, 1), 0);
        assert_eq!(orgs_by_day.len(), 1);
        let org = orgs_by_day.values().next().unwrap();
        assert_eq!((org.count, org.sum, org.max), (6, 14.0, 5.0));
        assert_eq!(org.last_ts_ms, Some(HOUR_MS + 9));
        // The device moved between hours: two rows for the day, one per place.
        let mut devices_by_day = Rows::new();
        add_to_day(&mut devices_by_day, &hours, 0);
        assert_eq!(devices_by_day.len(), 3);
    }
}
