//! The device dimension: every device's versions over event time (valid from, valid to), as
//! the metadata store's history resolves them, so that data can be attributed to the places
//! its device was in at the data's time, and an analyst can join rollups to the hierarchy as of
//! any date.

use rustc_hash::FxHashMap;
use sha2::{Digest, Sha256};

use crate::dataflow::metadata::{DeviceVersion, MetadataHistory};
use crate::dataflow::model::TimeMs;

use super::rollup::{HOUR_MS, Places};

/// The levels every table has, in this order; other kinds of place follow, sorted.
pub const FIXED_LEVELS: [&str; 3] = ["org", "site", "building"];

/// One version of a device over `[valid_from_ms, valid_to_ms)`.
#[derive(Clone, Debug, PartialEq)]
pub struct DimensionRow {
    /// The device.
    pub device_id: String,
    /// From when it holds (inclusive).
    pub valid_from_ms: TimeMs,
    /// Until when (exclusive); none: still.
    pub valid_to_ms: Option<TimeMs>,
    /// What the device was then.
    pub version: DeviceVersion,
}

impl DimensionRow {
    fn holds_at(&self, ts_ms: TimeMs) -> bool {
        self.valid_from_ms <= ts_ms && self.valid_to_ms.is_none_or(|to| ts_ms < to)
    }

    fn overlaps(&self, from_ms: TimeMs, to_ms: TimeMs) -> bool {
        self.valid_from_ms < to_ms && self.valid_to_ms.is_none_or(|to| from_ms < to)
    }
}

/// Every device's versions, sorted by device and time.
#[derive(Clone, Debug, Default)]
pub struct Dimension {
    rows: Vec<DimensionRow>,
    /// Each device's rows, as a range of `rows`.
    by_device: FxHashMap<String, (usize, usize)>,
    /// The kinds of place beyond org, site and building, sorted.
    extra_levels: Vec<String>,
}

impl Dimension {
    /// The dimension of `history`: a row per span over which a device's entry (model, type,
    /// firmware, schema, every level of its place) stays the same; a span in which it was not
    /// registered (removed, decommissioned, its place or model missing) has no row.
    pub fn of(history: &MetadataHistory) -> Self {
        let mut rows: Vec<DimensionRow> = Vec::new();
        let mut by_device = FxHashMap::default();
        let mut extra: Vec<String> = Vec::new();
        for device_id in history.device_ids() {
            let first = rows.len();
            let mut open: Option<DimensionRow> = None;
            for at in history.change_times(device_id) {
                let version = history.device_version_at(device_id, at);
                if open.as_ref().map(|row| &row.version) == version.as_ref() {
                    continue;
                }
                if let Some(mut row) = open.take() {
                    row.valid_to_ms = Some(at);
                    rows.push(row);
                }
                open = version.map(|version| DimensionRow {
                    device_id: device_id.to_string(),
                    valid_from_ms: at,
                    valid_to_ms: None,
                    version,
                });
            }
            rows.extend(open);
            for row in &rows[first..] {
                for (kind, _) in &row.version.levels {
                    if !FIXED_LEVELS.contains(&kind.as_str()) && !extra.contains(kind) {
                        extra.push(kind.clone());
                    }
                }
            }
            if rows.len() > first {
                by_device.insert(device_id.to_string(), (first, rows.len()));
            }
        }
        extra.sort();
        Self {
            rows,
            by_device,
            extra_levels: extra,
        }
    }

    /// Every row, by device and time.
    pub fn rows(&self) -> &[DimensionRow] {
        &self.rows
    }

    /// The kinds of place beyond org, site and building, sorted.
    pub fn extra_levels(&self) -> &[String] {
        &self.extra_levels
    }

    fn of_device(&self, device_id: &str) -> &[DimensionRow] {
        self.by_device
            .get(device_id)
            .map_or(&[][..], |&(from, to)| &self.rows[from..to])
    }

    /// The device's version at `ts_ms`, if it was registered then.
    pub fn at(&self, device_id: &str, ts_ms: TimeMs) -> Option<&DimensionRow> {
        let rows = self.of_device(device_id);
        let after = rows.partition_point(|row| row.valid_from_ms <= ts_ms);
        rows[..after].last().filter(|row| row.holds_at(ts_ms))
    }

    /// Whether the device's version changes strictly inside the hour starting at
    /// `hour_start_ms`: its data of that hour then belongs to more than one place.
    pub fn changes_within_hour(&self, device_id: &str, hour_start_ms: TimeMs) -> bool {
        let end = hour_start_ms + HOUR_MS;
        let inside = |t: TimeMs| hour_start_ms < t && t < end;
        self.of_device(device_id)
            .iter()
            .any(|row| inside(row.valid_from_ms) || row.valid_to_ms.is_some_and(inside))
    }

    /// The levels of a day's device tables: org, site, building, then the other kinds of place
    /// some device had during `[from_ms, to_ms)`, sorted.
    pub fn levels_during(&self, from_ms: TimeMs, to_ms: TimeMs) -> Vec<String> {
        let mut levels: Vec<String> = FIXED_LEVELS.iter().map(|l| l.to_string()).collect();
        for kind in &self.extra_levels {
            let present = self
                .rows
                .iter()
                .any(|row| row.overlaps(from_ms, to_ms) && row.version.level(kind).is_some());
            if present {
                levels.push(kind.clone());
            }
        }
        levels
    }

    /// The places of `device_id` at `ts_ms`, one per level of `levels` (all none if it was not
    /// registered then).
    pub fn places_at(&self, device_id: &str, ts_ms: TimeMs, levels: &[String]) -> Places {
        let row = self.at(device_id, ts_ms);
        levels
            .iter()
            .map(|level| row.and_then(|r| r.version.level(level)).map(str::to_owned))
            .collect()
    }

    /// A fingerprint of what attributes data of `[from_ms, to_ms)`: each device's places over
    /// the span, cut to it. A change elsewhere in time leaves it as it was.
    pub fn fingerprint_during(&self, from_ms: TimeMs, to_ms: TimeMs) -> String {
        let mut hash = Sha256::new();
        for row in self.rows.iter().filter(|row| row.overlaps(from_ms, to_ms)) {
            let from = row.valid_from_ms.max(from_ms);
            let to = row.valid_to_ms.map_or(to_ms, |t| t.min(to_ms));
            hash.update(format!("{}\t{from}\t{to}", row.device_id));
            for (kind, name) in &row.version.levels {
                hash.update(format!("\t{kind}={name}"));
            }
            hash.update("\n");
        }
        hex::encode(&hash.finalize()[..16])
    }

    /// A fingerprint of every row and everything in it.
    pub fn fingerprint(&self) -> String {
        let mut hash = Sha256::new();
        for row in &self.rows {
            hash.update(format!(
                "{}\t{}\t{:?}\t{:?}\t{:?}\n",
                row.device_id,
                row.valid_from_ms,
                row.valid_to_ms,
                row.version.levels,
                row.version.info
            ));
        }
        hex::encode(&hash.finalize()[..16])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataflow::metadata::{Entity, EntityKey, PlaceRecord};
    use crate::dataflow::registry::parse_registry;
    use crate::dataflow::schema::SchemaSet;

    const LINE: &str = r#"{"device_id":"dev-1","device_type":"thermostat","firmware":"1.0.0","schema":"v1","org":"org-000","site":"site-0001","building":"B1","model":"TH-100"}"#;

    fn history(lines: &[String]) -> MetadataHistory {
        let catalog = SchemaSet::embedded().catalog().clone();
        MetadataHistory::of_changes(&parse_registry(&lines.join("\n"), &catalog).unwrap())
    }

    fn at(ms: u64, line: &str) -> String {
        line.replace(
            "{\"device_id\"",
            &format!("{{\"effective_ms\":{ms},\"device_id\""),
        )
    }

    #[test]
    fn versions_span_from_change_to_change_and_gaps_have_no_row() {
        let moved = at(90 * 60_000, &LINE.replace("site-0001", "site-0002"));
        let firmware = at(
            100 * 60_000,
            &LINE
                .replace("site-0001", "site-0002")
                .replace("1.0.0", "1.1.0"),
        );
        let deleted = r#"{"device_id":"dev-1","effective_ms":7200000,"deleted":true}"#.to_owned();
        let back = at(3 * HOUR_MS, LINE);
        let dimension = Dimension::of(&history(&[LINE.into(), moved, firmware, deleted, back]));
        let spans: Vec<(u64, Option<u64>, Option<&str>)> = dimension
            .rows()
            .iter()
            .map(|r| (r.valid_from_ms, r.valid_to_ms, r.version.level("site")))
            .collect();
        assert_eq!(
            spans,
            vec![
                (0, Some(90 * 60_000), Some("site-0001")),
                (90 * 60_000, Some(100 * 60_000), Some("site-0002")),
                (100 * 60_000, Some(2 * HOUR_MS), Some("site-0002")),
                (3 * HOUR_MS, None, Some("site-0001")),
            ]
        );
        assert!(!dimension.changes_within_hour("dev-1", 0));
        assert!(dimension.changes_within_hour("dev-1", HOUR_MS));
        assert!(!dimension.changes_within_hour("dev-1", 2 * HOUR_MS));
        assert!(dimension.at("dev-1", 2 * HOUR_MS + 5).is_none());
        assert_eq!(
            dimension.places_at("dev-1", 95 * 60_000, &["site".into(), "zone".into()]),
            vec![Some("site-0002".to_owned()), None]
        );
        // Only the moved hour's fingerprint tells the move.
        let unmoved = Dimension::of(&history(&[LINE.into()]));
        assert_eq!(
            dimension.fingerprint_during(0, HOUR_MS),
            unmoved.fingerprint_during(0, HOUR_MS)
        );
        assert_ne!(
            dimension.fingerprint_during(HOUR_MS, 2 * HOUR_MS),
            unmoved.fingerprint_during(HOUR_MS, 2 * HOUR_MS)
        );
    }

    #[test]
    fn a_new_kind_of_place_is_a_level_from_when_it_exists() {
        let mut history = history(&[LINE.into()]);
        // A zone inside B1 from hour 5, and the device in it.
        let building = history.device_version_at("dev-1", 0).unwrap();
        assert_eq!(building.level("building"), Some("B1"));
        let place_id = crate::dataflow::metadata::building_id("org-000", "site-0001", "B1");
        history.apply(&(
            EntityKey::Place("zone-a".into()),
            Some(Entity::Place(PlaceRecord {
                kind: "zone".into(),
                parent_id: Some(place_id),
                name: "Zone A".into(),
            })),
            5 * HOUR_MS,
        ));
        let mut device = history_device(&history);
        device.place_id = "zone-a".into();
        history.apply(&(
            EntityKey::Device("dev-1".into()),
            Some(Entity::Device(device)),
            5 * HOUR_MS,
        ));
        let dimension = Dimension::of(&history);
        assert_eq!(dimension.extra_levels(), ["zone"]);
        assert_eq!(
            dimension.levels_during(0, HOUR_MS),
            ["org", "site", "building"]
        );
        assert_eq!(
            dimension.levels_during(0, 6 * HOUR_MS),
            ["org", "site", "building", "zone"]
        );
        let row = dimension.at("dev-1", 5 * HOUR_MS).unwrap();
        assert_eq!(row.version.level("zone"), Some("Zone A"));
        assert_eq!(row.version.level("site"), Some("site-0001"));
    }

    fn history_device(history: &MetadataHistory) -> crate::dataflow::metadata::DeviceRecord {
        history.device_record_at("dev-1", 0).unwrap().clone()
    }
}
