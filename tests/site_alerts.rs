//! Site alerts: when most of a site's devices go silent at once, one site alert replaces their
//! per-device silence alerts; other sites and other causes pass through.

use std::sync::Arc;

use iotpipe::dataflow::alert::{
    AlertConfig, AlertEvent, AlertEventKind, Cause, CorrelateSites, Severity,
};
use iotpipe::dataflow::anomaly::DeviceActivity;
use iotpipe::dataflow::model::DeviceInfo;
use iotpipe::io::sources::inputs::VecInput;
use timely::dataflow::operators::Capture;
use timely::dataflow::operators::capture::Event;

fn info(site: &str) -> Arc<DeviceInfo> {
    Arc::new(DeviceInfo {
        site: site.into(),
        ..DeviceInfo::default()
    })
}

fn heard(device: &str, site: &str, ts_ms: u64) -> DeviceActivity {
    DeviceActivity {
        device_id: device.into(),
        device: info(site),
        window_start_ms: ts_ms - ts_ms % 60_000,
        first_ts_ms: ts_ms,
        last_ts_ms: ts_ms,
        slots: 1,
        silence_timeout_ms: 20_000,
        forget_after_ms: 3_600_000,
    }
}

fn silence(device: &str, site: &str, event: AlertEventKind, ts_ms: u64) -> AlertEvent {
    AlertEvent {
        id: format!("{device}/silence/{ts_ms}/{}", event.code()),
        alert_id: format!("{device}/silence"),
        event,
        device_id: Some(device.into()),
        site: site.into(),
        org: "org".into(),
        building: "B1".into(),
        metric: None,
        rule: "device-silent".into(),
        severity: Severity::Major,
        cause: Cause::Silence,
        ts_ms,
        score: None,
        value: None,
        silenced_by: None,
        overdue: false,
        acknowledged_by: None,
    }
}

#[test]
fn most_of_a_site_silent_is_one_site_alert() {
    let captured = timely::execute_directly(|worker| {
        let mut events: VecInput<u64, AlertEvent> = VecInput::new();
        let mut activity: VecInput<u64, DeviceActivity> = VecInput::new();
        let captured = worker.dataflow::<u64, _, _>(|scope| {
            let activity = activity.to_stream(scope);
            events
                .to_stream(scope)
                .correlate_sites(activity, Arc::new(AlertConfig::default()))
                .capture()
        });
        // Site A has 4 devices, site B 4; B loses one device, A three at once.
        for d in 0..4 {
            activity.send(heard(&format!("a{d}"), "A", 59_000));
            activity.send(heard(&format!("b{d}"), "B", 59_000));
        }
        events.advance_to(120_000);
        activity.advance_to(120_000);
        events.send(silence("b0", "B", AlertEventKind::Opened, 100_000));
        for d in 0..3 {
            events.send(silence(
                &format!("a{d}"),
                "A",
                AlertEventKind::Opened,
                100_000 + d,
            ));
        }
        events.advance_to(240_000);
        activity.advance_to(240_000);
        // A's devices come back.
        for d in 0..3 {
            events.send(silence(
                &format!("a{d}"),
                "A",
                AlertEventKind::Resolved,
                200_000,
            ));
        }
        drop(events);
        drop(activity);
        captured
    });
    let out: Vec<AlertEvent> = captured
        .try_iter()
        .flat_map(|e| match e {
            Event::Messages(_, data) => data,
            Event::Progress(_) => Vec::new(),
        })
        .collect();
    let summary: Vec<(Option<String>, String, AlertEventKind)> = out
        .iter()
        .map(|e| {
            (
                e.device_id.as_ref().map(|d| d.to_string()),
                e.site.clone(),
                e.event,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (Some("b0".into()), "B".into(), AlertEventKind::Opened),
            (None, "A".into(), AlertEventKind::Opened),
            (None, "A".into(), AlertEventKind::Resolved),
        ],
        "{out:#?}"
    );
    assert_eq!(out[1].cause, Cause::Site);
    assert_eq!(out[1].ts_ms, 100_002);
    assert_eq!(out[1].value, Some(0.75));
}
