//! Property: the tables depend only on the set of events, not on their
//! order, duplication or concurrency. A generated stream of mixed events is
//! applied (a) in chain order and (b) shuffled with ~10% duplicates by four
//! concurrent tasks; both must give identical tables, equal to the
//! independent model of the invariants.

use std::sync::Mutex;

use proptest::prelude::*;
use testkit::workload::{Spec, generate};
use writer::apply::ReadModel;
use writer::event::ChainEvent;

use crate::support::TestDb;
use testkit::model::Model;

const EVENTS: usize = 6_000;

async fn apply_in_chain_order(rm: &ReadModel, events: &[ChainEvent<'_>]) {
    let mut ordered: Vec<ChainEvent<'_>> = events.to_vec();
    ordered.sort_by_key(|e| e.chain.order());
    for chunk in ordered.chunks(250) {
        rm.apply(chunk).await.expect("apply in order");
    }
}

async fn apply_shuffled_concurrently(rm: &ReadModel, events: &[ChainEvent<'_>], seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut shuffled: Vec<ChainEvent<'_>> = events.to_vec();
    for _ in 0..events.len() / 10 {
        shuffled.push(events[rng.usize(..events.len())].clone());
    }
    rng.shuffle(&mut shuffled);
    let mut batches = Vec::new();
    while !shuffled.is_empty() {
        let n = rng.usize(1..=400).min(shuffled.len());
        batches.push(shuffled.drain(..n).collect::<Vec<_>>());
    }
    let queue = Mutex::new(batches);
    let worker = || async {
        loop {
            let Some(batch) = queue.lock().unwrap().pop() else {
                return;
            };
            rm.apply(&batch).await.expect("apply shuffled");
        }
    };
    tokio::join!(worker(), worker(), worker(), worker());
}

fn check(seed: u64) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut spec = Spec::new(seed, EVENTS);
        spec.duplicate_ratio = 0.0;
        let workload = generate(&spec);
        let events: Vec<ChainEvent<'_>> = workload.events();
        assert_eq!(events.len(), workload.unique_events);
        assert!(events.len() >= EVENTS);

        let (ordered, shuffled) = tokio::join!(TestDb::new(), TestDb::new());
        let (rm_ordered, rm_shuffled) = (ordered.read_model(), shuffled.read_model());
        tokio::join!(
            apply_in_chain_order(&rm_ordered, &events),
            apply_shuffled_concurrently(&rm_shuffled, &events, seed),
        );

        let a = ordered.dump_core().await;
        let b = shuffled.dump_core().await;
        for ((table, rows_a), (_, rows_b)) in a.iter().zip(&b) {
            assert!(
                rows_a == rows_b,
                "{table} differs between chain order and shuffled ({} vs {} rows)",
                rows_a.len(),
                rows_b.len()
            );
        }

        let mut model = Model::default();
        model.apply_all(&events);
        let table = |name: &str| a.iter().find(|(t, _)| t == name).unwrap().1.clone();
        assert_eq!(table("position"), model.positions(), "position");
        assert_eq!(table("vault"), model.vaults(), "vault");
        assert_eq!(table("term"), model.terms(), "term");
        assert_eq!(table("atom"), model.atoms(), "atom");
        assert_eq!(table("triple"), model.triples(), "triple");
        // The workload exercises what the invariants are about.
        assert!(
            table("position")
                .iter()
                .any(|r| r.split('|').nth(3) == Some("0")),
            "some position redeemed to zero"
        );
        assert!(table("term").iter().any(|r| r.contains("|Triple|")));
        assert!(
            table("vault")
                .iter()
                .any(|r| r.split('|').nth(7) == Some("2")),
            "counter vaults"
        );
    });
}

/// Cases per run: 2 in CI; `APPLY_CASES=50` for a longer search (each case
/// races four writers over the same hot vaults and terms).
fn cases() -> u32 {
    std::env::var("APPLY_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn order_duplication_and_concurrency_do_not_matter(seed in any::<u64>()) {
        check(seed);
    }
}
