//! One batch of stream entries → committed events and dead letters.
//!
//! Decoding happens once; applying is retried with backoff while Postgres
//! fails (the circuit breaker tells the reader to stop pulling meanwhile).
//! When [`Ingest::process`] returns, every entry of the batch is either
//! applied or recorded in `dead_letter`, both committed: the caller may ACK
//! all of them. Used by the consumer and by `writer dead-letters replay`.

use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::apply::{Applied, Delivered, EntryId, Partitioning, ReadModel, Source, record_stage};
use crate::config::RetryConfig;
use crate::db::{Failure, classify};
use crate::dead_letter::{self, NewDeadLetter};
use crate::decode::{self, DecodedEntry};
use crate::event::ReorgNotice;
use crate::reorg::ReorgOutcome;
use crate::retry::{Backoff, Circuit};
use crate::stream::StreamEntry;

/// What a processed batch did.
#[derive(Debug, Default, Clone)]
pub struct Processed {
    pub applied: Applied,
    /// The reasons of the entries dead-lettered, as recorded (so a replay
    /// can report them without reading them back).
    pub dead_letters: Vec<String>,
    /// Reorg notice copies applied (not counting redelivered ones).
    pub reorgs: usize,
    /// Events removed by those notices.
    pub removed_by_reorgs: u64,
}

/// Applies batches of entries.
#[derive(Debug, Clone)]
pub struct Ingest {
    pub read_model: ReadModel,
    pub max_deliveries: u32,
    pub retry: RetryConfig,
    pub circuit: Arc<Circuit>,
    /// How a large batch's events are split into concurrent transactions.
    pub split: Partitioning,
}

/// An entry with what decoding made of it.
struct Decoded<'e> {
    entry: &'e StreamEntry,
    /// Where it sits in its stream: what reorg notices are measured against.
    source: Source<'e>,
    payload_field: Option<&'static str>,
    payload: &'e [u8],
    decoded: DecodedEntry<'e>,
    /// Reasons it (or part of it) cannot be applied.
    problems: Vec<String>,
}

/// The entry as stored in a dead letter when it had no JSON field: all its
/// fields as a JSON object (values lossily decoded).
fn all_fields_json(entry: &StreamEntry) -> Vec<u8> {
    let map: serde_json::Map<String, serde_json::Value> = entry
        .fields
        .iter()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned().into()))
        .collect();
    serde_json::Value::Object(map).to_string().into_bytes()
}

fn decode_entry<'e>(entry: &'e StreamEntry, max_deliveries: u32) -> Decoded<'e> {
    let mut d = Decoded {
        entry,
        source: Source {
            stream: &entry.stream,
            // Ids come from Redis; one that does not parse (never seen) is
            // placed first in its stream, where a notice can orphan it.
            entry: EntryId::parse(&entry.id).unwrap_or_default(),
        },
        payload_field: None,
        payload: &[],
        decoded: DecodedEntry::default(),
        problems: Vec::new(),
    };
    match decode::select_payload(entry.field_pairs()) {
        Ok((field, payload)) => {
            d.payload_field = Some(field);
            d.payload = payload;
        }
        Err(e) => {
            d.problems.push(e.to_string());
            return d;
        }
    }
    if entry.deliveries > max_deliveries {
        d.problems.push(format!(
            "delivered {} times, more than MAX_DELIVERIES ({max_deliveries}); not applied",
            entry.deliveries
        ));
        return d;
    }
    d.decoded = decode::decode_payload(d.payload);
    for e in &d.decoded.errors {
        metrics::counter!("writer_events_failed_total", "event_type" => "undecodable").increment(1);
        d.problems.push(e.to_string());
    }
    d
}

/// A batch of entries, decoded: what [`Ingest::apply`] works on.
pub struct Batch<'e>(Vec<Decoded<'e>>);

impl Ingest {
    /// Decodes, applies and dead-letters one batch. Returns None only if
    /// `abort` fired while Postgres kept failing: then nothing may be ACKed.
    pub async fn process(
        &self,
        entries: &[StreamEntry],
        abort: &CancellationToken,
    ) -> Option<Processed> {
        self.apply(&self.decode(entries), abort).await
    }

    /// Decodes and validates a batch's entries (CPU only: the consumer does
    /// it before the batch's turn to use a database connection comes).
    pub fn decode<'e>(&self, entries: &'e [StreamEntry]) -> Batch<'e> {
        let started = Instant::now();
        let decoded = entries
            .iter()
            .filter(|e| !e.fields.is_empty())
            .map(|e| decode_entry(e, self.max_deliveries))
            .collect();
        record_stage("decode", started);
        Batch(decoded)
    }

    /// Applies and dead-letters a decoded batch, retrying while Postgres
    /// fails. Returns None only if `abort` fired meanwhile: then nothing may
    /// be ACKed.
    pub async fn apply(&self, batch: &Batch<'_>, abort: &CancellationToken) -> Option<Processed> {
        let decoded = &batch.0;
        let mut backoff = Backoff::new(&self.retry);
        loop {
            let escalate = backoff.attempts() >= self.retry.max_retries;
            match self.attempt(decoded, escalate, abort).await {
                Ok(processed) => {
                    self.circuit.record_success();
                    return Some(processed);
                }
                Err(e) => {
                    let failure = classify(&e);
                    if self.circuit.record_failure(failure == Failure::Unavailable) {
                        tracing::error!(error = %e, "Postgres is failing; circuit open, consumer paused");
                    } else {
                        tracing::warn!(error = %e, attempt = backoff.attempts() + 1, "batch failed; retrying");
                    }
                    metrics::counter!("writer_retries_total", "stage" => "apply").increment(1);
                    if !backoff.wait(abort).await {
                        return None;
                    }
                }
            }
        }
    }

    /// One attempt: the batch's reorg notices (all copies in one
    /// transaction), then all its events (one isolating pass, a large batch
    /// split by term into concurrent parts), then dead
    /// letters. Notices first, because their meaning does not depend on
    /// when they are applied (ADR 0009) and events they orphan are then
    /// never written. Safe to repeat: what an earlier attempt committed is a
    /// no-op the second time.
    async fn attempt(
        &self,
        decoded: &[Decoded<'_>],
        escalate: bool,
        abort: &CancellationToken,
    ) -> Result<Processed, sqlx::Error> {
        let started = Instant::now();
        let mut out = Processed::default();
        let mut rejections: Vec<(usize, String)> = Vec::new();
        self.apply_notices(decoded, &mut out, &mut rejections)
            .await?;
        let mut events = Vec::new();
        let mut owners = Vec::new();
        for (i, d) in decoded.iter().enumerate() {
            events.extend(d.decoded.events.iter().map(|event| Delivered {
                source: d.source,
                event,
            }));
            owners.extend(std::iter::repeat_n(i, d.decoded.events.len()));
        }
        self.apply_events(&events, &owners, escalate, abort, &mut out, &mut rejections)
            .await?;
        record_stage("apply", started);

        let mut letters = Vec::new();
        for (i, d) in decoded.iter().enumerate() {
            let mut reasons: Vec<&str> = d.problems.iter().map(String::as_str).collect();
            reasons.extend(
                rejections
                    .iter()
                    .filter(|(o, _)| *o == i)
                    .map(|(_, r)| r.as_str()),
            );
            if reasons.is_empty() {
                continue;
            }
            let (field, payload) = match d.payload_field {
                Some(f) => (Some(f), d.payload.to_vec()),
                None => (None, all_fields_json(d.entry)),
            };
            letters.push(NewDeadLetter {
                stream: &d.entry.stream,
                entry_id: &d.entry.id,
                payload_field: field,
                payload,
                error: reasons.join("; "),
                delivery_count: d.entry.deliveries.min(i32::MAX as u32) as i32,
            });
        }
        dead_letter::record(self.read_model.pool(), &letters).await?;
        for l in &letters {
            tracing::warn!(stream = l.stream, entry_id = l.entry_id, error = %l.error, "dead-lettered entry");
        }
        out.dead_letters = letters.into_iter().map(|l| l.error).collect();
        Ok(out)
    }

    /// Applies the batch's reorg notices: all copies in one transaction, or,
    /// if that is refused, each on its own so a bad copy is rejected alone.
    async fn apply_notices(
        &self,
        decoded: &[Decoded<'_>],
        out: &mut Processed,
        rejections: &mut Vec<(usize, String)>,
    ) -> Result<(), sqlx::Error> {
        let copies: Vec<(usize, &ReorgNotice<'_>, Source<'_>)> = decoded
            .iter()
            .enumerate()
            .flat_map(|(i, d)| d.decoded.reorgs.iter().map(move |n| (i, n, d.source)))
            .collect();
        if copies.is_empty() {
            return Ok(());
        }
        // The notices' own stage: a copy holds the exclusive reorg lock, so
        // every batch waits while it runs (its cost, ADR 0009, is what a
        // reorg costs the steady latency).
        let started = Instant::now();
        let all: Vec<(&ReorgNotice<'_>, Source<'_>)> =
            copies.iter().map(|(_, n, s)| (*n, *s)).collect();
        // One transaction for all copies; if it is refused, each copy on its
        // own, so that only the refused one is rejected.
        let outcomes: Vec<Result<ReorgOutcome, sqlx::Error>> =
            match crate::reorg::apply(&self.read_model, &all).await {
                Ok(done) => {
                    out.applied.dirty_triples.extend(done.dirty_triples);
                    done.copies.into_iter().map(Ok).collect()
                }
                Err(e) if classify(&e) == Failure::Permanent && copies.len() > 1 => {
                    let mut each = Vec::with_capacity(copies.len());
                    for copy in &all {
                        let done =
                            crate::reorg::apply(&self.read_model, std::slice::from_ref(copy)).await;
                        each.push(done.map(|mut done| {
                            out.applied.dirty_triples.append(&mut done.dirty_triples);
                            done.copies.remove(0)
                        }));
                    }
                    each
                }
                Err(e) => vec![Err(e)],
            };
        for ((i, _, _), outcome) in copies.iter().zip(outcomes) {
            match outcome {
                Ok(r) => {
                    if r.applied {
                        metrics::counter!("writer_reorgs_total").increment(1);
                        metrics::counter!("writer_events_orphaned_total")
                            .increment(r.removed_events);
                    }
                    out.reorgs += usize::from(r.applied);
                    out.removed_by_reorgs += r.removed_events;
                }
                Err(e) if classify(&e) == Failure::Permanent => {
                    rejections.push((*i, format!("reorg notice could not be applied: {e}")));
                }
                Err(e) => return Err(e),
            }
        }
        record_stage("reorg", started);
        Ok(())
    }

    /// Applies the batch's events in an isolating pass; events refused on
    /// their own become rejections of the entries (`owners`) they came from.
    async fn apply_events(
        &self,
        events: &[Delivered<'_, '_>],
        owners: &[usize],
        escalate: bool,
        abort: &CancellationToken,
        out: &mut Processed,
        rejections: &mut Vec<(usize, String)>,
    ) -> Result<(), sqlx::Error> {
        if events.is_empty() {
            return Ok(());
        }
        let mut isolated = self
            .read_model
            .apply_partitioned(events, escalate, self.split)
            .await?;
        // An event refused alone gets MAX_DELIVERIES attempts in all (with
        // backoff) before it is dead-lettered: an error that only looked
        // permanent gets its chance.
        let mut refused = Vec::new();
        for r in std::mem::take(&mut isolated.rejected) {
            match self.retry_alone(events[r.index], r.error, abort).await? {
                Ok(applied) => isolated.applied.absorb(applied),
                Err(error) => refused.push((r.index, error)),
            }
        }
        for (kind, n) in isolated.applied.inserted.iter() {
            metrics::counter!("writer_events_applied_total", "event_type" => kind).increment(n);
        }
        metrics::counter!("writer_events_duplicate_total").increment(isolated.applied.duplicates);
        // Events of an abandoned fork not stored, or stored and then
        // replaced by the new chain's delivery before the notice came.
        metrics::counter!("writer_events_orphaned_total")
            .increment(isolated.applied.orphaned + isolated.applied.replaced);
        metrics::histogram!("writer_batch_events").record(events.len() as f64);
        for (index, error) in &refused {
            let event = events[*index].event;
            metrics::counter!("writer_events_failed_total", "event_type" => event.kind.name())
                .increment(1);
            rejections.push((
                owners[*index],
                format!(
                    "event {}:{} ({}) could not be stored after {} attempts: {error}",
                    event.chain.transaction_hash,
                    event.chain.log_index,
                    event.kind.name(),
                    self.max_deliveries.max(1),
                ),
            ));
        }
        out.applied.absorb(isolated.applied);
        Ok(())
    }

    /// Re-applies one refused event up to MAX_DELIVERIES − 1 more times.
    /// The outer result carries errors that are not this event's fault
    /// (Postgres unavailable, or a transient error such as a timeout): the
    /// whole attempt is then retried; only permanent refusals dead-letter.
    async fn retry_alone(
        &self,
        event: Delivered<'_, '_>,
        first_error: sqlx::Error,
        abort: &CancellationToken,
    ) -> Result<Result<Applied, sqlx::Error>, sqlx::Error> {
        if classify(&first_error) != Failure::Permanent {
            return Err(first_error);
        }
        let mut backoff = Backoff::new(&self.retry);
        let mut last = first_error;
        for _ in 1..self.max_deliveries.max(1) {
            if !backoff.wait(abort).await {
                return Err(last);
            }
            match self.read_model.apply_delivered(vec![event]).await {
                Ok(applied) => return Ok(Ok(applied)),
                Err(e) if classify(&e) != Failure::Permanent => return Err(e),
                Err(e) => last = e,
            }
        }
        Ok(Err(last))
    }
}
