//! A large batch split by term into concurrent transactions (ADR 0016):
//! the parts do not wait for each other's term locks, and together they
//! apply exactly what one transaction would, a bad event rejected alone.

use std::time::Duration;

use writer::apply::{Delivered, Partitioning, ReadModel};
use writer::lock::{self, Domain, LockSet, TERM_STRIPES};

use crate::support::TestDb;
use crate::support::events::*;

/// Every batch split in two, however small.
const TWO: Partitioning = Partitioning {
    parts: 2,
    min_events: 1,
};

/// The first test id (`id(n)`, n from `from`) whose events go to `part`
/// of `parts`.
fn term_in_part(part: usize, parts: usize, from: u64) -> String {
    (from..)
        .map(id)
        .find(|t| lock::part_of(t, parts) == part)
        .expect("some id falls in every part")
}

/// Holds the term lock of `term` in `schema` (its stripe's advisory lock)
/// in a transaction of its own, until the returned transaction ends.
async fn hold_term_lock(db: &TestDb, term: &str) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut locks = LockSet::default();
    locks.add_stripes(
        &db.schema,
        Domain::Term,
        [lock::stripe(&[term], TERM_STRIPES)].into_iter(),
    );
    let mut tx = db.pool.begin().await.unwrap();
    for key in locks.into_sorted() {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(key)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx
}

/// Three deposits of distinct accounts into `term`, from block `block`.
fn deposits(term: &str, block: i64) -> Vec<String> {
    (0..3)
        .map(|i| deposited(&at(block, i), &addr(i as u64 + 1), term, 1, 10, 10, 0))
        .collect()
}

async fn count_deposits(db: &TestDb, term: &str) -> i64 {
    db.scalar_i64(&format!(
        "SELECT count(*) FROM deposited_events WHERE term_id = '{term}'"
    ))
    .await
}

/// Applies `payloads` split as `split` while the term lock of `blocked` is
/// held elsewhere; returns how many deposits of `free` were committed
/// while it was held (waiting up to `patience`), then releases it and
/// checks that everything applied.
async fn apply_while_locked(
    db: &TestDb,
    split: Partitioning,
    blocked: &str,
    free: &str,
    patience: Duration,
) -> i64 {
    let payloads: Vec<String> = deposits(blocked, 10)
        .into_iter()
        .chain(deposits(free, 11))
        .collect();
    let holder = hold_term_lock(db, blocked).await;
    let rm: ReadModel = db.read_model();
    let task = tokio::spawn(async move {
        let events = decode_all(&payloads);
        let delivered: Vec<Delivered<'_, '_>> = events.iter().map(Delivered::direct).collect();
        rm.apply_partitioned(&delivered, false, split)
            .await
            .map(|out| (out.applied.inserted.total(), out.rejected.len()))
    });
    let deadline = tokio::time::Instant::now() + patience;
    let mut seen = count_deposits(db, free).await;
    while seen < 3 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        seen = count_deposits(db, free).await;
    }
    // The blocked term's part is still waiting, whatever the split.
    assert_eq!(count_deposits(db, blocked).await, 0);
    assert!(!task.is_finished());
    holder.rollback().await.unwrap();
    let (inserted, rejected) = task.await.unwrap().expect("applied once the lock is free");
    assert_eq!((inserted, rejected), (6, 0));
    assert_eq!(
        db.rows("SELECT term_id, position_count FROM vault").await,
        {
            let mut v = vec![format!("{blocked}|3"), format!("{free}|3")];
            v.sort();
            v
        }
    );
    seen
}

/// The point of splitting: one part's term lock held elsewhere (another
/// batch's cascade) does not hold back the other part, which commits.
/// Unsplit, the whole batch waits (the same check sees nothing committed).
#[tokio::test]
async fn a_part_commits_while_another_waits_for_a_term_lock() {
    let (blocked, free) = (term_in_part(0, 2, 1), term_in_part(1, 2, 1));

    let db = TestDb::new().await;
    let seen = apply_while_locked(&db, TWO, &blocked, &free, Duration::from_secs(20)).await;
    assert_eq!(seen, 3, "the free part committed while the other waited");

    // Unsplit, nothing commits before the lock is free: one transaction,
    // or the writer's own setting with a small batch (a caught-up writer's
    // 6 events, fewer than PARTITION_MIN_EVENTS: a split would cost a
    // commit for nothing).
    for split in [Partitioning::NONE, Partitioning::new(2)] {
        let db = TestDb::new().await;
        let seen =
            apply_while_locked(&db, split, &blocked, &free, Duration::from_millis(500)).await;
        assert_eq!(seen, 0, "{split:?}: one transaction");
    }
}

/// Split or not, a batch over many terms — several events per vault and
/// position, an in-batch duplicate, SharePriceChanged before its deposit —
/// ends in the same tables; a bad event is rejected alone, reported at its
/// index in the whole batch, and its part's other events still apply.
#[tokio::test]
async fn split_batches_apply_what_one_transaction_would() {
    let mut payloads = Vec::new();
    for t in 0..24u64 {
        let term = id(100 + t);
        let block = 200 + t as i64;
        payloads.push(share_price(&at(block, 0), &term, 1, 2, 20, 10, 0));
        payloads.push(deposited(&at(block, 1), &addr(t % 5), &term, 1, 10, 10, 0));
        payloads.push(deposited(
            &at(block, 2),
            &addr(t % 3 + 7),
            &term,
            1,
            5,
            5,
            0,
        ));
        payloads.push(redeemed(&at(block, 3), &addr(t % 5), &term, 1, 4, 6, 0));
    }
    // An in-batch duplicate, and an event whose market cap overflows
    // NUMERIC(78,0) (valid input, refused by Postgres).
    payloads.push(payloads[5].clone());
    let bad_term = id(100 + 13);
    let huge = 1u128 << 127;
    let bad = share_price(&at(900, 0), &bad_term, 1, huge, 1, huge, 0).replace(
        &format!("\"sharePrice\":\"{huge}\""),
        &format!("\"sharePrice\":\"0x{}\"", "f".repeat(64)),
    );
    payloads.insert(41, bad);
    let events = decode_all(&payloads);
    let delivered: Vec<Delivered<'_, '_>> = events.iter().map(Delivered::direct).collect();

    let mut dumps = Vec::new();
    for split in [
        Partitioning::NONE,
        TWO,
        Partitioning {
            parts: 3,
            min_events: 1,
        },
    ] {
        let db = TestDb::new().await;
        let out = db
            .read_model()
            .apply_partitioned(&delivered, false, split)
            .await
            .unwrap();
        assert_eq!(out.applied.inserted.total(), 96, "{split:?}");
        assert_eq!(out.applied.duplicates, 1, "{split:?}");
        let rejected: Vec<usize> = out.rejected.iter().map(|r| r.index).collect();
        assert_eq!(rejected, [41], "{split:?}");
        assert_eq!(
            db.scalar_i64(&format!(
                "SELECT count(*) FROM deposited_events WHERE term_id = '{bad_term}'"
            ))
            .await,
            2,
            "the bad event's batch-mates of its own part apply ({split:?})"
        );
        dumps.push(db.dump_core().await);
    }
    assert_eq!(dumps[0], dumps[1], "two parts");
    assert_eq!(dumps[0], dumps[2], "three parts");
}

/// One event delivered twice on its stream, first from an abandoned fork
/// naming a term of one part, then from the new chain naming a term of the
/// other part (a re-included transaction: same hash and log index, another
/// block): split or not, the later delivery is the event, whether both
/// come in one batch (the parts race for the row) or the abandoned one was
/// stored by an earlier batch (its part replaces it and rebuilds what the
/// old row fed, in the other part).
#[tokio::test]
async fn a_delivery_replacing_another_parts_event_ends_as_one_transaction_would() {
    use writer::apply::{EntryId, Source};

    let (a, b) = (term_in_part(0, 2, 300), term_in_part(1, 2, 300));
    let old_fork = at(40, 0);
    let new_chain = At {
        block: 41,
        ..old_fork.clone()
    };
    let payloads = [
        deposited(&old_fork, &addr(1), &a, 1, 10, 10, 0),
        deposited(&new_chain, &addr(1), &b, 1, 20, 20, 0),
        // Other events of both terms, so that both parts have work.
        deposited(&at(42, 0), &addr(2), &a, 1, 5, 5, 0),
        deposited(&at(42, 1), &addr(2), &b, 1, 5, 5, 0),
    ];
    let events = decode_all(&payloads);
    let from = |i: usize| Delivered {
        source: Source {
            stream: "s",
            entry: EntryId {
                ms: 1 + i as i64,
                seq: 0,
            },
        },
        event: &events[i],
    };
    let all: Vec<Delivered<'_, '_>> = (0..events.len()).map(from).collect();

    let mut dumps = Vec::new();
    for split in [Partitioning::NONE, TWO] {
        for stored_first in [false, true] {
            let db = TestDb::new().await;
            let rm = db.read_model();
            let batch: &[Delivered<'_, '_>] = if stored_first {
                rm.apply_partitioned(&all[..1], false, split).await.unwrap();
                &all[1..]
            } else {
                &all[..]
            };
            let out = rm.apply_partitioned(batch, false, split).await.unwrap();
            assert!(out.rejected.is_empty(), "{split:?}");
            assert_eq!(
                db.rows("SELECT term_id, block_number FROM deposited_events WHERE log_index = 0 AND block_number < 42")
                    .await,
                [format!("{b}|41")],
                "{split:?}, stored first: {stored_first}"
            );
            dumps.push((split, stored_first, db.dump_core().await));
        }
    }
    for (split, stored_first, dump) in &dumps[1..] {
        assert_eq!(dump, &dumps[0].2, "{split:?}, stored first: {stored_first}");
    }
}

/// A part that fails (here: a statement timeout while another transaction
/// holds its term lock) fails the batch while the other part commits; the
/// batch retried whole applies the rest, and what the first attempt
/// committed is not applied twice (invariants 1 and 2: sums exact).
#[tokio::test]
async fn a_failed_part_leaves_the_committed_one_and_the_retry_applies_the_rest() {
    let (blocked, free) = (term_in_part(0, 2, 500), term_in_part(1, 2, 500));
    let db = TestDb::new().await;
    let mut config = TestDb::config(&db.url, &db.schema);
    config.statement_timeout = Duration::from_millis(300);
    let rm = ReadModel::new(writer::db::pool(&config).unwrap(), db.schema.as_str());
    let payloads: Vec<String> = deposits(&blocked, 10)
        .into_iter()
        .chain(deposits(&free, 11))
        .collect();
    let events = decode_all(&payloads);
    let delivered: Vec<Delivered<'_, '_>> = events.iter().map(Delivered::direct).collect();

    let holder = hold_term_lock(&db, &blocked).await;
    let error = rm
        .apply_partitioned(&delivered, false, TWO)
        .await
        .expect_err("the blocked part times out");
    assert_eq!(
        writer::db::classify(&error),
        writer::db::Failure::Transient,
        "{error}"
    );
    assert_eq!(
        count_deposits(&db, &free).await,
        3,
        "the free part committed"
    );
    assert_eq!(count_deposits(&db, &blocked).await, 0);
    holder.rollback().await.unwrap();

    let retry = rm.apply_partitioned(&delivered, false, TWO).await.unwrap();
    assert_eq!(
        (retry.applied.inserted.total(), retry.applied.duplicates),
        (3, 3)
    );
    let mut expected = vec![format!("{blocked}|3|30"), format!("{free}|3|30")];
    expected.sort();
    assert_eq!(
        db.rows(
            "SELECT v.term_id, v.position_count, sum(p.total_deposit_assets_after_total_fees) \
             FROM vault v JOIN position p USING (term_id, curve_id) GROUP BY 1, 2"
        )
        .await,
        expected
    );
}
