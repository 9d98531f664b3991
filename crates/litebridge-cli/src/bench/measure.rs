//! Collecting operation counts and latencies, and turning them into figures.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What one producer saw: per-operation latencies in nanoseconds.
#[derive(Debug, Default)]
pub(crate) struct Samples(pub(crate) Vec<u32>);

impl Samples {
    pub(crate) fn with_capacity(n: usize) -> Samples {
        Samples(Vec::with_capacity(n))
    }

    pub(crate) fn record(&mut self, since: Instant) {
        self.0
            .push(u32::try_from(since.elapsed().as_nanos()).unwrap_or(u32::MAX));
    }
}

/// The figures of one run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Figures {
    pub(crate) ops: u64,
    pub(crate) ops_per_sec: f64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
}

impl Figures {
    /// The mean of runs of equal length.
    pub(crate) fn mean(runs: &[Figures]) -> Figures {
        let n = runs.len().max(1) as f64;
        Figures {
            ops: runs.iter().map(|f| f.ops).sum(),
            ops_per_sec: runs.iter().map(|f| f.ops_per_sec).sum::<f64>() / n,
            p50_us: runs.iter().map(|f| f.p50_us).sum::<f64>() / n,
            p99_us: runs.iter().map(|f| f.p99_us).sum::<f64>() / n,
        }
    }

    pub(crate) fn from_samples(all: Vec<Samples>, elapsed: Duration) -> Figures {
        let mut lat: Vec<u32> = all.into_iter().flat_map(|s| s.0).collect();
        lat.sort_unstable();
        let q = |p: f64| -> f64 {
            if lat.is_empty() {
                return 0.0;
            }
            let i = ((p * lat.len() as f64).ceil() as usize).clamp(1, lat.len()) - 1;
            f64::from(lat[i]) / 1000.0
        };
        Figures {
            ops: lat.len() as u64,
            ops_per_sec: lat.len() as f64 / elapsed.as_secs_f64(),
            p50_us: q(0.50),
            p99_us: q(0.99),
        }
    }
}

/// A flag that turns true after `seconds`, set by a timer thread.
pub(crate) fn stop_after(seconds: f64) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs_f64(seconds));
        s.store(true, Ordering::Relaxed);
    });
    stop
}

/// Runs the operations `next` makes until `stop`, `depth` of them in
/// flight, and records each one's latency, from its first poll, in
/// `samples`.
///
/// One at a time, each is awaited in turn. `FuturesUnordered` wakes its
/// task again once it has polled every future it holds (futures-util's
/// guard against starving the runtime): holding one future, that was a
/// second wake-up for every operation, which on two runtime threads sent
/// the idle one to take the caller over, a crossing of CPUs per call that
/// the sequential baselines (plain loops) did not pay.
pub(crate) async fn keep_in_flight<F, E>(
    depth: usize,
    stop: &AtomicBool,
    samples: &mut Samples,
    mut next: impl FnMut() -> F,
) -> Result<(), E>
where
    F: std::future::Future<Output = Result<(), E>>,
{
    use futures_util::StreamExt;
    if depth <= 1 {
        while !stop.load(Ordering::Relaxed) {
            let op = next();
            let start = Instant::now();
            op.await?;
            samples.record(start);
        }
        return Ok(());
    }
    let mut in_flight = futures_util::stream::FuturesUnordered::new();
    loop {
        while in_flight.len() < depth && !stop.load(Ordering::Relaxed) {
            let op = next();
            in_flight.push(async move {
                let start = Instant::now();
                op.await.map(|()| start)
            });
        }
        match in_flight.next().await {
            Some(done) => samples.record(done?),
            None => return Ok(()),
        }
    }
}

/// Starts a thread of a baseline, named `bench-baseline` so that a profile
/// tells it from litebridge's own threads (a thread started from a tokio
/// worker would otherwise inherit the name `tokio-rt-worker`).
pub(crate) fn baseline_thread<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::Builder::new()
        .name("bench-baseline".into())
        .spawn(f)
        .expect("a thread can be started")
}

/// A small fast generator for benchmark keys (xorshift64*).
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// Waits for the producer tasks of a run and turns their samples into figures.
pub(crate) async fn gather_tasks<E>(
    tasks: Vec<tokio::task::JoinHandle<Result<Samples, E>>>,
    started: Instant,
) -> crate::CliResult<Figures>
where
    crate::Failure: From<E>,
{
    let mut all = Vec::with_capacity(tasks.len());
    for t in tasks {
        all.push(t.await.map_err(|e| crate::Failure::new(e.to_string()))??);
    }
    Ok(Figures::from_samples(all, started.elapsed()))
}

/// As [`gather_tasks`] for baseline threads (a thread that panicked adds no samples).
pub(crate) fn gather_threads(
    threads: Vec<std::thread::JoinHandle<Samples>>,
    started: Instant,
) -> Figures {
    let all = threads
        .into_iter()
        .map(|t| t.join().unwrap_or_default())
        .collect();
    Figures::from_samples(all, started.elapsed())
}
