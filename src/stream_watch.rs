//! Watches the consumer group on every stream: lag and pending for /health
//! and /metrics, and entries that left a stream before the group read them.
//!
//! Redis removes entries without asking the group: a MAXLEN/MINID trim
//! (rindexer's `XADD … MAXLEN`, an operator's XTRIM), a deleted or evicted
//! stream key, a Redis restarted without persistence. The read model then
//! silently lacks those events, so every loss is counted
//! (`writer_stream_entries_lost_total{stream}`), logged once as an error
//! that says what to do, and shown by /health (`degraded`, `lost` per
//! stream). The figures come from `XINFO STREAM`/`XINFO GROUPS` (see
//! [`stream::settle_read_counter`] for how): a best estimate, never
//! negative, never counting entries the group had read.
//!
//! Several writer processes share one group and all watch it. A trim is
//! counted by the one process whose atomic correction of the group's read
//! counter found it, so summing the metric over processes is right and a
//! restart does not count it again. A recreated stream is counted by the
//! one process that claims it ([`stream::claim_recreation`]), with the
//! undelivered entries it last saw (at most two seconds before).
//! `/health` is degraded on the process that counted the loss.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::RetryConfig;
use crate::consumer::ConsumerState;
use crate::redis_client::Connections;
use crate::retry::Backoff;
use crate::stream::{self, GroupInfo, Settled};

/// How often the groups are looked at.
const INTERVAL: Duration = Duration::from_secs(2);
/// How long /health stays degraded after a loss.
pub const LOSS_DEGRADES_FOR: Duration = Duration::from_secs(3600);

/// One stream's losses, as found by this process.
#[derive(Debug, Clone)]
pub struct StreamLoss {
    /// Entries lost since this process started.
    pub total: u64,
    /// The latest occurrence: estimate, cause, when, the block to re-index from.
    pub last: u64,
    pub cause: &'static str,
    pub at: Instant,
    pub resume_block: Option<i64>,
}

/// Losses found by this process, per stream, for /health.
#[derive(Debug, Default)]
pub struct Losses(Mutex<BTreeMap<String, StreamLoss>>);

impl Losses {
    fn record(&self, stream: &str, lost: u64, cause: &'static str, resume_block: Option<i64>) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let total = map.get(stream).map_or(0, |l| l.total) + lost;
        map.insert(
            stream.to_owned(),
            StreamLoss {
                total,
                last: lost,
                cause,
                at: Instant::now(),
                resume_block,
            },
        );
    }

    /// Entries lost on `stream` since start.
    pub fn total(&self, stream: &str) -> u64 {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(stream).map_or(0, |l| l.total)
    }

    /// Losses younger than [`LOSS_DEGRADES_FOR`], one line each, for /health.
    pub fn recent_reasons(&self) -> Vec<String> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .filter(|(_, l)| l.at.elapsed() < LOSS_DEGRADES_FOR)
            .map(|(stream, l)| {
                format!(
                    "stream {stream} lost about {} entries before the group read them ({}, {} s ago); {}",
                    l.last,
                    l.cause,
                    l.at.elapsed().as_secs(),
                    remedy(l.resume_block)
                )
            })
            .collect()
    }
}

/// What the operator should do about a loss.
fn remedy(resume_block: Option<i64>) -> String {
    match resume_block {
        Some(block) => format!(
            "re-index this network with rindexer from block {block}, the last block this schema applied (re-applying events changes nothing)"
        ),
        None => "re-index this network with rindexer from its start block (this schema holds no events yet)".to_owned(),
    }
}

/// The highest block of any event this schema holds: where a re-index must
/// start at the latest to bring lost events back.
pub async fn last_applied_block(pool: &PgPool) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT max(b) FROM (
            SELECT max(block_number) AS b FROM atom_created_events
            UNION ALL SELECT max(block_number) FROM triple_created_events
            UNION ALL SELECT max(block_number) FROM deposited_events
            UNION ALL SELECT max(block_number) FROM redeemed_events
            UNION ALL SELECT max(block_number) FROM share_price_changed_events
            UNION ALL SELECT max(block_number) FROM generic_events
        ) t",
    )
    .fetch_one(pool)
    .await
}

/// What this process saw of one stream at its previous look.
#[derive(Debug, Default)]
struct Seen {
    /// The stream and group were there.
    present: bool,
    entries_added: u64,
    /// Undelivered entries then.
    lag: u64,
    /// The Redis run under which this process last corrected or confirmed
    /// the group's read counter: a counter that is off later in the same
    /// run can only mean entries removed unread.
    counter_checked_in: Option<String>,
    /// The stream vanished or restarted its count: its undelivered entries
    /// then, to be accounted once the new stream's group exists.
    recreated_with_lag: Option<u64>,
}

pub struct StreamWatch {
    streams: Vec<Arc<str>>,
    group: String,
    redis: Arc<Connections>,
    consumer: Arc<ConsumerState>,
    losses: Arc<Losses>,
    pool: PgPool,
    retry: RetryConfig,
    seen: HashMap<Arc<str>, Seen>,
}

impl StreamWatch {
    pub fn new(
        streams: &[String],
        group: &str,
        redis: Arc<Connections>,
        consumer: Arc<ConsumerState>,
        losses: Arc<Losses>,
        pool: PgPool,
        retry: RetryConfig,
    ) -> StreamWatch {
        StreamWatch {
            streams: streams.iter().map(|s| Arc::from(s.as_str())).collect(),
            group: group.to_owned(),
            redis,
            consumer,
            losses,
            pool,
            retry,
            seen: HashMap::new(),
        }
    }

    /// Creates the groups and takes a first look before anything is read,
    /// so that entries trimmed while no writer ran are found while the
    /// group's position still shows them. Retries until Redis answers;
    /// false if cancelled first.
    pub async fn start(&mut self, cancel: &CancellationToken) -> bool {
        for s in &self.streams {
            metrics::counter!("writer_stream_entries_lost_total", "stream" => s.to_string())
                .increment(0);
        }
        let mut backoff = Backoff::new(&self.retry);
        loop {
            let mut conn = self.redis.commands();
            let result = match stream::ensure_groups(&mut conn, &self.streams, &self.group).await {
                Ok(()) => self.look().await,
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => return true,
                Err(e) => {
                    self.consumer.redis_healthy.store(false, Ordering::Relaxed);
                    tracing::warn!(error = %e, "cannot reach the consumer groups yet; retrying");
                    if !backoff.wait(cancel).await {
                        return false;
                    }
                }
            }
        }
    }

    /// Looks every two seconds until `cancel`.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = cancel.cancelled() => return,
            }
            if let Err(e) = self.look().await {
                self.consumer.redis_healthy.store(false, Ordering::Relaxed);
                metrics::counter!("writer_retries_total", "stage" => "redis").increment(1);
                tracing::warn!(error = %e, command = "XINFO", "Redis command failed");
            }
        }
    }

    /// One look at every stream: settle losses, refresh lag and pending.
    async fn look(&mut self) -> redis::RedisResult<()> {
        let mut conn = self.redis.commands();
        let run_id = stream::server_run_id(&mut conn).await?;
        let mut infos = Vec::with_capacity(self.streams.len());
        for s in self.streams.clone() {
            let settled = stream::settle_read_counter(&mut conn, &s, &self.group).await?;
            let mut state = stream::group_state(&mut conn, &s, &self.group).await?;
            if state.is_none() {
                // Deleted or evicted (with its group), or Redis restarted
                // empty: create the group again now (the reader would at its
                // next read) so the loss is accounted for in this look.
                stream::ensure_groups(&mut conn, std::slice::from_ref(&s), &self.group).await?;
                state = stream::group_state(&mut conn, &s, &self.group).await?;
            }
            let seen = self.seen.entry(s.clone()).or_default();
            let mut found: Vec<(u64, &'static str)> = Vec::new();
            match settled {
                Settled::Exact | Settled::Unknown => {}
                Settled::TrimmedUnread(n) => found.push((
                    n,
                    "removed from the stream (trimmed) while the group was behind",
                )),
                Settled::CaughtUpOff(n) if seen.counter_checked_in.as_deref() == Some(&run_id) => {
                    found.push((
                        n,
                        "trimmed while the group was behind; it has read on since",
                    ))
                }
                Settled::CaughtUpOff(n) => tracing::info!(
                    stream = %s,
                    group = %self.group,
                    off_by = n,
                    "corrected Redis's entries-read counter of the group (stale after Redis reloaded its append-only file, or a trim this process did not see)"
                ),
            }
            match &state {
                None => {
                    if seen.present && seen.recreated_with_lag.is_none() {
                        seen.recreated_with_lag = Some(seen.lag);
                    }
                    seen.present = false;
                }
                Some(now) => {
                    if seen.present
                        && now.entries_added < seen.entries_added
                        && seen.recreated_with_lag.is_none()
                    {
                        seen.recreated_with_lag = Some(seen.lag);
                    }
                    if let Some(lag) = seen.recreated_with_lag {
                        // Kept until the claim got an answer.
                        let claimed = stream::claim_recreation(&mut conn, &s, &self.group).await?;
                        seen.recreated_with_lag = None;
                        match (claimed, lag) {
                            (false, _) => {}
                            (true, 0) => tracing::warn!(
                                stream = %s,
                                "the stream was deleted or evicted and created again; nothing was undelivered when it was last seen, two seconds before"
                            ),
                            (true, lag) => found
                                .push((lag, "the stream was deleted or evicted and created again")),
                        }
                    }
                    seen.present = true;
                    seen.entries_added = now.entries_added;
                    seen.lag = now.info.lag.unwrap_or(0);
                    if settled != Settled::Unknown {
                        seen.counter_checked_in = Some(run_id.clone());
                    }
                }
            }
            for (lost, cause) in found {
                self.report(&s, lost, cause).await;
            }
            if let Some(state) = state {
                let info: GroupInfo = state.info;
                metrics::gauge!("writer_stream_lag", "stream" => s.to_string())
                    .set(info.lag.unwrap_or(0) as f64);
                metrics::gauge!("writer_stream_pending", "stream" => s.to_string())
                    .set(info.pending as f64);
                infos.push((s.to_string(), info));
            } else {
                infos.push((s.to_string(), GroupInfo::default()));
            }
        }
        self.consumer.redis_healthy.store(true, Ordering::Relaxed);
        *self
            .consumer
            .streams
            .write()
            .unwrap_or_else(|p| p.into_inner()) = infos;
        Ok(())
    }

    /// Counts, logs and remembers one loss.
    async fn report(&self, stream: &str, lost: u64, cause: &'static str) {
        metrics::counter!("writer_stream_entries_lost_total", "stream" => stream.to_owned())
            .increment(lost);
        let block = match last_applied_block(&self.pool).await {
            Ok(block) => block,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the last applied block");
                None
            }
        };
        tracing::error!(
            stream,
            group = %self.group,
            lost,
            cause,
            resume_from_block = block,
            "entries were removed from the stream before the writer read them; the read model lacks their events: {}",
            remedy(block)
        );
        self.losses.record(stream, lost, cause, block);
    }
}
