//! The analytics worker: batches dirty triples, recomputes their rows, and
//! clears their dirty marks in the same transaction.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fnv::FnvHashSet;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::AnalyticsReceiver;
use super::{Claim, Refreshed};
use crate::config::{AnalyticsConfig, RetryConfig};
use crate::consumer::now_ms;
use crate::retry::Backoff;

/// What /health and /metrics read about the worker.
#[derive(Debug)]
pub struct WorkerState {
    /// True while the worker task runs.
    pub running: AtomicBool,
    /// False after a failed batch, true again after a successful one.
    pub healthy: AtomicBool,
    /// Unix milliseconds of the last successful batch (0: none yet).
    pub last_success_ms: AtomicU64,
    pub terms_processed: AtomicU64,
}

impl Default for WorkerState {
    fn default() -> Self {
        WorkerState {
            running: AtomicBool::new(false),
            healthy: AtomicBool::new(true),
            last_success_ms: AtomicU64::new(0),
            terms_processed: AtomicU64::new(0),
        }
    }
}

pub struct Worker {
    pool: PgPool,
    schema: Arc<str>,
    config: AnalyticsConfig,
    retry: RetryConfig,
    rx: AnalyticsReceiver,
    state: Arc<WorkerState>,
    /// Current batch size: ANALYTICS_BATCH_SIZE, halved while batches fail.
    limit: usize,
}

impl Worker {
    pub fn new(
        pool: PgPool,
        schema: impl Into<Arc<str>>,
        config: AnalyticsConfig,
        retry: RetryConfig,
        rx: AnalyticsReceiver,
        state: Arc<WorkerState>,
    ) -> Worker {
        Worker {
            pool,
            schema: schema.into(),
            limit: config.batch_size,
            config,
            retry,
            rx,
            state,
        }
    }

    /// Runs until `cancel`. Work still queued at that point is not lost: it
    /// is marked dirty in Postgres and drained by the next start.
    pub async fn run(mut self, cancel: CancellationToken) {
        /// Clears `running` however the task ends (return, panic, abort).
        struct Running(Arc<WorkerState>);
        impl Drop for Running {
            fn drop(&mut self) {
                self.0.running.store(false, Ordering::Relaxed);
            }
        }
        self.state.running.store(true, Ordering::Relaxed);
        let _running = Running(self.state.clone());
        self.sweep(&cancel).await;
        let mut sweep = tokio::time::interval(self.config.sweep_interval);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        sweep.tick().await;
        let mut pending: FnvHashSet<String> = FnvHashSet::default();
        loop {
            // The sweep comes before messages: under steady load the channel
            // is never empty, and dropped messages must not wait for a lull.
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = sweep.tick() => {
                    self.sweep(&cancel).await;
                    continue;
                }
                message = self.rx.recv() => match message {
                    Some(triples) => pending.extend(triples),
                    None => break,
                },
            }
            while pending.len() < self.config.batch_size {
                match self.rx.try_recv() {
                    Ok(triples) => pending.extend(triples),
                    Err(_) => break,
                }
            }
            let mut ids: Vec<String> = pending.drain().collect();
            ids.sort_unstable();
            let mut rest = ids.as_slice();
            while !rest.is_empty() && !cancel.is_cancelled() {
                let Some((_, done)) = self.process_retrying(Scope::Listed(rest), &cancel).await
                else {
                    return;
                };
                rest = &rest[done..];
            }
        }
    }

    /// Processes every dirty mark once around, starting at a random id (so
    /// several processes sweeping at once mostly take different marks).
    async fn sweep(&mut self, cancel: &CancellationToken) {
        let start = format!("0x{:016x}", fastrand::u64(..));
        let mut cursor = start.clone();
        let mut wrapped = false;
        while !cancel.is_cancelled() {
            match self
                .process_retrying(Scope::After(&cursor), cancel)
                .await
                .map(|(r, _)| r)
            {
                None => return,
                Some(Refreshed {
                    last_mark: Some(last),
                    ..
                }) => {
                    if wrapped && last >= start {
                        return;
                    }
                    cursor = last;
                }
                Some(_) if wrapped => return,
                Some(_) => {
                    wrapped = true;
                    cursor = String::new();
                }
            }
        }
    }

    /// One batch, retried with backoff until it succeeds; None if
    /// cancelled. A failing batch is retried smaller (halved each time,
    /// back to full size after successes): whatever made a big transaction
    /// fail — a timeout, the lock table — a smaller one gets through. Also
    /// returns how many of a listed scope's ids the batch covered.
    async fn process_retrying(
        &mut self,
        scope: Scope<'_>,
        cancel: &CancellationToken,
    ) -> Option<(Refreshed, usize)> {
        let mut backoff = Backoff::new(&self.retry);
        loop {
            let started = Instant::now();
            // A listed scope is cut to the current limit here, on every
            // attempt, since a failure shrinks it.
            let (claim, listed) = match scope {
                Scope::Listed(ids) => {
                    let ids = &ids[..self.limit.min(ids.len())];
                    (Claim::Listed(ids), ids.len())
                }
                Scope::After(after) => (
                    Claim::After {
                        after,
                        limit: self.limit,
                    },
                    0,
                ),
            };
            match super::refresh(&self.pool, &self.schema, claim, &[], false).await {
                Ok(refreshed) => {
                    self.limit = (self.limit * 2).min(self.config.batch_size);
                    let n = refreshed.triples;
                    self.state.healthy.store(true, Ordering::Relaxed);
                    self.state
                        .last_success_ms
                        .store(now_ms(), Ordering::Relaxed);
                    if n > 0 {
                        self.state
                            .terms_processed
                            .fetch_add(n as u64, Ordering::Relaxed);
                        metrics::counter!("writer_analytics_terms_total").increment(n as u64);
                        metrics::histogram!("writer_analytics_batch_seconds")
                            .record(started.elapsed().as_secs_f64());
                        self.pace(n, started, cancel).await;
                    }
                    return Some((refreshed, listed));
                }
                Err(e) => {
                    self.limit = (self.limit / 2).max(1);
                    self.state.healthy.store(false, Ordering::Relaxed);
                    metrics::counter!("writer_retries_total", "stage" => "analytics").increment(1);
                    tracing::warn!(error = %e, attempt = backoff.attempts() + 1, "analytics batch failed; retrying");
                    if !backoff.wait(cancel).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Keeps to MAX_MESSAGES_PER_SECOND and MIN_BATCH_INTERVAL_MS, and
    /// while the writers are catching up, to a share of the time (see
    /// [`CATCH_UP_REST`]).
    async fn pace(&self, terms: usize, started: Instant, cancel: &CancellationToken) {
        let took = started.elapsed();
        let budget =
            Duration::from_secs_f64(terms as f64 / self.config.max_terms_per_second as f64);
        let catching_up = terms >= self.limit && !self.rx.is_empty();
        let rest = if catching_up {
            took * CATCH_UP_REST
        } else {
            Duration::ZERO
        };
        let wait = budget
            .max(self.config.min_batch_interval)
            .saturating_sub(took)
            .max(rest);
        if !wait.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = cancel.cancelled() => {}
            }
        }
    }
}

/// While the writers are catching up — the batch was full and more
/// committed batches are queued — the worker rests this many times as long
/// as its batch took, so it uses at most a third of one connection's time.
/// A hot triple dirtied again and again is then recomputed once per rest
/// instead of once per writer batch (a backlog of a million events: about a
/// quarter of Postgres's CPU went to recomputing the same triples), and the
/// writers, whose cascades the analytics compete with for the CPU, drain
/// the backlog sooner. Once they go quiet the queue empties and the worker
/// runs flat out again, so the analytics still converge within seconds.
const CATCH_UP_REST: u32 = 2;

/// What a worker batch looks at.
#[derive(Debug, Clone, Copy)]
enum Scope<'a> {
    /// Triples a committed batch announced.
    Listed(&'a [String]),
    /// Marks after this id (the sweep).
    After(&'a str),
}
