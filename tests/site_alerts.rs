//! Outage alerts: when most of a building's or a site's devices go silent at once, one alert
//! for the place replaces their per-device silence alerts (a site's explains its buildings');
//! other places and other causes pass through.

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
    info_in(site, "")
}

fn info_in(site: &str, building: &str) -> Arc<DeviceInfo> {
    Arc::new(DeviceInfo {
        site: site.into(),
        building: building.into(),
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

/// Events of the correlation over `steps`: at each time, the activity heard and the silence
/// events (device, building, kind, ts).
type Step = (u64, Vec<DeviceActivity>, Vec<AlertEvent>);

fn correlate(steps: Vec<Step>) -> Vec<AlertEvent> {
    let captured = timely::execute_directly(move |worker| {
        let mut events: VecInput<u64, AlertEvent> = VecInput::new();
        let mut activity: VecInput<u64, DeviceActivity> = VecInput::new();
        let captured = worker.dataflow::<u64, _, _>(|scope| {
            let activity = activity.to_stream(scope);
            let no_controls = timely::dataflow::operators::ToStream::to_stream(
                Vec::<iotpipe::dataflow::alert::AlertControl>::new(),
                scope,
            );
            events
                .to_stream(scope)
                .correlate_sites(activity, no_controls, Arc::new(AlertConfig::default()))
                .capture()
        });
        for (time, heard, silences) in steps {
            events.advance_to(time);
            activity.advance_to(time);
            for a in heard {
                activity.send(a);
            }
            for e in silences {
                events.send(e);
            }
        }
        drop(events);
        drop(activity);
        captured
    });
    captured
        .try_iter()
        .flat_map(|e| match e {
            Event::Messages(_, data) => data,
            Event::Progress(_) => Vec::new(),
        })
        .collect()
}

#[test]
fn most_of_a_site_silent_is_one_site_alert() {
    // Site A has 4 devices, site B 4; B loses one device, A three at once.
    let mut heard_all = Vec::new();
    for d in 0..4 {
        heard_all.push(heard(&format!("a{d}"), "A", 59_000));
        heard_all.push(heard(&format!("b{d}"), "B", 59_000));
    }
    let mut dark = vec![silence("b0", "B", AlertEventKind::Opened, 100_000)];
    for d in 0..3 {
        dark.push(silence(
            &format!("a{d}"),
            "A",
            AlertEventKind::Opened,
            100_000 + d,
        ));
    }
    // A's devices come back.
    let back = (0..3)
        .map(|d| silence(&format!("a{d}"), "A", AlertEventKind::Resolved, 200_000))
        .collect();
    let out = correlate(vec![
        (0, heard_all, Vec::new()),
        (120_000, Vec::new(), dark),
        (240_000, Vec::new(), back),
    ]);
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

#[test]
fn a_dark_building_is_one_building_alert_and_a_dark_site_explains_its_buildings() {
    let in_building = |device: &str, building: &str, event, ts_ms| AlertEvent {
        building: building.into(),
        ..silence(device, "A", event, ts_ms)
    };
    // Site A: buildings B1 and B2 of 4 devices each.
    let mut heard = Vec::new();
    for b in ["B1", "B2"] {
        for d in 0..4 {
            heard.push(DeviceActivity {
                device: info_in("A", b),
                ..self::heard(&format!("{b}-{d}"), "A", 59_000)
            });
        }
    }
    let dark = |building: &str, event, ts_ms| -> Vec<AlertEvent> {
        (0..3)
            .map(|d| in_building(&format!("{building}-{d}"), building, event, ts_ms))
            .collect()
    };
    use AlertEventKind::{Opened, Resolved};
    let out = correlate(vec![
        (0, heard, Vec::new()),
        // B1 goes dark: 3 of its 4 devices, 3 of the site's 8.
        (120_000, Vec::new(), dark("B1", Opened, 100_000)),
        // Then B2: the site is 6 of 8 dark; its alert explains B2's.
        (240_000, Vec::new(), dark("B2", Opened, 200_000)),
        // Everything comes back.
        (
            360_000,
            Vec::new(),
            [dark("B1", Resolved, 300_000), dark("B2", Resolved, 300_000)].concat(),
        ),
    ]);
    let summary: Vec<(Cause, &str, AlertEventKind, u64)> = out
        .iter()
        .map(|e| (e.cause, e.building.as_str(), e.event, e.ts_ms))
        .collect();
    assert_eq!(
        summary,
        [
            (Cause::Building, "B1", Opened, 100_000),
            (Cause::Site, "", Opened, 200_000),
            (Cause::Site, "", Resolved, 300_000),
            (Cause::Building, "B1", Resolved, 300_000),
        ],
        "{out:#?}"
    );
    assert_eq!(out[0].rule, "building-silent");
    assert_eq!(out[0].value, Some(0.75));
    assert_eq!(out[0].alert_id, "A/B1/building/100000");
    assert!(
        out.iter().all(|e| e.device_id.is_none()),
        "device alerts replaced: {out:#?}"
    );
}
