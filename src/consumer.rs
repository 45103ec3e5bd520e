//! The Redis consumer: reads batches with `XREADGROUP`, reclaims entries of
//! dead consumers with `XAUTOCLAIM`, applies each batch ([`Ingest`]), and
//! ACKs its entries only after their transaction committed (ADR 0003).
//!
//! Concurrency: at most `WORKERS` batches apply at once (each in its own
//! transaction), and one more (`LOOKAHEAD`) waits, read and decoded, for
//! its turn: the reader reads ahead while batches apply, so a connection
//! seldom waits for Redis or for decoding, and a slow database slows reading
//! instead of piling entries up in memory. While the circuit breaker is open the reader
//! and claimer pause; the batch that tripped it keeps retrying and closes it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::aio::MultiplexedConnection;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::analytics::{AnalyticsSender, Dirtied};
use crate::config::RedisConfig;
use crate::ingest::Ingest;
use crate::redis_client::Connections;
use crate::retry::Backoff;
use crate::stream::{self, GroupInfo, StreamEntry};

/// What /health and /metrics read about the consumer.
#[derive(Debug, Default)]
pub struct ConsumerState {
    /// False while Redis commands fail.
    pub redis_healthy: AtomicBool,
    pub entries_acked: AtomicU64,
    pub events_applied: AtomicU64,
    pub dead_letters: AtomicU64,
    pub batches: AtomicU64,
    /// Per stream: the group's lag and pending count, refreshed periodically.
    pub streams: RwLock<Vec<(String, GroupInfo)>>,
    /// Entries being processed by this process, so the claimer never takes
    /// back (and double-processes) our own slow batches. Ids per stream, so
    /// lookups and removals borrow the entry's own strings.
    in_flight: Mutex<HashMap<Arc<str>, HashSet<String>>>,
}

impl ConsumerState {
    /// The in-flight ids (a panic elsewhere while holding the lock leaves
    /// the map itself consistent: each update is one insert or remove).
    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, HashSet<String>>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Unix time in milliseconds (0 if the clock reads before 1970), the unit
/// of stream entry ids; shared with /health and the analytics worker.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Batches read and decoded ahead of the workers (see `Shared::lookahead`).
const LOOKAHEAD: usize = 1;

/// Everything the consumer's tasks share.
struct Shared {
    config: RedisConfig,
    streams: Vec<Arc<str>>,
    /// The shared connection for XACK, XAUTOCLAIM, XPENDING, XINFO, and
    /// the reader's own for blocking reads.
    redis: Arc<Connections>,
    ingest: Ingest,
    analytics: AnalyticsSender,
    state: Arc<ConsumerState>,
    /// One per batch applying at a time (`WORKERS`): each holds a database
    /// connection for its transaction.
    permits: Arc<Semaphore>,
    /// The one batch read but not yet applying: the reader reads ahead while
    /// batches apply, so a connection seldom waits for Redis or for
    /// decoding. One is enough — a batch applies for far longer than the
    /// next takes to read and decode (a million events: as fast with one as
    /// with `WORKERS`, 61 MiB peak RSS instead of 72) — and every batch
    /// held costs memory.
    lookahead: Arc<Semaphore>,
    tracker: TaskTracker,
    abort: CancellationToken,
}

pub struct Consumer {
    shared: Arc<Shared>,
}

impl Consumer {
    pub fn new(
        config: RedisConfig,
        workers: usize,
        ingest: Ingest,
        analytics: AnalyticsSender,
        state: Arc<ConsumerState>,
        abort: CancellationToken,
    ) -> Result<Consumer, redis::RedisError> {
        let redis = Arc::new(Connections::new(&config)?);
        let streams = config
            .streams
            .iter()
            .map(|s| Arc::from(s.as_str()))
            .collect();
        let workers = workers.max(1);
        Ok(Consumer {
            shared: Arc::new(Shared {
                config,
                streams,
                redis,
                ingest,
                analytics,
                state,
                permits: Arc::new(Semaphore::new(workers)),
                lookahead: Arc::new(Semaphore::new(LOOKAHEAD)),
                tracker: TaskTracker::new(),
                abort,
            }),
        })
    }

    /// The Redis connections, shared with the stream watch
    /// (`stream_watch`): it takes the current shared connection each time,
    /// so a connection rebuilt after a rotation serves it too.
    pub fn connections(&self) -> Arc<Connections> {
        self.shared.redis.clone()
    }

    /// Consumes until `cancel`, then waits for in-flight batches to commit
    /// and ACK (or for `abort`, after which un-ACKed entries stay pending
    /// and are redelivered to the next run).
    pub async fn run(self, cancel: CancellationToken) {
        let shared = self.shared;
        if !shared.setup(&cancel).await {
            return;
        }
        let reader = tokio::spawn(shared.clone().read_loop(cancel.clone()));
        let claimer = tokio::spawn(shared.clone().claim_loop(cancel.clone()));
        let _ = tokio::join!(reader, claimer);
        shared.tracker.close();
        tokio::select! {
            _ = shared.tracker.wait() => {
                tracing::info!("consumer stopped; in-flight batches finished");
            }
            // Past the shutdown deadline a batch may still sit in a statement
            // (until its statement timeout): leave it. Its transaction rolls
            // back with the connection; its entries are redelivered.
            _ = async {
                shared.abort.cancelled().await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            } => {
                tracing::warn!("shutdown deadline reached; abandoning in-flight batches (they will be redelivered)");
            }
        }
    }
}

impl Shared {
    /// Creates the consumer groups, retrying until Redis answers.
    async fn setup(&self, cancel: &CancellationToken) -> bool {
        let mut backoff = Backoff::new(&self.ingest.retry);
        loop {
            let mut conn = self.redis.commands();
            match stream::ensure_groups(&mut conn, &self.streams, &self.config.group).await {
                Ok(()) => {
                    self.state.redis_healthy.store(true, Ordering::Relaxed);
                    return true;
                }
                Err(e) => {
                    self.redis_failed(&e, "XGROUP CREATE");
                    if !backoff.wait(cancel).await {
                        return false;
                    }
                }
            }
        }
    }

    async fn acquire(&self, cancel: &CancellationToken) -> Option<OwnedSemaphorePermit> {
        tokio::select! {
            permit = self.lookahead.clone().acquire_owned() => permit.ok(),
            _ = cancel.cancelled() => None,
        }
    }

    /// Reads this consumer's own pending entries first (a restart resumes
    /// what it had not ACKed), then new entries.
    async fn read_loop(self: Arc<Self>, cancel: CancellationToken) {
        let mut conn: Option<MultiplexedConnection> = None;
        let mut backoff = Backoff::new(&self.ingest.retry);
        // Pending phase: per stream, the id after which to continue.
        let mut pending: Vec<(Arc<str>, String)> = self
            .streams
            .iter()
            .map(|s| (s.clone(), "0".to_owned()))
            .collect();
        let block_ms = self.config.block.as_millis() as u64;
        let new_ids = vec![">"; self.streams.len()];
        // New entries are read one stream at a time, in turn, without
        // blocking: behind, a read is one batch of one event type (memory
        // bounded by the batch, cascades that touch fewer tables). When a
        // whole round finds nothing, one blocking read over every stream (a
        // little of each) waits for the next entry. A read that catches up
        // brings along what the other streams hold (`read_other_streams`,
        // ADR 0018): a block's entries, and a reorg notice's copies
        // (ADR 0014), in one batch.
        let n = self.streams.len();
        let (mut turn, mut empty_reads) = (0usize, 0usize);
        while !cancel.is_cancelled() {
            if !self.ingest.circuit.wait_closed(&cancel).await {
                break;
            }
            let Some(permit) = self.acquire(&cancel).await else {
                break;
            };
            if conn.is_none() {
                match self.redis.reader().await {
                    Ok(c) => conn = Some(c),
                    Err(e) => {
                        self.redis_failed(&e, "connect");
                        drop(permit);
                        if !backoff.wait(&cancel).await {
                            break;
                        }
                        continue;
                    }
                }
            }
            let Some(c) = conn.as_mut() else { continue };
            let reading_pending = !pending.is_empty();
            let (pending_streams, pending_ids): (Vec<Arc<str>>, Vec<&str>);
            // Pending entries are there already: no blocking for them.
            let rotating = !reading_pending && empty_reads < n;
            let (streams, ids, block, count) = if reading_pending {
                pending_streams = pending.iter().map(|(s, _)| s.clone()).collect();
                pending_ids = pending.iter().map(|(_, id)| id.as_str()).collect();
                let count = self.config.batch_size;
                (&pending_streams[..], &pending_ids[..], None, count)
            } else if rotating {
                let stream = &self.streams[turn..turn + 1];
                (stream, &new_ids[..1], None, self.config.batch_size)
            } else {
                let count = self.config.batch_size.div_ceil(n);
                (&self.streams[..], &new_ids[..], Some(block_ms), count)
            };
            let result = stream::read_group(
                c,
                &self.config.group,
                &self.config.consumer,
                streams,
                ids,
                count,
                block,
            )
            .await;
            if let Ok(entries) = &result
                && !reading_pending
            {
                empty_reads = if entries.is_empty() {
                    empty_reads + 1
                } else {
                    0
                };
                if rotating {
                    turn = (turn + 1) % n;
                }
            }
            match result {
                Ok(mut entries) => {
                    // A non-blocking read of new entries that came back
                    // full left entries waiting: the writers are behind (the
                    // analytics worker defers while they are, see
                    // `analytics`). Not said of pending entries: COUNT is per
                    // stream there, and they are a restart's leftovers.
                    let behind = !reading_pending && block.is_none() && entries.len() >= count;
                    self.state.redis_healthy.store(true, Ordering::Relaxed);
                    backoff.reset();
                    if reading_pending {
                        // Counts first: if they cannot be read, the same
                        // page is read again (the cursor has not moved).
                        if let Err(e) = self.set_delivery_counts(&mut entries).await {
                            self.redis_failed(&e, "XPENDING");
                            drop(permit);
                            if !backoff.wait(&cancel).await {
                                break;
                            }
                            continue;
                        }
                        pending.retain_mut(|(s, cursor)| {
                            match entries.iter().rev().find(|e| e.stream == *s) {
                                Some(last) => {
                                    *cursor = last.id.clone();
                                    true
                                }
                                None => false,
                            }
                        });
                    }
                    let mut behind = behind;
                    let mut broken = None;
                    if !reading_pending && !behind {
                        match self.read_other_streams(c, &mut entries).await {
                            Ok(full) => behind = full,
                            Err(e) => broken = Some(e),
                        }
                    }
                    self.dispatch(entries, permit, behind).await;
                    // The entries read are dispatched; then the failed extra
                    // read is handled as a failed read.
                    if let Some(e) = broken {
                        self.read_failed(&e, &mut conn, &cancel).await;
                    }
                }
                Err(e) => {
                    drop(permit);
                    self.read_failed(&e, &mut conn, &cancel).await;
                    if !backoff.wait(&cancel).await {
                        break;
                    }
                }
            }
        }
    }

    /// When a read that was not full found entries, reads what the streams
    /// absent from it hold now, into the same batch; returns whether one of
    /// them came back full (more waiting: behind).
    ///
    /// rindexer XADDs a block's events as one entry per event type, each on
    /// its own stream from a task of its own, close together, and a reorg
    /// notice to every stream at once.
    /// Read one stream at a time, each would be a batch and a transaction
    /// of its own: at a steady rate that is a transaction per entry, each
    /// paying the round trips of a batch, the deposit's waiting for its
    /// SharePriceChanged's term locks, and a notice's copies each waiting
    /// for the exclusive reorg lock while every other batch waits (ADR 0014,
    /// ADR 0018; benches/README.md). Within a batch notices apply first and
    /// their meaning is positional (ADR 0009), so this is only an earlier
    /// read. Only when caught up: behind, the other streams' entries are
    /// read in their turn, a batch of one event type each.
    async fn read_other_streams(
        &self,
        conn: &mut MultiplexedConnection,
        entries: &mut Vec<StreamEntry>,
    ) -> redis::RedisResult<bool> {
        if entries.is_empty() {
            return Ok(false);
        }
        let others: Vec<Arc<str>> = self
            .streams
            .iter()
            .filter(|s| !entries.iter().any(|e| e.stream == **s))
            .cloned()
            .collect();
        // Within BATCH_SIZE in all: a larger batch would be split again,
        // the copies with it.
        let room = self.config.batch_size.saturating_sub(entries.len());
        if others.is_empty() || room < others.len() {
            return Ok(false);
        }
        let count = room / others.len();
        let ids = vec![">"; others.len()];
        let more = stream::read_group(
            conn,
            &self.config.group,
            &self.config.consumer,
            &others,
            &ids,
            count,
            None,
        )
        .await?;
        let full = others
            .iter()
            .any(|s| more.iter().filter(|e| e.stream == *s).count() >= count);
        entries.extend(more);
        Ok(full)
    }

    /// After a failed `XREADGROUP`: the next read reconnects, and a stream
    /// that lost its group (deleted, recreated) gets it back.
    async fn read_failed(
        &self,
        error: &redis::RedisError,
        conn: &mut Option<MultiplexedConnection>,
        cancel: &CancellationToken,
    ) {
        self.redis_failed(error, "XREADGROUP");
        *conn = None;
        if stream::is_missing_group(error) {
            self.setup(cancel).await;
        }
    }

    fn redis_failed(&self, error: &redis::RedisError, what: &str) {
        self.state.redis_healthy.store(false, Ordering::Relaxed);
        metrics::counter!("writer_retries_total", "stage" => "redis").increment(1);
        let error = crate::redis_client::describe_error(error, &self.config);
        tracing::warn!(%error, command = what, "Redis command failed");
        // A rotated password or certificate: reconnect with the new one.
        self.redis.refresh();
    }

    /// Reads how often each entry was delivered (for entries that may have
    /// been delivered before: own pending ones, reclaimed ones).
    async fn set_delivery_counts(&self, entries: &mut [StreamEntry]) -> redis::RedisResult<()> {
        let mut conn = self.redis.commands();
        for s in &self.streams {
            let mine: Vec<&str> = entries
                .iter()
                .filter(|e| e.stream == *s)
                .map(|e| e.id.as_str())
                .collect();
            if mine.is_empty() {
                continue;
            }
            let counts = stream::delivery_counts(
                &mut conn,
                s,
                &self.config.group,
                &self.config.consumer,
                &mine,
            )
            .await?;
            for e in entries.iter_mut().filter(|e| e.stream == *s) {
                if let Some(n) = counts.get(&e.id) {
                    e.deliveries = *n;
                }
            }
        }
        Ok(())
    }

    /// Splits entries into batches of at most BATCH_SIZE entries and
    /// BATCH_MAX_BYTES of payload, and spawns one task per batch, each
    /// holding a lookahead place (the first one the caller's).
    async fn dispatch(
        self: &Arc<Self>,
        mut entries: Vec<StreamEntry>,
        permit: OwnedSemaphorePermit,
        behind: bool,
    ) {
        if entries.is_empty() {
            return;
        }
        {
            let mut in_flight = self.state.in_flight();
            for e in &entries {
                in_flight
                    .entry(e.stream.clone())
                    .or_default()
                    .insert(e.id.clone());
            }
        }
        let mut permit = Some(permit);
        while !entries.is_empty() {
            // At most BATCH_SIZE entries and BATCH_MAX_BYTES of payload (at
            // least one entry).
            let mut bytes = 0;
            let fit = entries
                .iter()
                .take(self.config.batch_size)
                .take_while(|e| {
                    bytes += e.fields.iter().map(|(_, v)| v.len()).sum::<usize>();
                    bytes <= self.config.batch_max_bytes
                })
                .count()
                .max(1);
            let rest = entries.split_off(fit);
            let batch = std::mem::replace(&mut entries, rest);
            let permit = match permit.take() {
                Some(p) => p,
                // The batch must run even during shutdown: its entries are
                // already delivered to us. Wait for a place regardless.
                None => match self.lookahead.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let shared = self.clone();
            self.tracker
                .spawn(async move { shared.process_batch(batch, permit, behind).await });
        }
    }

    /// Decodes a batch while it waits for its turn (holding a lookahead
    /// place), then applies it holding a worker's permit, ACKs and notifies
    /// the analytics worker (`behind`: the read left entries waiting).
    async fn process_batch(
        self: Arc<Self>,
        batch: Vec<StreamEntry>,
        lookahead: OwnedSemaphorePermit,
        behind: bool,
    ) {
        let decoded = self.ingest.decode(&batch);
        // The batch must run even during shutdown: its entries are already
        // delivered to us.
        let Ok(permit) = self.permits.clone().acquire_owned().await else {
            return;
        };
        drop(lookahead);
        let started = Instant::now();
        let processed = self.ingest.apply(&decoded, &self.abort).await;
        drop(decoded);
        if let Some(processed) = processed {
            let committed = Instant::now();
            let committed_ms = now_ms();
            let end_to_end = metrics::histogram!("writer_end_to_end_seconds");
            for e in &batch {
                if let Some(added) = e.added_at_ms() {
                    end_to_end.record(committed_ms.saturating_sub(added) as f64 / 1000.0);
                }
            }
            if self.ack(&batch).await {
                self.state
                    .entries_acked
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                self.state
                    .events_applied
                    .fetch_add(processed.applied.inserted.total(), Ordering::Relaxed);
                self.state
                    .dead_letters
                    .fetch_add(processed.dead_letters.len() as u64, Ordering::Relaxed);
                self.state.batches.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    entries = batch.len(),
                    inserted = processed.applied.inserted.total(),
                    duplicates = processed.applied.duplicates,
                    dead_lettered = processed.dead_letters.len(),
                    "batch committed and acknowledged"
                );
            }
            self.analytics.notify(Dirtied {
                triples: processed.applied.dirty_triples,
                behind,
                committed,
                took: committed - started,
            });
        }
        {
            let mut in_flight = self.state.in_flight();
            for e in &batch {
                if let Some(ids) = in_flight.get_mut(&*e.stream) {
                    ids.remove(&e.id);
                }
            }
        }
        drop(permit);
    }

    /// XACKs a committed batch, retrying until Redis answers (or abort: the
    /// entries are then redelivered later, and re-applying them is a no-op).
    async fn ack(&self, batch: &[StreamEntry]) -> bool {
        let started = Instant::now();
        let ids: Vec<(&str, &str)> = batch
            .iter()
            .map(|e| (e.stream.as_ref(), e.id.as_str()))
            .collect();
        let mut backoff = Backoff::new(&self.ingest.retry);
        loop {
            let mut conn = self.redis.commands();
            match stream::ack(&mut conn, &self.config.group, &ids).await {
                Ok(()) => {
                    self.state.redis_healthy.store(true, Ordering::Relaxed);
                    metrics::histogram!("writer_stage_seconds", "stage" => "ack")
                        .record(started.elapsed().as_secs_f64());
                    metrics::counter!("writer_entries_acked_total").increment(batch.len() as u64);
                    return true;
                }
                Err(e) => {
                    self.redis_failed(&e, "XACK");
                    if !backoff.wait(&self.abort).await {
                        return false;
                    }
                }
            }
        }
    }

    /// Periodically reclaims entries other consumers left pending for
    /// longer than CLAIM_IDLE_MS.
    async fn claim_loop(self: Arc<Self>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.claim_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = cancel.cancelled() => return,
            }
            if self.ingest.circuit.is_open() {
                continue;
            }
            for s in &self.streams {
                if let Err(e) = self.claim_stream(s, &cancel).await {
                    self.redis_failed(&e, "XAUTOCLAIM");
                }
            }
        }
    }

    async fn claim_stream(
        self: &Arc<Self>,
        s: &Arc<str>,
        cancel: &CancellationToken,
    ) -> redis::RedisResult<()> {
        let mut conn = self.redis.commands();
        let mut cursor = "0-0".to_owned();
        let idle = self.config.claim_idle.as_millis() as u64;
        loop {
            if cancel.is_cancelled() {
                return Ok(());
            }
            let Some(permit) = self.acquire(cancel).await else {
                return Ok(());
            };
            let (next, ids, deleted) = stream::autoclaim_ids(
                &mut conn,
                s,
                &self.config.group,
                &self.config.consumer,
                idle,
                &cursor,
                self.config.batch_size,
            )
            .await?;
            if !deleted.is_empty() {
                // Pending entries trimmed from the stream: nothing to apply.
                let ids: Vec<(&str, &str)> =
                    deleted.iter().map(|id| (s.as_ref(), id.as_str())).collect();
                stream::ack(&mut conn, &self.config.group, &ids).await?;
            }
            // Our own slow batches are idle too: leave them alone (JUSTID did
            // not count a delivery); claim the rest, which counts one.
            let foreign: Vec<&str> = {
                let in_flight = self.state.in_flight();
                let mine = in_flight.get(s);
                ids.iter()
                    .filter(|id| !mine.is_some_and(|m| m.contains(*id)))
                    .map(String::as_str)
                    .collect()
            };
            let mut claimed = stream::claim(
                &mut conn,
                s,
                &self.config.group,
                &self.config.consumer,
                &foreign,
            )
            .await?;
            if !claimed.is_empty() {
                tracing::info!(stream = %s, entries = claimed.len(), "reclaimed entries of an idle consumer");
                metrics::counter!("writer_entries_reclaimed_total").increment(claimed.len() as u64);
                self.set_delivery_counts(&mut claimed).await?;
                self.dispatch(claimed, permit, false).await;
            }
            if next == "0-0" {
                return Ok(());
            }
            cursor = next;
        }
    }
}
