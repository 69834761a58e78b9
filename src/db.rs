//! Postgres: the pool, the migrations, and which database errors are transient. Shared by
//! every table owner (the ledger, dunning, sync, ops); the tables themselves belong to
//! those modules.

use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::config::DatabaseSettings;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl DbError {
    /// True for failures that go away by themselves (connection lost, server restarting,
    /// serialization conflicts): retry with backoff, never dead-letter.
    pub fn is_transient(&self) -> bool {
        match self {
            DbError::Sqlx(e) => is_transient(e),
            DbError::Migrate(_) => false,
        }
    }
}

fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08 connection exception, 40 transaction rollback (serialization, deadlock),
            // 53 insufficient resources, 57 operator intervention (shutdown), 58 system error.
            ["08", "40", "53", "57", "58"]
                .iter()
                .any(|class| code.starts_with(class))
        }),
        _ => false,
    }
}

/// The database handle.
#[derive(Clone, Debug)]
pub struct Db {
    pool: PgPool,
}

impl Db {
    /// A lazily connecting pool: start-up does not fail while the database is still coming up.
    pub fn connect_lazy(settings: &DatabaseSettings) -> Result<Self, DbError> {
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(Duration::from_millis(settings.acquire_timeout_ms))
            .connect_lazy(settings.url.expose_secret())?;
        Ok(Self { pool })
    }

    /// Applies pending migrations. sqlx holds a Postgres advisory lock while migrating, so
    /// instances starting together apply each migration once.
    pub async fn migrate(&self) -> Result<(), DbError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// For the other table owners (dunning, sync); nothing else reaches the pool.
    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn ping(&self) -> Result<(), DbError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
