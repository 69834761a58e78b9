//! No silent death: every long-running task (the broker connection, the publish batchers,
//! the worker consumers, the retry scheduler, the periodic syncs, the dead-letter indexer)
//! runs under [`supervise`]. A task that panics, fails, or returns before shutdown is
//! logged with its name and cause, counted in `subsync_task_restarts_total{task}`, marked
//! down in the shared [`TaskHealth`] (which `/readyz` reads) and started again after an
//! exponential backoff. Once shutdown is requested a task that returns stays stopped.
//!
//! Each run of the task is its own tokio task, so a panic is caught by the runtime and
//! seen here as a [`tokio::task::JoinError`]; the supervisor itself never unwinds.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use tokio_util::sync::CancellationToken;

/// Which supervised tasks are down (between a failure and their restart), and how often
/// each was restarted. Cheap to clone; shared by every supervisor of a process.
#[derive(Clone, Default)]
pub struct TaskHealth(Arc<Mutex<BTreeMap<String, TaskState>>>);

#[derive(Debug, Clone, Copy, Default)]
struct TaskState {
    down: bool,
    restarts: u64,
}

impl TaskHealth {
    /// Names of the tasks that are down now, sorted.
    pub fn down(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, s)| s.down)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// How often `task` was restarted in this process.
    pub fn restarts(&self, task: &str) -> u64 {
        self.lock().get(task).map_or(0, |s| s.restarts)
    }

    fn set_down(&self, task: &str, down: bool) {
        let mut tasks = self.lock();
        let state = tasks.entry(task.to_owned()).or_default();
        state.down = down;
        if down {
            state.restarts += 1;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, TaskState>> {
        // The map stays consistent whatever panicked while holding it (single inserts).
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// How a task is restarted: exponential delays from `min_delay` up to `max_delay`, back
/// to `min_delay` after a run that lasted at least `reset_after` (a task that failed
/// once an hour is not made to wait the cap).
#[derive(Debug, Clone, Copy)]
pub struct Restart {
    pub min_delay: Duration,
    pub max_delay: Duration,
    pub reset_after: Duration,
    /// Random extra delay (up to the delay itself), so tasks failing together do not
    /// come back in lockstep.
    pub jitter: bool,
}

impl Default for Restart {
    fn default() -> Self {
        Self {
            min_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
            reset_after: Duration::from_secs(60),
            jitter: true,
        }
    }
}

/// The restart delays of one task: the next one depends on how long the last run lasted.
pub struct Backoff {
    restart: Restart,
    delays: backon::ExponentialBackoff,
}

impl Backoff {
    pub fn new(restart: Restart) -> Self {
        Self {
            restart,
            delays: Self::delays(&restart),
        }
    }

    fn delays(restart: &Restart) -> backon::ExponentialBackoff {
        let builder = backon::ExponentialBuilder::default()
            .with_min_delay(restart.min_delay)
            .with_max_delay(restart.max_delay)
            .with_factor(2.0)
            .without_max_times();
        if restart.jitter {
            builder.with_jitter().build()
        } else {
            builder.build()
        }
    }

    /// The delay before the next start, after a run that lasted `ran_for`.
    pub fn after(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= self.restart.reset_after {
            self.delays = Self::delays(&self.restart);
        }
        // Jitter adds up to the delay again: the cap holds all the same.
        let delay = self.delays.next().unwrap_or(self.restart.max_delay);
        delay.min(self.restart.max_delay)
    }
}

/// What a task's future returns: `()` or a `Result` whose error is worth a restart.
pub trait TaskExit {
    /// The error, if the run ended with one.
    fn error(self) -> Option<String>;
}

impl TaskExit for () {
    fn error(self) -> Option<String> {
        None
    }
}

impl<E: Display> TaskExit for Result<(), E> {
    fn error(self) -> Option<String> {
        self.err().map(|e| e.to_string())
    }
}

/// Runs `make()` as a task until `shutdown`, restarting it whenever it panics, fails or
/// returns early (see the module documentation). Spawns each run on the current runtime.
pub async fn supervise<F, Fut>(
    task: String,
    shutdown: CancellationToken,
    health: TaskHealth,
    restart: Restart,
    mut make: F,
) where
    F: FnMut() -> Fut,
    Fut: Future + Send + 'static,
    Fut::Output: TaskExit + Send + 'static,
{
    let mut backoff = Backoff::new(restart);
    loop {
        let started = Instant::now();
        let failure = match tokio::spawn(make()).await {
            Ok(exit) => exit.error(),
            Err(error) if error.is_panic() => Some(panic_message(error.into_panic())),
            Err(error) => Some(error.to_string()),
        };
        if shutdown.is_cancelled() {
            if let Some(error) = failure {
                tracing::warn!(task, error, "task failed while stopping; not restarted");
            }
            return;
        }
        let error = failure.unwrap_or_else(|| "returned before shutdown".to_owned());
        let delay = backoff.after(started.elapsed());
        health.set_down(&task, true);
        metrics::counter!("subsync_task_restarts_total", "task" => task.clone()).increment(1);
        tracing::error!(
            task,
            error,
            retry_in_ms = delay.as_millis() as u64,
            "task stopped unexpectedly; restarting"
        );
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(delay) => {}
        }
        health.set_down(&task, false);
        if shutdown.is_cancelled() {
            return;
        }
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    format!("panicked: {}", panic_text(payload.as_ref()))
}

/// The text of a panic's payload (`panic!` with a message gives a `&str` or a `String`).
/// Shared by every loop that catches a panic per item (the retry scheduler, the money
/// lookups) and by the supervisor.
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

#[cfg(test)]
mod tests;
