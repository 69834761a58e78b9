//! Where the CPU went during a measured window: the subsync child, RabbitMQ (`beam.smp`),
//! PostgreSQL (all `postgres` processes), this process (the load generator) and the whole
//! machine (so load from anything else shows), from `/proc`.

use std::{collections::HashMap, time::Instant};

/// Clock ticks per second of `/proc` CPU times (USER_HZ, 100 on Linux).
const TICKS: f64 = 100.0;

/// CPU time (user + system) of `pid`, in ticks.
fn ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at state (field 3).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Pids whose command name is `comm`.
fn pids_named(comm: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
        })
        .collect()
}

/// Busy and total ticks of the whole machine (all cores). Time of niced processes counts
/// as idle: they yield to everything measured here (a fuzzer at nice 19 soaking up the idle
/// time of a shared machine would otherwise make it look saturated).
fn machine() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let values: Vec<u64> = line
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = values.iter().take(8).sum();
    // nice + idle + iowait
    let idle = values.get(1)? + values.get(3)? + values.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

#[derive(Clone)]
struct Snapshot {
    at: Instant,
    subsync: u64,
    rabbitmq: HashMap<u32, u64>,
    postgres: HashMap<u32, u64>,
    bench: u64,
    machine: (u64, u64),
}

/// CPU ticks of every process named `comm`.
fn by_pid(comm: &str) -> HashMap<u32, u64> {
    pids_named(comm)
        .into_iter()
        .filter_map(|p| Some((p, ticks(p)?)))
        .collect()
}

/// Ticks spent between two snapshots by processes alive at the end (a process that
/// started in between counts from zero; one that exited in between is not counted).
fn spent(start: &HashMap<u32, u64>, end: &HashMap<u32, u64>) -> u64 {
    end.iter()
        .map(|(pid, t)| t.saturating_sub(start.get(pid).copied().unwrap_or(0)))
        .sum()
}

/// Starts at [`CpuWatch::start`], read with [`CpuWatch::finish`].
#[derive(Clone)]
pub struct CpuWatch {
    subsync: Option<u32>,
    start: Snapshot,
}

/// Average cores used by each part over the window.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuUsage {
    pub subsync: f64,
    pub rabbitmq: f64,
    pub postgres: f64,
    pub bench: f64,
    /// The whole machine, all processes (cores).
    pub machine: f64,
    pub cores: f64,
}

impl CpuUsage {
    /// Cores used by everything else: kernel softirq work (loopback TCP), kernel threads,
    /// other users' processes.
    pub fn other(&self) -> f64 {
        (self.machine - self.subsync - self.rabbitmq - self.postgres - self.bench).max(0.0)
    }

    pub fn text(&self) -> String {
        format!(
            "subsync {:.2}, RabbitMQ {:.2}, PostgreSQL {:.2}, load generator {:.2}, other {:.2}; \
             machine {:.0}% busy",
            self.subsync,
            self.rabbitmq,
            self.postgres,
            self.bench,
            self.other(),
            100.0 * self.machine / self.cores.max(1.0)
        )
    }
}

impl CpuWatch {
    fn snapshot(subsync: Option<u32>) -> Snapshot {
        Snapshot {
            at: Instant::now(),
            subsync: subsync.and_then(ticks).unwrap_or(0),
            rabbitmq: by_pid("beam.smp"),
            postgres: by_pid("postgres"),
            bench: ticks(std::process::id()).unwrap_or(0),
            machine: machine().unwrap_or((0, 0)),
        }
    }

    pub fn start(subsync: Option<u32>) -> Self {
        Self {
            subsync,
            start: Self::snapshot(subsync),
        }
    }

    pub fn finish(&self) -> CpuUsage {
        let end = Self::snapshot(self.subsync);
        let secs = end.at.duration_since(self.start.at).as_secs_f64().max(1e-3);
        let cores = |a: u64, b: u64| b.saturating_sub(a) as f64 / TICKS / secs;
        let spent_cores = |t: u64| t as f64 / TICKS / secs;
        let ncores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1) as f64;
        CpuUsage {
            subsync: cores(self.start.subsync, end.subsync),
            rabbitmq: spent_cores(spent(&self.start.rabbitmq, &end.rabbitmq)),
            postgres: spent_cores(spent(&self.start.postgres, &end.postgres)),
            bench: cores(self.start.bench, end.bench),
            machine: cores(self.start.machine.0, end.machine.0),
            cores: ncores,
        }
    }
}
