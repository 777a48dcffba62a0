//! The metadata store: PostgreSQL, through a pool of `tokio-postgres` connections.
//!
//! What it holds (see `migrations/`): the place hierarchy (org > site > building, open to more
//! levels), the equipment catalogue, devices, every version of every entity with the event
//! time it took effect (`history`), and the ordered, gap-free log of committed changes
//! (`change_log`) that the dataflow follows. iotpipe applies its own migrations, in order,
//! each once, when it opens the store.
//!
//! [`entities`] says what each entity holds and checks it, [`mod@write`] and [`mod@read`] store and
//! read them (each write one transaction that numbers its change in the log), and
//! [`registry`] converts the JSON Lines registry `replay` and the registry topic take.
//! [`alert_state`] keeps silences, acknowledgements and the alert events recorded.

pub mod alert_state;
pub mod entities;
pub mod read;
pub mod registry;
pub mod write;

use serde::{Deserialize, Serialize};
use tokio_postgres::NoTls;

/// How to reach the store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// The database, as a URL (`postgresql://user@host:5432/dbname`) or libpq key-value
    /// string (`host=... user=... dbname=...`), without the password.
    pub url: String,
    /// The environment variable holding the password (none: the server trusts the user).
    #[serde(default)]
    pub password_env: Option<String>,
    /// Connections the pool keeps at most.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// How often a follower of the change log (`iotpipe run`) asks for new entries (ms).
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
}

fn default_max_connections() -> usize {
    4
}

fn default_poll_interval_ms() -> u64 {
    100
}

impl StoreConfig {
    /// A configuration for `url` with the other fields at their defaults.
    pub fn url(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            password_env: None,
            max_connections: default_max_connections(),
            poll_interval_ms: default_poll_interval_ms(),
        }
    }
}

/// The store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A setting cannot work.
    #[error("{field}: {message}")]
    Config {
        /// The field (`store.url`, ...).
        field: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// No connection could be had from the pool.
    #[error("store.url: cannot connect to the metadata store: {0}")]
    Connect(String),
    /// A statement failed.
    #[error("metadata store: {what}: {source}")]
    Query {
        /// What was being done.
        what: &'static str,
        /// What PostgreSQL said.
        source: tokio_postgres::Error,
    },
}

impl StoreError {
    pub(crate) fn query(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Self {
        move |source| Self::Query { what, source }
    }
}

/// The migrations, in order: version, name, SQL. Never edit one that has shipped; add the next.
const MIGRATIONS: [(i32, &str, &str); 2] = [
    (1, "metadata", include_str!("migrations/0001_metadata.sql")),
    (
        2,
        "alert_state",
        include_str!("migrations/0002_alert_state.sql"),
    ),
];

/// An open store: a pool of connections to a migrated database.
#[derive(Clone)]
pub struct Store {
    pool: deadpool_postgres::Pool,
}

impl Store {
    /// Opens the store `config` names (the password read through `env`) and applies the
    /// migrations it lacks.
    pub async fn open(
        config: &StoreConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, StoreError> {
        let mut pg: tokio_postgres::Config =
            config.url.parse().map_err(|e| StoreError::Config {
                field: "store.url",
                message: format!(
                    "{e} (use postgresql://USER@HOST:PORT/DBNAME or host=... user=... dbname=...)"
                ),
            })?;
        if let Some(name) = &config.password_env {
            let password = env(name).ok_or_else(|| StoreError::Config {
                field: "store.password_env",
                message: format!("${name} is not set"),
            })?;
            pg.password(password);
        }
        if config.max_connections == 0 {
            return Err(StoreError::Config {
                field: "store.max_connections",
                message: "must be at least 1 (default 4)".into(),
            });
        }
        let manager = deadpool_postgres::Manager::from_config(
            pg,
            NoTls,
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Fast,
            },
        );
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(config.max_connections)
            .build()
            .map_err(|e| StoreError::Connect(e.to_string()))?;
        let store = Self { pool };
        store.migrate().await?;
        Ok(store)
    }

    /// A connection from the pool.
    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::Connect(e.to_string()))
    }

    /// Applies the migrations the database lacks, each in its own transaction, under an
    /// advisory lock so that processes opening the store at once apply each exactly once.
    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        for (version, name, sql) in MIGRATIONS {
            let tx = client
                .transaction()
                .await
                .map_err(StoreError::query("starting a migration"))?;
            // One lock for all of iotpipe's migrations (the number is arbitrary, fixed), taken
            // before anything else: two processes creating the table at once collide.
            tx.execute("SELECT pg_advisory_xact_lock(7001001)", &[])
                .await
                .map_err(StoreError::query("locking the migrations"))?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS iotpipe_migrations (
                     version    integer PRIMARY KEY,
                     name       text NOT NULL,
                     applied_at timestamptz NOT NULL DEFAULT now()
                 )",
            )
            .await
            .map_err(StoreError::query("creating the migrations table"))?;
            let applied = tx
                .query_opt(
                    "SELECT 1 FROM iotpipe_migrations WHERE version = $1",
                    &[&version],
                )
                .await
                .map_err(StoreError::query("reading the migrations applied"))?
                .is_some();
            if !applied {
                tx.batch_execute(sql)
                    .await
                    .map_err(StoreError::query("applying a migration"))?;
                tx.execute(
                    "INSERT INTO iotpipe_migrations (version, name) VALUES ($1, $2)",
                    &[&version, &name],
                )
                .await
                .map_err(StoreError::query("recording a migration"))?;
                tracing::info!(version, name, "metadata store migrated");
            }
            tx.commit()
                .await
                .map_err(StoreError::query("committing a migration"))?;
        }
        Ok(())
    }

    /// The migrations applied, in order.
    pub async fn migrations(&self) -> Result<Vec<i32>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT version FROM iotpipe_migrations ORDER BY version",
                &[],
            )
            .await
            .map_err(StoreError::query("reading the migrations applied"))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}
