use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc;

use super::*;

fn quick() -> Restart {
    Restart {
        min_delay: Duration::from_millis(300),
        max_delay: Duration::from_secs(2),
        reset_after: Duration::from_secs(60),
        jitter: false,
    }
}

/// Polls `check` every 5 ms for up to 5 s.
async fn until(mut check: impl FnMut() -> bool) -> bool {
    for _ in 0..1000 {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

fn restarts_metric(task: &str) -> Option<u64> {
    let text = crate::telemetry::metrics().render();
    let prefix = format!("subsync_task_restarts_total{{task=\"{task}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|n| n.trim().parse().ok())
}

#[tokio::test]
async fn a_task_panicking_twice_is_restarted_twice_and_down_in_between() {
    crate::telemetry::metrics();
    let task = format!("panicky-{}", uuid::Uuid::new_v4().simple());
    let (health, shutdown) = (TaskHealth::default(), CancellationToken::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let (started, mut third) = mpsc::unbounded_channel();
    let run = supervise(task.clone(), shutdown.clone(), health.clone(), quick(), {
        let (calls, shutdown) = (calls.clone(), shutdown.clone());
        move || {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            let (shutdown, started) = (shutdown.clone(), started.clone());
            async move {
                if n <= 2 {
                    panic!("induced panic {n}");
                }
                let _ = started.send(n);
                shutdown.cancelled().await;
            }
        }
    });
    let supervisor = tokio::spawn(run);

    assert!(until(|| health.restarts(&task) == 1).await);
    assert_eq!(health.down(), vec![task.clone()], "down during the backoff");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "not restarted before the delay"
    );
    assert!(until(|| health.restarts(&task) == 2).await);
    assert_eq!(health.down(), vec![task.clone()]);

    assert_eq!(third.recv().await, Some(3));
    assert!(health.down().is_empty(), "up again once restarted");
    assert_eq!(health.restarts(&task), 2);
    assert_eq!(restarts_metric(&task), Some(2));

    shutdown.cancel();
    supervisor.await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(health.restarts(&task), 2);
}

#[tokio::test]
async fn a_task_returning_at_shutdown_is_not_restarted() {
    let task = "returns-at-shutdown".to_owned();
    let (health, shutdown) = (TaskHealth::default(), CancellationToken::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let run = supervise(task.clone(), shutdown.clone(), health.clone(), quick(), {
        let (calls, shutdown) = (calls.clone(), shutdown.clone());
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            let shutdown = shutdown.clone();
            async move {
                shutdown.cancelled().await;
                Ok::<(), String>(())
            }
        }
    });
    let supervisor = tokio::spawn(run);
    assert!(until(|| calls.load(Ordering::SeqCst) == 1).await);
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), supervisor)
        .await
        .expect("the supervisor returns at shutdown")
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(health.restarts(&task), 0);
    assert!(health.down().is_empty());
}

#[tokio::test]
async fn an_error_or_an_early_return_is_restarted() {
    let task = "fails-then-returns".to_owned();
    let (health, shutdown) = (TaskHealth::default(), CancellationToken::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let restart = Restart {
        min_delay: Duration::from_millis(10),
        ..quick()
    };
    let run = supervise(task.clone(), shutdown.clone(), health.clone(), restart, {
        let (calls, shutdown) = (calls.clone(), shutdown.clone());
        move || {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            let shutdown = shutdown.clone();
            async move {
                match n {
                    1 => Err("fatal: the queue is gone".to_owned()),
                    2 => Ok(()),
                    _ => {
                        shutdown.cancelled().await;
                        Ok(())
                    }
                }
            }
        }
    });
    let supervisor = tokio::spawn(run);
    assert!(until(|| calls.load(Ordering::SeqCst) == 3).await);
    assert_eq!(health.restarts(&task), 2);
    shutdown.cancel();
    supervisor.await.unwrap();
}

#[test]
fn the_backoff_grows_to_its_cap_and_resets_after_a_long_run() {
    let restart = Restart {
        min_delay: Duration::from_secs(1),
        max_delay: Duration::from_secs(30),
        reset_after: Duration::from_secs(60),
        jitter: false,
    };
    let mut backoff = Backoff::new(restart);
    let quick_failure = Duration::from_millis(5);
    let delays: Vec<u64> = (0..7)
        .map(|_| backoff.after(quick_failure).as_secs())
        .collect();
    assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
    // A run that lasted past `reset_after` starts over from the smallest delay.
    assert_eq!(
        backoff.after(Duration::from_secs(61)),
        Duration::from_secs(1)
    );
    assert_eq!(backoff.after(quick_failure), Duration::from_secs(2));

    let mut jittered = Backoff::new(Restart {
        jitter: true,
        ..restart
    });
    for _ in 0..20 {
        assert!(jittered.after(quick_failure) <= restart.max_delay);
    }
}
