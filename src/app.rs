//! Wiring: builds the parts a role needs from the settings, binds the listeners and runs
//! until the shutdown token is cancelled.
//!
//! Every long-running task runs under `supervise` (restarted with backoff when it panics
//! or fails, and named by `/readyz` while down); the HTTP listeners are the exception,
//! they stop only on shutdown.
//!
//! Shutdown order: stop accepting and finish in-flight requests (their publishes still
//! need the broker), let every worker finish its batch and hand back what it had not
//! started, and only then close the broker connection.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use futures_util::future::BoxFuture;

use anyhow::Context;
use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminState};
use crate::config::Settings;
use crate::db::Db;
use crate::dunning::{
    schedule::Dunning,
    scheduler::{Scheduler, clients},
};
use crate::ingress;
use crate::ops::dead_letter_index;
use crate::providers::{SourceError, Sources};
use crate::queue::Broker;
use crate::supervise::{Restart, TaskExit, TaskHealth, supervise};
use crate::sync::{self, Syncer};
use crate::worker::Worker;

/// Which parts run in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    Ingress,
    Worker,
    Scheduler,
    /// Periodic pull sync of the sources that configure `sync.interval_secs`.
    Sync,
    All,
}

impl Role {
    fn ingress(self) -> bool {
        matches!(self, Role::Ingress | Role::All)
    }
    fn worker(self) -> bool {
        matches!(self, Role::Worker | Role::All)
    }
    fn scheduler(self) -> bool {
        matches!(self, Role::Scheduler | Role::All)
    }
    fn sync(self) -> bool {
        matches!(self, Role::Sync | Role::All)
    }
    fn uses_database(self) -> bool {
        self.worker() || self.scheduler() || self.sync()
    }
    fn uses_broker(self) -> bool {
        self.ingress() || self.worker() || self.sync()
    }
}

/// What every role of a process shares, built once from the settings: the sources (each
/// with its connector and its provider's API clients) and the dunning plans.
#[derive(Debug, Clone)]
pub struct Catalogue {
    pub sources: Arc<Sources>,
    pub dunning: Dunning,
}

impl Catalogue {
    pub fn new(settings: &Settings) -> Result<Self, SourceError> {
        let sources = Arc::new(Sources::from_settings(&settings.sources)?);
        let dunning = Dunning::new(&sources, &settings.sources);
        Ok(Self { sources, dunning })
    }
}

/// A started service.
pub struct Running {
    pub ingress_addr: Option<SocketAddr>,
    pub admin_addr: SocketAddr,
    pub broker: Broker,
    pub db: Db,
    tasks: JoinSet<()>,
    broker_stop: CancellationToken,
    _worker_threads: Option<WorkerThreads>,
}

pub async fn start(
    settings: &Settings,
    role: Role,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    // Install the recorder before anything counts, or the first counts are lost.
    crate::telemetry::metrics();
    let Catalogue { sources, dunning } = Catalogue::new(settings)?;
    let db = Db::connect_lazy(&settings.database)?;
    if role.uses_database() {
        db.migrate().await.context("applying migrations")?;
    }
    let health = TaskHealth::default();
    let broker_stop = CancellationToken::new();
    let broker = Broker::start_supervised(&settings.amqp, broker_stop.clone(), &health);
    let mut tasks = JoinSet::new();

    let ingress_addr = if role.ingress() {
        let listener = bind(settings.http.ingress_addr, "ingress").await?;
        let addr = listener.local_addr()?;
        let app = ingress::router(
            sources.clone(),
            broker.clone(),
            settings.http.body_limit_bytes,
            Duration::from_millis(settings.http.request_timeout_ms),
        );
        tasks.spawn(serve(
            listener,
            app,
            &settings.http,
            shutdown.clone(),
            "ingress",
        ));
        Some(addr)
    } else {
        None
    };

    let listener = bind(settings.http.admin_addr, "admin").await?;
    let admin_addr = listener.local_addr()?;
    let admin = admin::router(AdminState {
        db: db.clone(),
        broker: broker.clone(),
        tokens: settings.admin.named_tokens(),
        sources: sources.clone(),
        dunning: dunning.clone(),
        uses_database: role.uses_database(),
        uses_broker: role.uses_broker(),
        health: health.clone(),
    });
    tasks.spawn(serve(
        listener,
        admin,
        &settings.http,
        shutdown.clone(),
        "admin",
    ));

    let mut supervised = Supervised {
        tasks: &mut tasks,
        shutdown: &shutdown,
        health: &health,
    };
    if role.sync() {
        let syncer = Syncer::new(
            settings,
            db.clone(),
            Some(broker.clone()),
            sources.clone(),
            dunning.clone(),
        );
        spawn_syncs(settings, syncer, &mut supervised);
    }
    if role.scheduler() {
        let make = scheduler_task(settings, &db, &dunning, &sources, &shutdown);
        supervised.spawn("scheduler".to_owned(), None, make);
        let make = lookups_task(settings, &db, &dunning, &sources, &shutdown);
        supervised.spawn("lookups".to_owned(), None, make);
    }
    let worker_threads = if role.worker() {
        spawn_workers(
            settings,
            role,
            &db,
            &broker,
            sources,
            dunning,
            &mut supervised,
        )?
    } else {
        None
    };
    tracing::info!(?role, ?ingress_addr, %admin_addr, "subsync started");
    Ok(Running {
        ingress_addr,
        admin_addr,
        broker,
        db,
        tasks,
        broker_stop,
        _worker_threads: worker_threads,
    })
}

/// The consumers' own runtime; stopped without waiting (it may be dropped inside another
/// runtime), after `Running::wait` saw every consumer finish.
struct WorkerThreads(Option<tokio::runtime::Runtime>);

impl WorkerThreads {
    fn new() -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name("subsync-worker")
            .enable_all()
            .build()
            .context("starting the worker threads")?;
        Ok(Self(Some(runtime)))
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.0.as_ref().expect("taken only when dropped")
    }
}

impl Drop for WorkerThreads {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl Running {
    /// Waits for every part to stop (after the shutdown token was cancelled), then closes
    /// the broker connection.
    pub async fn wait(mut self) {
        while let Some(result) = self.tasks.join_next().await {
            if let Err(error) = result {
                tracing::error!(%error, "a task failed");
            }
        }
        self.broker_stop.cancel();
        // Give the supervisor a moment to close the connection cleanly.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while self.broker.is_connected() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::info!("subsync stopped");
    }
}

/// Spawns tasks under [`supervise`] into the service's task set.
struct Supervised<'a> {
    tasks: &'a mut JoinSet<()>,
    shutdown: &'a CancellationToken,
    health: &'a TaskHealth,
}

impl Supervised<'_> {
    /// Supervises `make()` as `task`: on `runtime` when given (the supervisor then restarts
    /// the task there), else on the current one.
    fn spawn<F, Fut>(&mut self, task: String, runtime: Option<&tokio::runtime::Runtime>, make: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: TaskExit + Send + 'static,
    {
        let run = supervise(
            task,
            self.shutdown.clone(),
            self.health.clone(),
            Restart::default(),
            make,
        );
        match runtime {
            Some(runtime) => {
                let running = runtime.spawn(run);
                self.tasks.spawn(async move {
                    if let Err(error) = running.await {
                        tracing::error!(%error, "a supervisor failed");
                    }
                });
            }
            None => {
                self.tasks.spawn(run);
            }
        }
    }
}

/// The worker consumers and the dead-letter indexer, supervised; the consumers' own
/// threads when they share the process with the ingress.
fn spawn_workers(
    settings: &Settings,
    role: Role,
    db: &Db,
    broker: &Broker,
    sources: Arc<Sources>,
    dunning: Dunning,
    supervised: &mut Supervised<'_>,
) -> anyhow::Result<Option<WorkerThreads>> {
    // Beside the ingress, the consumers get threads (and database connections) of their
    // own: normalizing and encoding a batch is CPU work the kernel preempts in favour of
    // a waiting request, where on shared runtime threads the request waits the batch out.
    let (worker_db, threads) = if role.ingress() {
        let threads = WorkerThreads::new()?;
        let db = {
            let _inside = threads.runtime().enter();
            Db::connect_lazy(&settings.database)?
        };
        (db, Some(threads))
    } else {
        (db.clone(), None)
    };
    let worker = Worker::new(
        broker.clone(),
        worker_db,
        sources,
        dunning,
        settings.worker.clone(),
    );
    for index in 0..settings.worker.consumers {
        let (worker, stop) = (worker.clone(), supervised.shutdown.clone());
        let runtime = threads.as_ref().map(WorkerThreads::runtime);
        supervised.spawn(format!("worker-{index}"), runtime, move || {
            worker.clone().run(index, stop.clone())
        });
    }
    let (broker, db, stop) = (broker.clone(), db.clone(), supervised.shutdown.clone());
    let interval = Duration::from_secs(settings.worker.dead_letter_index_secs);
    supervised.spawn("dead-letter-indexer".to_owned(), None, move || {
        dead_letter_index::run_indexer(broker.clone(), db.clone(), interval, stop.clone())
    });
    Ok(threads)
}

/// One supervised loop per source with a sync interval.
fn spawn_syncs(settings: &Settings, syncer: Syncer, supervised: &mut Supervised<'_>) {
    let syncer = Arc::new(syncer);
    for (source_id, interval) in Syncer::periodic(settings) {
        let (syncer, stop) = (syncer.clone(), supervised.shutdown.clone());
        supervised.spawn(format!("sync:{source_id}"), None, move || {
            sync::run_periodic(syncer.clone(), source_id.clone(), interval, stop.clone())
        });
    }
}

/// The scheduler's runs, rebuilt for each restart (a run consumes its scheduler).
fn scheduler_task(
    settings: &Settings,
    db: &Db,
    dunning: &Dunning,
    sources: &Sources,
    shutdown: &CancellationToken,
) -> impl FnMut() -> BoxFuture<'static, anyhow::Result<()>> + Send + 'static {
    let clients = clients(sources);
    let budgets = crate::budget::Budgets::new(settings, db, sources);
    let dunning_settings = settings.dunning.clone();
    let (db, dunning, stop) = (db.clone(), dunning.clone(), shutdown.clone());
    let interval = Duration::from_millis(dunning_settings.interval_ms);
    move || {
        let scheduler = Scheduler::new(
            db.clone(),
            dunning.clone(),
            clients.clone(),
            Duration::from_secs(dunning_settings.in_flight_timeout_secs),
        )
        .with_budgets(budgets.clone())
        .with_accepted_timeout(Duration::from_secs(dunning_settings.accepted_timeout_secs))
        .with_park_after_failures(dunning_settings.park_after_failures)
        .with_waits(crate::dunning::outcome::Waits {
            failure: Duration::from_secs(dunning_settings.failure_wait_secs),
            max_rate_limit: Duration::from_secs(dunning_settings.max_rate_limit_wait_secs),
        });
        let stop = stop.clone();
        let run = async move {
            scheduler.run(interval, stop).await;
            Ok(())
        };
        Box::pin(run) as BoxFuture<'static, anyhow::Result<()>>
    }
}

/// The lookups' runs (beside the scheduler: both call provider APIs on a tick), rebuilt
/// for each restart.
fn lookups_task(
    settings: &Settings,
    db: &Db,
    dunning: &Dunning,
    sources: &Sources,
    shutdown: &CancellationToken,
) -> impl FnMut() -> BoxFuture<'static, anyhow::Result<()>> + Send + 'static {
    let clients = crate::lookups::LookupClients::of(sources);
    let budgets = crate::budget::Budgets::new(settings, db, sources);
    let (db, dunning, stop) = (db.clone(), dunning.clone(), shutdown.clone());
    let l = settings.lookups.clone();
    let interval = Duration::from_millis(l.interval_ms);
    let waits = crate::lookups::Waits {
        failure: Duration::from_secs(l.failure_wait_secs),
        max_failure: Duration::from_secs(l.max_failure_wait_secs),
        max_rate_limit: Duration::from_secs(l.max_rate_limit_wait_secs),
    };
    move || {
        let lookups = crate::lookups::Lookups::new(db.clone(), clients.clone(), dunning.clone())
            .with_waits(waits)
            .with_budgets(budgets.clone());
        let stop = stop.clone();
        let run = async move {
            lookups.run(interval, stop).await;
            Ok(())
        };
        Box::pin(run) as BoxFuture<'static, anyhow::Result<()>>
    }
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {what} listener on {addr}"))
}

/// Serves `app` with the `[http]` connection limits (see `ingress::server`) until
/// `shutdown`; then stops accepting and finishes the requests in flight.
fn serve(
    listener: TcpListener,
    app: axum::Router,
    http: &crate::config::HttpSettings,
    shutdown: CancellationToken,
    what: &'static str,
) -> impl Future<Output = ()> + Send + 'static {
    let request_timeout = Duration::from_millis(http.request_timeout_ms);
    let limits = ingress::Limits {
        deadlines: ingress::Deadlines {
            header_read: Duration::from_millis(http.header_read_timeout_ms),
            keep_alive_idle: Duration::from_millis(http.keep_alive_idle_ms),
        },
        max_connections: http.max_connections,
        // The request deadline bounds every ingress request; the admin's are short.
        shutdown_grace: request_timeout + Duration::from_secs(5),
    };
    ingress::server::serve(listener, app, limits, shutdown, what)
}

/// Cancels `token` on SIGINT or SIGTERM.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {},
            _ = term => {},
        }
        tracing::info!("shutdown requested");
        token.cancel();
    });
}
