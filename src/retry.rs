//! Retrying: exponential backoff with full jitter, and a circuit breaker.
//!
//! Full jitter (a uniformly random delay between zero and the exponential
//! ceiling) spreads the retries of several writers and workers instead of
//! having them hit a recovering Postgres in lockstep — the older writer's
//! jitter-free backoff did exactly that.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::RetryConfig;

/// Exponential backoff with full jitter: attempt `n` waits a uniformly
/// random time in `[0, min(max, base · 2^n)]`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(config: &RetryConfig) -> Backoff {
        Backoff {
            base: config.base_delay,
            max: config.max_delay,
            attempt: 0,
        }
    }

    /// The ceiling of the current attempt, before jitter.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u64.checked_shl(self.attempt.min(63)).unwrap_or(u64::MAX);
        let millis = (self.base.as_millis() as u64).saturating_mul(factor);
        Duration::from_millis(millis).min(self.max)
    }

    /// The delay before the next attempt; advances the attempt counter.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let millis = ceiling.as_millis() as u64;
        Duration::from_millis(fastrand::u64(0..=millis))
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Sleeps for the next delay; returns false if cancelled meanwhile.
    pub async fn wait(&mut self, cancel: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = cancel.cancelled() => false,
        }
    }
}

/// Stops the consumer from pulling new work while Postgres is failing.
///
/// Opens on an unavailable database, or after `MAX_RETRIES` consecutive
/// failed attempts; the retrying worker is the probe, and its first success
/// closes it and wakes the reader.
#[derive(Debug)]
pub struct Circuit {
    open: AtomicBool,
    failures: AtomicU32,
    threshold: u32,
    closed: Notify,
}

impl Circuit {
    pub fn new(threshold: u32) -> Circuit {
        Circuit {
            open: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            threshold,
            closed: Notify::new(),
        }
    }

    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// Records a failed attempt; `unavailable` opens the circuit at once.
    /// Returns true when this call opened it.
    pub fn record_failure(&self, unavailable: bool) -> bool {
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if unavailable || failures > self.threshold {
            return !self.open.swap(true, Ordering::AcqRel);
        }
        false
    }

    /// Records a success; returns true when this call closed the circuit.
    pub fn record_success(&self) -> bool {
        self.failures.store(0, Ordering::Release);
        let closed = self.open.swap(false, Ordering::AcqRel);
        if closed {
            self.closed.notify_waiters();
        }
        closed
    }

    /// Waits until the circuit is closed (or cancellation). Returns false
    /// if cancelled.
    ///
    /// No wakeup can be lost, so nothing re-checks periodically. Only
    /// [`Circuit::record_success`] closes the circuit, clearing `open`
    /// before it calls `notify_waiters()`; a `Notified` receives every
    /// `notify_waiters()` made after its creation, even before it is first
    /// polled (no `enable()` needed: that is for `notify_one()`). Created
    /// before `is_open()` is read, it is either woken by that call or was
    /// created after it, and then `is_open()` sees the circuit closed.
    pub async fn wait_closed(&self, cancel: &CancellationToken) -> bool {
        loop {
            let notified = self.closed.notified();
            if !self.is_open() {
                return true;
            }
            tokio::select! {
                _ = notified => {}
                _ = cancel.cancelled() => return false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn config(base: u64, max: u64) -> RetryConfig {
        RetryConfig {
            max_retries: 3,
            base_delay: Duration::from_millis(base),
            max_delay: Duration::from_millis(max),
        }
    }

    #[test]
    fn ceiling_doubles_up_to_the_maximum() {
        let mut b = Backoff::new(&config(100, 1000));
        let ceilings: Vec<u64> = (0..6)
            .map(|_| {
                let c = b.ceiling().as_millis() as u64;
                b.next_delay();
                c
            })
            .collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }

    #[test]
    fn jitter_spreads_delays() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let mut b = Backoff::new(&config(1000, 1000));
            seen.insert(b.next_delay().as_millis());
        }
        assert!(seen.len() > 50, "delays are not jittered: {seen:?}");
    }

    proptest! {
        #[test]
        fn delays_never_exceed_the_ceiling(base in 1u64..10_000, extra in 0u64..100_000, attempts in 0usize..200) {
            let max = base + extra;
            let mut b = Backoff::new(&config(base, max));
            for _ in 0..attempts {
                let ceiling = b.ceiling();
                prop_assert!(ceiling <= Duration::from_millis(max));
                prop_assert!(b.next_delay() <= ceiling);
            }
        }
    }

    #[test]
    fn circuit_opens_and_closes() {
        let c = Circuit::new(2);
        assert!(!c.record_failure(false));
        assert!(!c.record_failure(false));
        assert!(!c.is_open());
        assert!(c.record_failure(false));
        assert!(c.is_open());
        assert!(c.record_success());
        assert!(!c.is_open());
        assert!(c.record_failure(true), "unavailable opens at once");
        assert!(!c.record_failure(true), "already open");
    }

    #[tokio::test]
    async fn waiting_reader_wakes_when_the_circuit_closes() {
        let c = std::sync::Arc::new(Circuit::new(0));
        c.record_failure(true);
        let cancel = CancellationToken::new();
        let waiter = {
            let (c, cancel) = (c.clone(), cancel.clone());
            tokio::spawn(async move { c.wait_closed(&cancel).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        c.record_success();
        assert!(
            tokio::time::timeout(Duration::from_secs(1), waiter)
                .await
                .unwrap()
                .unwrap()
        );
    }
}
