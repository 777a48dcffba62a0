//! The live view in a terminal: a status line, or the whole screen.

use std::fmt::Write as _;

use super::LiveStats;
use crate::dataflow::model::DeadLetterReason;

impl LiveStats {
    /// One status line.
    pub fn line(&self, elapsed_s: f64) -> String {
        format!(
            "t={elapsed_s:.0}s msgs={} rate={:.0}/s windows={} dead={} late={} breaches={} anomalies={} open_alerts={}",
            self.totals.ingest.messages,
            self.messages_per_s(),
            self.totals.windows,
            self.totals.dead_letter_total(),
            self.totals.late,
            self.totals.threshold_breaches,
            self.totals.anomaly_total(),
            self.open_alerts.len(),
        )
    }

    /// The full-screen view.
    pub fn screen(&self, elapsed_s: f64, devices: usize) -> String {
        let t = &self.totals;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "iotpipe demo: {devices} simulated devices, {elapsed_s:.0} s (Ctrl-C to stop)\n"
        );
        let _ = writeln!(
            s,
            "  throughput        {:>10.0} messages/s",
            self.messages_per_s()
        );
        let _ = writeln!(s, "  messages          {:>10}", t.ingest.messages);
        let _ = writeln!(s, "  readings          {:>10}", t.ingest.readings);
        let _ = writeln!(s, "  windows closed    {:>10}", t.windows);
        let _ = writeln!(s, "  late readings     {:>10}", t.late);
        let _ = writeln!(s, "  out of range      {:>10}", t.ingest.out_of_range);
        let _ = writeln!(s, "  threshold breaches{:>10}", t.threshold_breaches);
        let _ = writeln!(s, "  anomalies         {:>10}", t.anomaly_total());
        for (kind, n) in &t.anomalies {
            let _ = writeln!(s, "    {:<20}{n:>8}", kind.code());
        }
        let _ = writeln!(s, "\n  dead letters      {:>10}", t.dead_letter_total());
        for reason in DeadLetterReason::ALL {
            if let Some(n) = t.dead_letters.get(&reason) {
                let _ = writeln!(s, "    {:<20}{n:>8}", reason.code());
            }
        }
        let open = self.open_alerts();
        let _ = writeln!(s, "\n  open alerts       {:>10}", open.len());
        if open.is_empty() {
            let _ = writeln!(
                s,
                "    (faults start a few minutes in; the scorer learns for three windows first)"
            );
        }
        for a in open.iter().take(8) {
            let subject = a.device_id.as_deref().unwrap_or(&a.site);
            let _ = writeln!(
                s,
                "    {:<9}{:<26}{subject:<14}{}",
                a.severity.code(),
                a.rule,
                a.site
            );
        }
        let mut sites: Vec<(&String, &u64)> = self.busiest.iter().collect();
        sites.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let _ = writeln!(s, "\n  busiest sites (readings in the last closed window)");
        if sites.is_empty() {
            let _ = writeln!(
                s,
                "    (the first window closes a minute and the lateness bound after the start)"
            );
        }
        for (site, n) in sites.into_iter().take(5) {
            let _ = writeln!(s, "    {site:<20}{n:>8}");
        }
        s
    }
}
