//! Enrichment while the registry changes under a running dataflow: each message sees the entry
//! in force at its own time, whether the change arrived before or after the device was cached.

use std::sync::Arc;

use iotpipe::dataflow::model::{DeviceId, DeviceInfo, MetricId, Reading, TimedMessage};
use iotpipe::dataflow::registry::RegistryChange;
use iotpipe::dataflow::{Enrich, RegistryUpdate, ResolveRegistry, WindowConfig};
use iotpipe::io::sources::inputs::VecInput;
use timely::dataflow::ProbeHandle;
use timely::dataflow::operators::capture::Event;
use timely::dataflow::operators::{Capture, Probe};

fn info(site: &str) -> Arc<DeviceInfo> {
    Arc::new(DeviceInfo {
        device_type: "thermostat".into(),
        firmware: "1".into(),
        schema: "v1".into(),
        org: "org".into(),
        site: site.into(),
        building: "B1".into(),
        model: "TH".into(),
        thresholds: Vec::new(),
    })
}

/// Sends a registry line's change: its device, places and model.
fn change(
    registry: &mut VecInput<u64, RegistryUpdate>,
    device: &str,
    info: Option<Arc<DeviceInfo>>,
    effective_ms: u64,
) {
    let change = RegistryChange {
        device_id: DeviceId::from(device),
        effective_ms,
        info,
    };
    for update in change.to_updates() {
        registry.send(update);
    }
}

fn message(device: &str, ts_ms: u64) -> TimedMessage {
    TimedMessage {
        device_id: DeviceId::from(device),
        ts_ms,
        watermark_ms: ts_ms,
        watermark_ceiling_ms: u64::MAX,
        readings: smallvec::smallvec![Reading {
            metric: MetricId(0),
            ts_ms,
            value: 1.0,
        }],
    }
}

#[test]
fn registry_changes_apply_from_their_time_on_while_running() {
    let (enriched, dead) = timely::execute_directly(|worker| {
        let mut messages: VecInput<u64, TimedMessage> = VecInput::new();
        let mut registry: VecInput<u64, RegistryUpdate> = VecInput::new();
        let probe = ProbeHandle::new();
        let (enriched, dead) = worker.dataflow::<u64, _, _>(|scope| {
            let arranged = registry.to_stream(scope).resolve_registry();
            let (enriched, dead) = messages
                .to_stream(scope)
                .enrich(&arranged, WindowConfig::default());
            (enriched.probe_with(&probe).capture(), dead.capture())
        });
        let mut run_to = |messages: &mut VecInput<u64, TimedMessage>,
                          registry: &mut VecInput<u64, RegistryUpdate>,
                          t: u64| {
            messages.advance_to(t);
            registry.advance_to(t);
            while probe.less_than(&t) {
                worker.step();
            }
        };
        change(&mut registry, "dev-a", Some(info("s1")), 0);
        messages.send(message("dev-a", 500));
        messages.send(message("dev-b", 500));
        run_to(&mut messages, &mut registry, 1_000);
        // dev-a is cached now; it moves at 2000 and leaves at 4000, dev-b joins at 2000.
        change(&mut registry, "dev-a", Some(info("s2")), 2_000);
        change(&mut registry, "dev-a", None, 4_000);
        change(&mut registry, "dev-b", Some(info("s3")), 2_000);
        messages.send(message("dev-a", 1_500));
        messages.send(message("dev-a", 2_500));
        messages.send(message("dev-b", 2_500));
        messages.send(message("dev-a", 4_500));
        run_to(&mut messages, &mut registry, 5_000);
        (enriched, dead)
    });
    let mut got: Vec<(String, u64, String)> = enriched
        .try_iter()
        .flat_map(|event| match event {
            Event::Messages(_, ms) => ms,
            Event::Progress(_) => Vec::new(),
        })
        .map(|m| {
            (
                m.device_id.to_string(),
                m.readings[0].ts_ms,
                m.device.site.clone(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("dev-a".to_string(), 500, "s1".to_string()),
            ("dev-a".to_string(), 1_500, "s1".to_string()),
            ("dev-a".to_string(), 2_500, "s2".to_string()),
            ("dev-b".to_string(), 2_500, "s3".to_string()),
        ]
    );
    let mut dead: Vec<String> = dead
        .try_iter()
        .flat_map(|event| match event {
            Event::Messages(_, d) => d,
            Event::Progress(_) => Vec::new(),
        })
        .map(|d| d.detail)
        .collect();
    dead.sort();
    assert_eq!(
        dead,
        [
            "not in the registry at 4500 ms",
            "not in the registry at 500 ms"
        ]
    );
}

/// A correction arrives after the registry input has passed its effective time (as a live
/// change does in `run`, whose registry input runs ahead of the messages): messages looked up
/// after it arrives get the corrected entry from its effective time on; earlier times keep the
/// entry they had.
#[test]
fn a_correction_known_late_holds_from_its_effective_time_for_messages_after_it() {
    let (enriched, _) = timely::execute_directly(|worker| {
        let mut messages: VecInput<u64, TimedMessage> = VecInput::new();
        let mut registry: VecInput<u64, RegistryUpdate> = VecInput::new();
        let probe = ProbeHandle::new();
        let registry_probe = ProbeHandle::new();
        let (enriched, dead) = worker.dataflow::<u64, _, _>(|scope| {
            let arranged = registry.to_stream(scope).resolve_registry();
            arranged.stream.clone().probe_with(&registry_probe);
            let (enriched, dead) = messages
                .to_stream(scope)
                .enrich(&arranged, WindowConfig::default());
            (enriched.probe_with(&probe).capture(), dead.capture())
        });
        change(&mut registry, "dev-a", Some(info("s1")), 0);
        // The registry input runs ahead of the messages, as `run` advances it.
        registry.advance_to(60_000);
        messages.send(message("dev-a", 1_000));
        messages.advance_to(2_000);
        while probe.less_than(&2_000) {
            worker.step();
        }
        // Known at 60 s: the device has been at s2 since 3 s, and at s3 since 5 s.
        change(&mut registry, "dev-a", Some(info("s2")), 3_000);
        change(&mut registry, "dev-a", Some(info("s3")), 5_000);
        registry.advance_to(61_000);
        while registry_probe.less_than(&61_000) {
            worker.step();
        }
        for ts_ms in [2_500, 3_500, 5_500] {
            messages.send(message("dev-a", ts_ms));
        }
        messages.advance_to(10_000);
        while probe.less_than(&10_000) {
            worker.step();
        }
        (enriched, dead)
    });
    let mut got: Vec<(u64, String)> = enriched
        .try_iter()
        .flat_map(|event| match event {
            Event::Messages(_, ms) => ms,
            Event::Progress(_) => Vec::new(),
        })
        .map(|m| (m.readings[0].ts_ms, m.device.site.clone()))
        .collect();
    got.sort();
    let want = [(1_000, "s1"), (2_500, "s1"), (3_500, "s2"), (5_500, "s3")];
    assert_eq!(got, want.map(|(t, s)| (t, s.to_string())).to_vec());
}
