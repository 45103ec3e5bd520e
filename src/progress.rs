//! One info line every `PROGRESS_LOG_INTERVAL_MS` while anything happened:
//! events applied and their rate, entries acknowledged, stream lag,
//! analytics backlog, dead letters. Nothing while idle, so a quiet writer
//! has a quiet log and a busy one (a backlog of a million events) visibly
//! moves.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::service::Status;

/// The counters a progress line is made of, read at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub events_applied: u64,
    pub entries_acked: u64,
    pub dead_letters: u64,
    pub analytics_terms: u64,
}

/// What happened between two readings, and the state now; None when
/// nothing happened.
pub fn line(
    before: Totals,
    now: Totals,
    elapsed: Duration,
    lag: u64,
    analytics_backlog: Option<i64>,
) -> Option<String> {
    let d = |a: u64, b: u64| b.saturating_sub(a);
    let applied = d(before.events_applied, now.events_applied);
    let acked = d(before.entries_acked, now.entries_acked);
    let dead = d(before.dead_letters, now.dead_letters);
    let analytics = d(before.analytics_terms, now.analytics_terms);
    if applied + acked + dead + analytics == 0 {
        return None;
    }
    let secs = elapsed.as_secs_f64().max(0.001);
    let backlog = analytics_backlog.map_or_else(|| "unknown".to_owned(), |b| b.to_string());
    Some(format!(
        "progress: {applied} events applied ({:.0}/s), {acked} entries acknowledged, stream lag {lag}, analytics backlog {backlog} ({analytics} terms recomputed), {dead} dead letters; {} events since start",
        applied as f64 / secs,
        now.events_applied
    ))
}

fn totals(status: &Status) -> Totals {
    let c = &status.consumer;
    Totals {
        events_applied: c.events_applied.load(Ordering::Relaxed),
        entries_acked: c.entries_acked.load(Ordering::Relaxed),
        dead_letters: c.dead_letters.load(Ordering::Relaxed),
        analytics_terms: status.analytics.terms_processed.load(Ordering::Relaxed),
    }
}

/// Logs progress until `cancel`.
pub async fn run(status: Arc<Status>, cancel: CancellationToken) {
    let every = status.config.progress_interval;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut before, mut at) = (totals(&status), Instant::now());
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = cancel.cancelled() => return,
        }
        let now = totals(&status);
        let lag: u64 = status
            .consumer
            .streams
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(_, info)| info.lag.unwrap_or(0))
            .sum();
        let backlog =
            Some(status.backlog.analytics_backlog.load(Ordering::Relaxed)).filter(|b| *b >= 0);
        if let Some(text) = line(before, now, at.elapsed(), lag, backlog) {
            tracing::info!("{text}");
        }
        (before, at) = (now, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silent_when_idle_and_complete_when_busy() {
        let t = Totals {
            events_applied: 100,
            entries_acked: 10,
            dead_letters: 1,
            analytics_terms: 5,
        };
        assert_eq!(line(t, t, Duration::from_secs(10), 0, Some(0)), None);
        let later = Totals {
            events_applied: 1100,
            entries_acked: 30,
            ..t
        };
        let text = line(t, later, Duration::from_secs(10), 42, Some(7)).unwrap();
        assert_eq!(
            text,
            "progress: 1000 events applied (100/s), 20 entries acknowledged, stream lag 42, analytics backlog 7 (0 terms recomputed), 0 dead letters; 1100 events since start"
        );
        // Analytics catching up alone is progress too; an unknown backlog says so.
        let analytics = Totals {
            analytics_terms: 9,
            ..t
        };
        let text = line(t, analytics, Duration::from_secs(1), 0, None).unwrap();
        assert!(
            text.contains("analytics backlog unknown (4 terms recomputed)"),
            "{text}"
        );
    }
}
