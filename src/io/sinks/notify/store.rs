//! The metadata store as a channel: every alert event is recorded (silenced ones too, which
//! no other channel sends), once by id, with each alert's latest state, for the alert API and
//! the dashboard.

use super::{Channel, Failure, Notification};
use crate::dataflow::alert::Severity;
use crate::io::connect::store::alert_state::RecordError;
use crate::io::connect::store::{Store, StoreConfig, StoreError};

/// Records alert events in the store, opening it on first use (a store that is down when the
/// command starts is retried like any receiver).
pub struct StoreChannel {
    config: StoreConfig,
    store: Option<Store>,
}

impl StoreChannel {
    /// A channel to the store `config` names.
    pub fn new(config: StoreConfig) -> Self {
        Self {
            config,
            store: None,
        }
    }
}

fn failure_of(error: StoreError) -> Failure {
    match error {
        StoreError::Config { field, message } => Failure::sink(field, message),
        // A lost connection or a statement cut short: try again.
        other => Failure::transient(other.to_string()),
    }
}

impl Channel for StoreChannel {
    fn name(&self) -> &str {
        "store"
    }
    fn min_severity(&self) -> Severity {
        Severity::Warning
    }
    fn overdue_only(&self) -> bool {
        false
    }
    fn takes(&self, _n: &Notification) -> bool {
        true
    }
    async fn deliver(&mut self, n: &Notification) -> Result<(), Failure> {
        if self.store.is_none() {
            let store = Store::open(&self.config, |name| std::env::var(name).ok())
                .await
                .map_err(failure_of)?;
            self.store = Some(store);
        }
        let store = self.store.as_ref().expect("opened above");
        let line: serde_json::Value =
            serde_json::from_str(&n.json).map_err(|e| Failure::record(format!("not JSON: {e}")))?;
        match store.record_alert_event(&line).await {
            Ok(_) => Ok(()),
            Err(RecordError::NotAnEvent(field)) => {
                Err(Failure::record(format!("not an alert event: no `{field}`")))
            }
            Err(RecordError::Store(e)) => Err(failure_of(e)),
        }
    }
}
