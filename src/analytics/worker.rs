//! The analytics worker: batches dirty triples, recomputes their rows, and
//! clears their dirty marks in the same transaction.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fnv::FnvHashSet;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::{AnalyticsReceiver, Dirtied};
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
        let mut pending = Pending::new();
        while !cancel.is_cancelled() {
            // Triples taken in while the last pass ran are processed at once;
            // otherwise wait for a message or the sweep. The sweep comes
            // before messages: under steady load the channel is never empty,
            // and dropped messages must not wait for a lull.
            if pending.triples.is_empty() {
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => break,
                    _ = sweep.tick() => {
                        // Checked here, not as a guard of this arm: a guard
                        // is read once, and the wait may outlast the
                        // writers' catch-up (no message comes once they are
                        // done).
                        if pending.sweep_due(self.config.catch_up_delay) {
                            self.sweep(&cancel).await;
                            pending.swept_at = Instant::now();
                        }
                        continue;
                    }
                    message = self.rx.recv() => match message {
                        Some(dirtied) => pending.take(dirtied),
                        None => break,
                    },
                }
            }
            self.take_queued(&mut pending, self.config.batch_size);
            let delay = self.config.catch_up_delay;
            if pending.writers_behind() && !delay.is_zero() {
                self.collect(&mut pending, &cancel).await;
            }
            let age = pending.settle_age(delay);
            let mut ids: Vec<String> = pending.triples.drain().collect();
            ids.sort_unstable();
            let mut rest = ids.as_slice();
            while !rest.is_empty() && !cancel.is_cancelled() {
                let scope = Scope::Listed { ids: rest, age };
                let Some((refreshed, done)) = self.process_retrying(scope, &cancel).await else {
                    return;
                };
                rest = &rest[done..];
                // Marks left for being young wait for the next pass here
                // (not for the sweep): it comes within a delay, or at once
                // when the writers have caught up, and takes them all then.
                pending.triples.extend(refreshed.left);
                // Keep listening between batches: the writers' state stays
                // current and the channel does not overflow.
                self.take_queued(&mut pending, usize::MAX);
            }
        }
    }

    /// Takes the messages already queued, until `pending` holds `most`
    /// triples.
    fn take_queued(&mut self, pending: &mut Pending, most: usize) {
        while pending.triples.len() < most {
            match self.rx.try_recv() {
                Ok(dirtied) => pending.take(dirtied),
                Err(_) => break,
            }
        }
    }

    /// Catch-up: while the writers are behind the streams, gathers the
    /// triples they dirty instead of recomputing them batch after batch,
    /// until they catch up, [`AnalyticsConfig::catch_up_delay`] has passed
    /// or [`CATCH_UP_BATCHES`] batches are gathered. A triple dirtied again
    /// and again during a backlog is then recomputed once per delay, not
    /// once per writer batch (a million-event backlog: 44,134 triples
    /// recomputed 185,590 times, a quarter of Postgres's CPU, before this),
    /// and the writers have the CPU to themselves meanwhile. The marks in
    /// Postgres stay the durable record: a shutdown or crash while gathering
    /// loses nothing (the next start sweeps them).
    async fn collect(&mut self, pending: &mut Pending, cancel: &CancellationToken) {
        let deadline = Instant::now() + self.config.catch_up_delay;
        // Marks the last pass left for being young (`Pending::settle_age`)
        // do not count against the new triples: they would end the
        // gathering early, and the pass would find them young again.
        let gathered = self.config.batch_size.saturating_mul(CATCH_UP_BATCHES);
        let most = pending.triples.len().min(gathered) + gathered;
        metrics::counter!("writer_analytics_catch_ups_total").increment(1);
        while pending.triples.len() < most {
            let caught_up = pending
                .behind_at
                .map_or_else(Instant::now, |at| at + pending.caught_up_after());
            let until = deadline.min(caught_up);
            if Instant::now() >= until {
                break;
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                message = tokio::time::timeout_at(until.into(), self.rx.recv()) => match message {
                    Ok(Some(dirtied)) => pending.take(dirtied),
                    Ok(None) => break,
                    // Checked again at the top.
                    Err(_) => {}
                },
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
                Scope::Listed { ids, age } => {
                    let ids = &ids[..self.limit.min(ids.len())];
                    (Claim::Listed { ids, age }, ids.len())
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
                        // The interval lets messages accumulate between
                        // passes. Within a pass (the chunks of a gathered
                        // list, a sweep's marks) the triples are already
                        // known: spacing the chunks out would only delay
                        // the rest.
                        let end_of_pass = match scope {
                            Scope::Listed { ids, .. } => listed == ids.len(),
                            Scope::After(_) => false,
                        };
                        self.pace(n, started, end_of_pass, cancel).await;
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

    /// Keeps to MAX_MESSAGES_PER_SECOND, and to MIN_BATCH_INTERVAL_MS when
    /// `interval`.
    async fn pace(
        &self,
        terms: usize,
        started: Instant,
        interval: bool,
        cancel: &CancellationToken,
    ) {
        let took = started.elapsed();
        let budget =
            Duration::from_secs_f64(terms as f64 / self.config.max_terms_per_second as f64);
        let min = if interval {
            self.config.min_batch_interval
        } else {
            Duration::ZERO
        };
        let wait = budget.max(min).saturating_sub(took);
        if !wait.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = cancel.cancelled() => {}
            }
        }
    }
}

/// Triples announced by committed batches, not yet recomputed, and what
/// the worker knows of the writers.
#[derive(Debug)]
struct Pending {
    triples: FnvHashSet<String>,
    /// When the last batch whose read left entries waiting committed.
    behind_at: Option<Instant>,
    /// How long such batches take to apply (a moving average), once one
    /// was announced.
    batch_time: Option<Duration>,
    /// When the last sweep finished.
    swept_at: Instant,
}

impl Pending {
    fn new() -> Pending {
        Pending {
            triples: FnvHashSet::default(),
            behind_at: None,
            batch_time: None,
            swept_at: Instant::now(),
        }
    }

    fn take(&mut self, dirtied: Dirtied) {
        self.triples.extend(dirtied.triples);
        if dirtied.behind {
            // Concurrent writer tasks may announce out of commit order.
            self.behind_at = self.behind_at.max(Some(dirtied.committed));
            // A batch that waited out an outage says nothing of the pace.
            let took = dirtied.took.min(CAUGHT_UP_MAX);
            self.batch_time = Some(match self.batch_time {
                Some(usual) => (usual * 3 + took) / 4,
                None => took,
            });
        }
    }

    /// How long after the last full read the writers count as caught up:
    /// [`CAUGHT_UP_AFTER_BATCHES`] usual batch times, within
    /// [`CAUGHT_UP_MIN`] and [`CAUGHT_UP_MAX`]. A fixed wait would end
    /// every catch-up early on a host (or a Postgres) where a batch takes
    /// longer than it, and the worker would recompute the triples once per
    /// writer batch again.
    fn caught_up_after(&self) -> Duration {
        (self.batch_time.unwrap_or_default() * CAUGHT_UP_AFTER_BATCHES)
            .clamp(CAUGHT_UP_MIN, CAUGHT_UP_MAX)
    }

    /// Whether the writers were behind lately (within
    /// [`Pending::caught_up_after`]).
    fn writers_behind(&self) -> bool {
        self.behind_at
            .is_some_and(|at| at.elapsed() < self.caught_up_after())
    }

    /// Which marks a pass after a catch-up of `delay` takes: while the
    /// writers are still behind (the gathering ended at its deadline or
    /// its size), only those dirty for at least half the delay; once they
    /// have caught up, all (None), so the analytics converge.
    ///
    /// Every writer process's worker gathers the hot triples its batches
    /// dirty, and a backlog spreads every hot triple over all processes.
    /// Without the age each process's pass could recompute them a few
    /// seconds after another's. With it, a triple recomputed by one process
    /// (its mark cleared, then set anew by the next change) is left by the
    /// other's pass that comes soon after: about once per delay, whatever
    /// the number of processes (a million events, two processes: 111,099
    /// recomputations before, ~104,000 after, one process ~98,000–107,000;
    /// ADR 0013, third addendum). Half, not all of it: a process's own
    /// next pass comes a delay after its last, so its hot triples, marked
    /// again right after that pass, are older than the age by then with
    /// room to spare.
    fn settle_age(&self, delay: Duration) -> Option<Duration> {
        (self.writers_behind() && !delay.is_zero()).then(|| delay / 2)
    }

    /// Whether a sweep tick should sweep. While the writers are behind,
    /// their marks are the triples being gathered (see `collect`): swept
    /// once per `delay` only, for the messages the channel dropped.
    fn sweep_due(&self, delay: Duration) -> bool {
        !self.writers_behind() || self.swept_at.elapsed() >= delay
    }
}

/// The shortest wait after the last full read before the writers count as
/// caught up: longer than a batch takes under a backlog on a quick host,
/// short enough that the analytics of a finished backlog start at once.
const CAUGHT_UP_MIN: Duration = Duration::from_millis(500);

/// The longest such wait, however slow the batches: bounds how late the
/// analytics of a finished backlog start.
const CAUGHT_UP_MAX: Duration = Duration::from_secs(5);

/// How many usual batch times pass without a full read before the writers
/// count as caught up: a batch several times slower than usual (a
/// checkpoint, a lock wait) does not end the catch-up.
const CAUGHT_UP_AFTER_BATCHES: u32 = 4;

/// A catch-up gathers at most this many analytics batches of triples
/// (ANALYTICS_BATCH_SIZE each) before recomputing them: bounds its memory
/// (~100 bytes per triple id) and the size of the pass that follows.
const CATCH_UP_BATCHES: usize = 25;

/// What a worker batch looks at.
#[derive(Debug, Clone, Copy)]
enum Scope<'a> {
    /// Triples committed batches announced; with an `age`, only those
    /// marked that long ago ([`Claim::Listed`]).
    Listed {
        ids: &'a [String],
        age: Option<Duration>,
    },
    /// Marks after this id (the sweep).
    After(&'a str),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch committed now that took 10 ms.
    fn dirtied(triples: &[&str], behind: bool) -> Dirtied {
        took(triples, behind, Duration::from_millis(10))
    }

    fn took(triples: &[&str], behind: bool, took: Duration) -> Dirtied {
        Dirtied {
            triples: triples.iter().map(|t| (*t).to_owned()).collect(),
            behind,
            committed: Instant::now(),
            took,
        }
    }

    #[test]
    fn pending_gathers_each_triple_once() {
        let mut pending = Pending::new();
        pending.take(dirtied(&["0x01", "0x02"], false));
        pending.take(dirtied(&["0x02", "0x03"], true));
        let mut triples: Vec<_> = pending.triples.iter().cloned().collect();
        triples.sort();
        assert_eq!(triples, ["0x01", "0x02", "0x03"]);
    }

    #[test]
    fn writers_are_behind_only_after_a_full_read() {
        let mut pending = Pending::new();
        assert!(!pending.writers_behind());
        pending.take(dirtied(&["0x01"], false));
        assert!(!pending.writers_behind());
        pending.take(dirtied(&["0x02"], true));
        assert!(pending.writers_behind());
        // A later batch from a short read does not end the catch-up at
        // once: the writers count as behind until `caught_up_after` passes.
        pending.take(dirtied(&["0x03"], false));
        assert!(pending.writers_behind());
    }

    #[test]
    fn sweeps_wait_for_the_delay_only_while_writers_are_behind() {
        let delay = Duration::from_secs(10);
        let mut pending = Pending::new();
        assert!(pending.sweep_due(delay), "not behind: every tick sweeps");
        pending.take(dirtied(&["0x01"], true));
        assert!(!pending.sweep_due(delay), "behind, swept just now");
        pending.swept_at = Instant::now()
            .checked_sub(delay)
            .expect("the clock is past boot");
        assert!(
            pending.sweep_due(delay),
            "behind, but a delay since the sweep"
        );
        pending.swept_at = Instant::now();
        assert!(pending.sweep_due(Duration::ZERO), "no deferral: always");
    }

    #[test]
    fn a_pass_while_the_writers_are_behind_takes_only_settled_marks() {
        let delay = Duration::from_secs(10);
        let mut pending = Pending::new();
        assert_eq!(pending.settle_age(delay), None, "never behind: all");
        pending.take(dirtied(&["0x01"], true));
        assert_eq!(pending.settle_age(delay), Some(delay / 2));
        assert_eq!(pending.settle_age(Duration::ZERO), None, "no deferral: all");
        last_full_read_ago(&mut pending, CAUGHT_UP_MIN + Duration::from_millis(1));
        assert_eq!(
            pending.settle_age(delay),
            None,
            "caught up: the pass takes all, and the analytics converge"
        );
    }

    /// `pending` with `behind_at` moved `ago` into the past.
    fn last_full_read_ago(pending: &mut Pending, ago: Duration) {
        pending.behind_at = Some(
            Instant::now()
                .checked_sub(ago)
                .expect("the clock is past boot"),
        );
    }

    #[test]
    fn slow_batches_keep_the_writers_behind_between_them() {
        // Batches of a second each (a slow host): the writers stay behind
        // between two full reads, though a second is past the 500 ms
        // floor, from the first announcement on...
        let mut pending = Pending::new();
        pending.take(took(&[], true, Duration::from_secs(1)));
        assert_eq!(pending.caught_up_after(), Duration::from_secs(4));
        last_full_read_ago(&mut pending, Duration::from_secs(2));
        assert!(pending.writers_behind(), "two seconds after a full read");
        // ... and count as caught up once four batch times passed.
        last_full_read_ago(&mut pending, Duration::from_secs(4));
        assert!(!pending.writers_behind());
        // Whatever the number of writer tasks: batches committing together
        // do not shorten the wait, as gaps between their commits would.
        for _ in 0..8 {
            pending.take(took(&["0x01"], true, Duration::from_secs(1)));
        }
        assert_eq!(pending.caught_up_after(), Duration::from_secs(4));
    }

    #[test]
    fn one_slow_batch_is_forgotten_and_an_outage_counts_as_the_longest_wait() {
        let mut pending = Pending::new();
        for ms in [100, 100, 100, 4_000] {
            pending.take(took(&["0x01"], true, Duration::from_millis(ms)));
        }
        assert!(
            pending.caught_up_after() > Duration::from_secs(4),
            "a checkpoint stall"
        );
        for _ in 0..20 {
            pending.take(took(&["0x01"], true, Duration::from_millis(100)));
        }
        assert_eq!(pending.caught_up_after(), CAUGHT_UP_MIN, "forgotten");
        // A batch that retried through an hour-long outage weighs as one of
        // CAUGHT_UP_MAX, and the wait stays within it.
        pending.take(took(&["0x01"], true, Duration::from_secs(3_600)));
        assert_eq!(pending.caught_up_after(), CAUGHT_UP_MAX);
        for _ in 0..20 {
            pending.take(took(&["0x01"], true, Duration::from_millis(100)));
        }
        assert_eq!(pending.caught_up_after(), CAUGHT_UP_MIN);
    }

    #[test]
    fn announcements_out_of_commit_order_keep_the_latest_full_read() {
        let mut pending = Pending::new();
        let later = took(&["0x01"], true, Duration::from_millis(10));
        let mut earlier = took(&["0x02"], true, Duration::from_millis(10));
        earlier.committed = later
            .committed
            .checked_sub(Duration::from_millis(300))
            .expect("the clock is past boot");
        let latest = later.committed;
        pending.take(later);
        pending.take(earlier);
        assert_eq!(pending.behind_at, Some(latest));
        // Short reads say nothing of when the writers were last behind.
        pending.take(dirtied(&["0x03"], false));
        assert_eq!(pending.behind_at, Some(latest));
    }

    #[test]
    fn writers_catch_up_once_no_full_read_came_for_a_while() {
        let mut pending = Pending::new();
        pending.take(dirtied(&["0x01"], true));
        let earlier = Instant::now()
            .checked_sub(CAUGHT_UP_MIN + Duration::from_millis(1))
            .expect("the clock is past boot");
        pending.behind_at = Some(earlier);
        assert!(!pending.writers_behind());
        // Draining the triples keeps the state of the writers.
        pending.triples.clear();
        pending.take(dirtied(&["0x02"], true));
        assert!(pending.writers_behind());
    }
}
