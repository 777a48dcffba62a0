//! Corrections reach open windows: at close, a window's readings are attributed to the version
//! of their device in force over them, as the registry knows it then.
//!
//! A reading is enriched with the version its device has at its message's time, as known when
//! the message arrives. A correction known later (the device was at another site since 10:00,
//! recorded at 10:05) changes that answer for readings already folded into open windows. The
//! window does not keep its readings, only their aggregate and the span of their messages'
//! times; so it is attributed again whole, to the version in force over that span:
//!
//! - exactly, when one version is in force over the whole span. That is every window whose
//!   messages all lie on one side of each effective time the correction introduces; in
//!   particular every window when the correction replaces what a known version said from its
//!   effective time (the wrong site from 10:00), since readings enriched with different
//!   versions never share a window (see `OpenWindows::fold`);
//! - not at all, when the correction introduces an effective time strictly inside the span (a
//!   window cannot be split without its readings), or unregisters the device over it (its
//!   readings were accepted when they came). Both are logged, with the device and window.
//!
//! Threshold breaches are counted again when the version's thresholds for the metric differ and
//! the window's minimum and maximum decide the count (all inside the band: none; all outside:
//! every reading); otherwise the count stays and is logged.

use std::sync::Arc;

use crate::dataflow::metadata::lookup::{History, in_force};
use crate::dataflow::model::{DeviceId, Threshold};

use super::open::OpenWindow;

/// Attributes `window` to the version of `history` in force over its readings (see the
/// module's documentation).
pub(super) fn reattribute(device_id: &DeviceId, window: &mut OpenWindow, history: &History) {
    let (first_ms, last_ms) = window.looked_up_ms;
    let (first, last) = (in_force(history, first_ms), in_force(history, last_ms));
    let device = match (first, last) {
        (Some(first), Some(last)) if first == last => match &history[first].1 {
            Some(device) => device,
            None => {
                tracing::warn!(
                    device_id = %device_id,
                    metric = window.metric.0,
                    window_start_ms = window.start_ms,
                    "the registry now says the device was not registered over this window; its readings stay where they were counted"
                );
                return;
            }
        },
        _ => {
            tracing::warn!(
                device_id = %device_id,
                metric = window.metric.0,
                window_start_ms = window.start_ms,
                first_ms,
                last_ms,
                "a registry correction takes effect inside this window's readings; the window stays where it was counted"
            );
            return;
        }
    };
    if Arc::ptr_eq(device, &window.device) {
        return;
    }
    let before = window.device.threshold(window.metric);
    let after = device.threshold(window.metric);
    if before != after {
        match breaches_under(after, window) {
            Some(breaches) => window.breaches = breaches,
            None => tracing::warn!(
                device_id = %device_id,
                metric = window.metric.0,
                window_start_ms = window.start_ms,
                "a registry correction changes this window's threshold; its minimum and maximum do not decide the breaches, which stay as counted"
            ),
        }
    }
    window.device = Arc::clone(device);
}

/// The window's breaches of `threshold`, when its minimum and maximum decide them: a band holds
/// all of `[min, max]` or none of it.
fn breaches_under(threshold: Option<&Threshold>, window: &OpenWindow) -> Option<u64> {
    let Some(threshold) = threshold else {
        return Some(0);
    };
    let (min, max) = window.min_max();
    if !threshold.is_breached_by(min) && !threshold.is_breached_by(max) {
        Some(0)
    } else if max < threshold.min || min > threshold.max {
        Some(window.count())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::dataflow::anomaly::{Slots, WindowEvidence};
    use crate::dataflow::model::{DeviceInfo, ExactSum, MetricId, Reading, SharedDeviceInfo};

    fn info(site: &str, max: f64) -> SharedDeviceInfo {
        Arc::new(DeviceInfo {
            site: site.into(),
            thresholds: vec![(MetricId(0), Threshold { min: 0.0, max })],
            ..DeviceInfo::default()
        })
    }

    /// A window of 60 s from 60 s, with 4 readings between 10 and 20 of messages from
    /// `first_ms` to `last_ms`.
    fn window(device: &SharedDeviceInfo, first_ms: u64, last_ms: u64) -> OpenWindow {
        let mut evidence = WindowEvidence::default();
        let slots = Slots::new(60_000, 10_000);
        for (ts_ms, value) in [
            (61_000, 10.0),
            (75_000, 20.0),
            (90_000, 12.0),
            (110_000, 15.0),
        ] {
            let reading = Reading {
                metric: MetricId(0),
                ts_ms,
                value,
            };
            evidence.observe(&reading, 60_000, &slots);
        }
        OpenWindow {
            sum: ExactSum::default(),
            breaches: 0,
            evidence,
            looked_up_ms: (first_ms, last_ms),
            metric: MetricId(0),
            start_ms: 60_000,
            device: Arc::clone(device),
        }
    }

    #[test]
    fn a_window_moves_to_the_one_version_in_force_over_its_readings() {
        let (old, new) = (info("north", 50.0), info("east", 15.0));
        let history: History =
            smallvec::smallvec![(0, Some(Arc::clone(&old))), (70_000, Some(new))];
        let mut before = window(&old, 61_000, 69_000);
        reattribute(&"d".into(), &mut before, &history);
        assert_eq!(before.device.site, "north");
        let mut after = window(&old, 71_000, 119_000);
        reattribute(&"d".into(), &mut after, &history);
        assert_eq!(after.device.site, "east");
        // Threshold 15 within [10, 20]: the breaches are not decided, and stay as counted.
        assert_eq!(after.breaches, 0);
    }

    #[test]
    fn a_correction_inside_a_windows_readings_leaves_it_where_it_was_counted() {
        let old = info("north", 50.0);
        let history: History = smallvec::smallvec![
            (0, Some(Arc::clone(&old))),
            (65_000, Some(info("east", 50.0))),
        ];
        let mut straddling = window(&old, 61_000, 69_000);
        reattribute(&"d".into(), &mut straddling, &history);
        assert_eq!(straddling.device.site, "north");
    }

    #[test]
    fn breaches_are_recounted_when_the_minimum_and_maximum_decide_them() {
        let old = info("north", 50.0);
        for (max, breaches) in [(5.0, 4), (25.0, 0), (15.0, 7)] {
            let history: History = smallvec::smallvec![(0, Some(info("north", max)))];
            let mut w = window(&old, 61_000, 69_000);
            w.breaches = 7;
            reattribute(&"d".into(), &mut w, &history);
            assert_eq!(w.breaches, breaches, "max {max}");
        }
    }
}
