//! Real rindexer input (issue 11): reorg notices on every stream with a
//! positional meaning, exact under any interleaving, several writers,
//! reclaimed entries, flip-backs and redelivery; and rindexer's own sample.
//!
//! The expected tables always come from the final chain alone: its events
//! applied directly in chain order, and the independent model of the
//! analytics (`testkit::model`).

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use testkit::workload::{Entry, Spec, generate, stream_entries};
use writer::apply::{EntryId, Partitioning, ReadModel, Source};
use writer::config::RetryConfig;
use writer::ingest::Ingest;
use writer::retry::Circuit;
use writer::stream::StreamEntry;

use crate::support::TestDb;
use crate::support::service::{
    Env, Writer, assert_analytics, assert_exact, assert_same_core, eventually, model_of,
};

/// An environment for a real-shape (rindexer) workload with `reorgs`
/// reorgs, each a flip-back with probability `flip_back_ratio`.
async fn rindexer_env(seed: u64, events: usize, reorgs: usize, flip_back_ratio: f64) -> Env {
    let mut spec = Spec::rindexer(seed, events, reorgs);
    spec.flip_back_ratio = flip_back_ratio;
    Env::for_spec(spec).await
}

async fn dead_letters(db: &TestDb) -> Vec<String> {
    db.rows("SELECT stream, error FROM dead_letter").await
}

/// Reorg notices on all five streams, with the abandoned fork's entries
/// queued ahead of each copy and `affected_tx_hashes` empty, then the new
/// chain: all 15 tables equal the final chain alone, nothing is
/// dead-lettered, and every copy of every notice is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_on_every_stream_leave_only_the_final_chain() {
    let mut env = rindexer_env(31, 4_000, 2, 0.0).await;
    // Everything queued before the writer starts: each stream holds its
    // abandoned entries ahead of its copy of the notice.
    let workload = env.publish_workload().await;
    let abandoned: usize = workload
        .entries
        .iter()
        .filter(|e| e.abandoned && !e.duplicate)
        .map(|e| e.events)
        .sum();
    assert!(abandoned > 20, "{abandoned}");
    let writer = Writer::start(&env.writer_env("w1"));
    env.wait_drained().await;

    assert_exact(&env.db, &workload).await;
    assert_eq!(dead_letters(&env.db).await, Vec::<String>::new());
    let copies = env
        .db
        .rows("SELECT s.name, n.fork_block, n.message_id FROM reorg_notices n JOIN streams s ON s.id = n.stream_id")
        .await;
    assert_eq!(copies.len(), 5 * workload.reorgs.len(), "{copies:?}");
    for r in &workload.reorgs {
        for stream in &env.spec.streams {
            let copy = format!(
                "{stream}|{}|rindexer_stream__-reorg_intuition-testnet_{}-chunk-0",
                r.fork_block, r.fork_block
            );
            assert!(copies.contains(&copy), "{copy} not in {copies:?}");
        }
    }
    // Each abandoned event was counted at least once: removed by its
    // notice, never stored (a notice applied before it), or replaced by the
    // new chain's delivery (the new chain read before the notice).
    let (_, metrics) = writer.get("/metrics", None).await.unwrap();
    let orphaned = metric(&metrics, "writer_events_orphaned_total");
    assert!(orphaned >= abandoned as f64, "{orphaned} < {abandoned}");
    assert_eq!(metric(&metrics, "writer_reorgs_total"), 10.0);
    let log = writer.log();
    assert!(
        log.contains("applied reorg notice") && log.contains("fork_block"),
        "{log}"
    );
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

/// Three writers in one group with small batches, the streams interleaved
/// as rindexer's independent stream tasks may publish them, and one
/// abandoned entry left pending by a consumer that died (it read the entry
/// and never acknowledged it, as after a SIGKILL): that entry is reclaimed
/// only after its stream's notice was handled, and must not come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_writers_and_a_late_reclaimed_abandoned_entry() {
    let mut env = rindexer_env(32, 3_000, 2, 0.0).await;
    let workload = generate(&env.spec);
    let order = workload.interleaved(5);
    env.publish(order.iter().copied()).await;

    // The dead consumer: it read the deposited stream up to and including
    // its first abandoned entry, applied and acknowledged all but that one,
    // and died (SIGKILL) before applying it.
    let stream = env.spec.streams[2].clone();
    let in_stream: Vec<&Entry> = order.iter().copied().filter(|e| e.stream == 2).collect();
    let first_abandoned = in_stream
        .iter()
        .position(|e| e.abandoned && !e.duplicate)
        .expect("an abandoned deposit entry");
    env.create_group(&stream).await;
    let mut redis = env.redis.clone();
    let streams = [Arc::<str>::from(stream.as_str())];
    let mut read = writer::stream::read_group(
        &mut redis,
        &env.group,
        "sigkilled",
        &streams,
        &[">"],
        first_abandoned + 1,
        None,
    )
    .await
    .unwrap();
    assert_eq!(read.len(), first_abandoned + 1);
    let held = read.pop().unwrap().id;
    let dead = ingest_for(&env.db);
    let never = tokio_util::sync::CancellationToken::new();
    dead.process(&read, &never).await.expect("applied");
    let done: Vec<(&str, &str)> = read
        .iter()
        .map(|e| (stream.as_str(), e.id.as_str()))
        .collect();
    writer::stream::ack(&mut redis, &env.group, &done)
        .await
        .unwrap();

    let mut vars = env.writer_env("w");
    vars.insert("BATCH_SIZE".into(), "7".into());
    vars.insert("CLAIM_IDLE_MS".into(), "4000".into());
    let writers: Vec<Writer> = (1..=3)
        .map(|i| {
            let mut v = vars.clone();
            v.insert("CONSUMER_NAME".into(), format!("w{i}"));
            Writer::start(&v)
        })
        .collect();

    // The notice on the deposited stream is handled while the dead
    // consumer still holds the abandoned entry.
    eventually(Duration::from_secs(60), Duration::from_millis(50), async || {
        let notices = env
            .db
            .scalar_i64(&format!(
                "SELECT count(*) FROM reorg_notices n JOIN streams s ON s.id = n.stream_id WHERE s.name = '{stream}'"
            ))
            .await;
        match notices {
            0 => Err("no notice handled".to_owned()),
            _ => Ok(()),
        }
    })
    .await;
    assert_eq!(
        pending_of(&mut redis, &stream, &env.group, "sigkilled").await,
        [held]
    );

    env.wait_drained().await;
    assert!(
        pending_of(&mut redis, &stream, &env.group, "sigkilled")
            .await
            .is_empty()
    );
    assert_exact(&env.db, &workload).await;
    assert_eq!(dead_letters(&env.db).await, Vec::<String>::new());
    let reclaimed = writers
        .iter()
        .any(|w| w.log().contains("reclaimed entries of an idle consumer"));
    assert!(reclaimed, "nobody reclaimed the dead consumer's entry");
}

async fn pending_of(
    redis: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    group: &str,
    consumer: &str,
) -> Vec<String> {
    let reply: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .arg("-")
        .arg("+")
        .arg(100)
        .arg(consumer)
        .query_async(redis)
        .await
        .unwrap();
    reply.into_iter().map(|r| r.0).collect()
}

/// A notice reaching a caught-up writer: rindexer publishes its copies to
/// every stream at once, and the read woken by the first copy brings the
/// others into the same batch, so all five apply in one transaction (one
/// wait for the exclusive reorg lock, one rebuild) instead of one per
/// stream, each holding every batch back (benches/README.md). The tables
/// still hold the final chain exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_reaching_a_caught_up_writer_apply_in_one_transaction() {
    let mut env = rindexer_env(36, 600, 1, 0.0).await;
    let workload = generate(&env.spec);
    let first = workload.entries.iter().position(|e| e.notice).unwrap();
    let copies = &workload.entries[first..first + 5];
    assert!(copies.iter().all(|e| e.notice));
    let _writer = Writer::start(&env.writer_env("w1"));
    // Caught up on everything before the notice, the abandoned fork
    // included: the reader waits in its blocking read.
    env.publish(&workload.entries[..first]).await;
    env.wait_streams_drained().await;
    // The copies, as rindexer sends them: one after the other, pipelined.
    env.publish(copies).await;
    env.wait_streams_drained().await;
    let transactions = env
        .db
        .scalar_i64("SELECT count(DISTINCT xmin::text) FROM reorg_notices")
        .await;
    assert_eq!(
        env.db
            .scalar_i64("SELECT count(*) FROM reorg_notices")
            .await,
        5
    );
    assert_eq!(
        transactions, 1,
        "the copies took {transactions} transactions"
    );
    env.publish(&workload.entries[first + 5..]).await;
    env.wait_drained().await;
    assert_exact(&env.db, &workload).await;
}

/// A reorg rebuilds its vaults from their newest remaining events, read
/// first from the blocks just below the fork (`vault::recompute`): exactly
/// the rows of the surviving events, whether a vault's newest event and its
/// newest SharePriceChanged are both in that window, one in it and one far
/// below, exactly at its edge, or both below (then its whole history); a
/// vault whose only SharePriceChanged was abandoned has zero totals again
/// (invariant 3); and a vault only the abandoned fork had is deleted.
#[tokio::test]
async fn a_reorgs_rebuild_reads_near_the_fork_first_and_stays_exact() {
    use crate::support::events::*;
    let (actual, expected) = (TestDb::new().await, TestDb::new().await);
    let fork: i64 = 1_000;
    let edge = fork - writer::apply::RECENT_BLOCKS;
    let (alice, bob, carol) = (addr(0xa), addr(0xb), addr(0xc));
    let [both, split, at_edge, far, gone, pair] = [id(1), id(2), id(3), id(4), id(5), id(6)];
    let survivors = vec![
        // Both newest events just below the fork.
        share_price(&at(fork - 5, 0), &both, 1, 7, 70, 10, 0),
        deposited(&at(fork - 5, 1), &alice, &both, 1, 70, 10, 0),
        // The newest SharePriceChanged far below, a deposit near the fork.
        share_price(&at(10, 0), &split, 1, 3, 30, 10, 0),
        deposited(&at(fork - 2, 0), &alice, &split, 1, 40, 10, 1),
        // The newest event exactly at the first block read first.
        share_price(&at(edge - 1, 0), &at_edge, 1, 4, 40, 10, 0),
        share_price(&at(edge, 0), &at_edge, 1, 5, 50, 10, 0),
        // Everything far below.
        share_price(&at(20, 0), &far, 2, 9, 90, 10, 0),
        deposited(&at(20, 1), &alice, &far, 2, 90, 10, 0),
        // Two curves of one term; on curve 1 one open position and one
        // redeemed to zero: the count is per vault and of open positions.
        deposited(&at(30, 0), &alice, &pair, 1, 10, 10, 0),
        deposited(&at(30, 1), &bob, &pair, 1, 10, 10, 0),
        redeemed(&at(31, 0), &bob, &pair, 1, 10, 0, 0),
        deposited(&at(32, 0), &carol, &pair, 2, 10, 10, 0),
    ];
    // The abandoned fork: newer events of every vault, on stream "s".
    let abandoned = vec![
        share_price(&at(fork, 0), &both, 1, 8, 80, 11, 1),
        deposited(&at(fork, 1), &alice, &both, 1, 5, 11, 1),
        share_price(&at(fork + 1, 0), &split, 1, 6, 60, 11, 0),
        deposited(&at(fork + 1, 1), &alice, &at_edge, 1, 5, 11, 1),
        redeemed(&at(fork + 2, 0), &alice, &far, 2, 5, 9, 1),
        share_price(&at(fork + 2, 1), &gone, 1, 2, 20, 10, 0),
        deposited(&at(fork + 2, 2), &alice, &gone, 1, 20, 10, 0),
        deposited(&at(fork + 3, 0), &carol, &pair, 1, 5, 5, 0),
        deposited(&at(fork + 3, 1), &bob, &pair, 2, 5, 5, 0),
        // Curve 2's only SharePriceChanged: its totals go back to 0.
        share_price(&at(fork + 3, 2), &pair, 2, 4, 40, 10, 0),
    ];
    apply_each(&expected.read_model(), &survivors).await;
    let rm = actual.read_model();
    apply_each(&rm, &survivors).await;
    apply_on_stream(&rm, "s", &abandoned).await;
    let notice = reorg_notice(fork, 3, &[], "m1");
    let notice = writer::decode::decode_json(&notice);
    let source = Source {
        stream: "s",
        entry: EntryId::parse("2-0").unwrap(),
    };
    let done = writer::reorg::apply(&rm, &[(&notice.reorgs[0], source)])
        .await
        .unwrap();
    assert_eq!(done.copies[0].removed_events, 10);
    let vaults = format!(
        "SELECT curve_id, position_count, total_assets, current_share_price, market_cap
         FROM vault WHERE term_id = '{pair}' ORDER BY curve_id"
    );
    assert_eq!(actual.rows(&vaults).await, ["1|1|0|0|0", "2|1|0|0|0"]);
    assert_same_core(&actual, &expected).await;
}

/// Copies applied together (`reorg::apply`: three statements, however many
/// copies) do exactly what they do applied one by one in the same order:
/// of two notices on one stream covering the same event, the first removes
/// it; a copy repeated in the same call, or recorded before, is not applied
/// again; each copy's count of removed events, its record (hashes, message
/// id, depth) and the tables are the same, and the tables hold the
/// survivors alone.
#[tokio::test]
async fn copies_applied_together_do_what_they_do_one_by_one() {
    use crate::support::events::*;
    let dbs = [
        TestDb::new().await,
        TestDb::new().await,
        TestDb::new().await,
    ];
    let [together, one_by_one, survivors_only] = &dbs;
    let fork: i64 = 100;
    let alice = addr(0xa);
    let [a, b] = [id(1), id(2)];
    let survivors = vec![
        share_price(&at(50, 0), &a, 1, 7, 70, 10, 0),
        deposited(&at(50, 1), &alice, &a, 1, 70, 10, 0),
        share_price(&at(60, 0), &b, 1, 3, 30, 10, 0),
    ];
    // The abandoned fork, as streams "s" and "t" delivered it (entries 1-i).
    let on_s = vec![
        share_price(&at(fork, 0), &a, 1, 8, 80, 11, 0),
        deposited(&at(fork + 1, 0), &alice, &a, 1, 5, 11, 0),
        share_price(&at(fork + 5, 0), &b, 1, 4, 40, 11, 0),
    ];
    let on_t = vec![
        deposited(&at(fork + 2, 0), &alice, &b, 1, 5, 11, 0),
        share_price(&at(fork + 6, 0), &a, 1, 9, 90, 12, 0),
    ];
    let hash = id(0xfeed);
    let payloads = [
        reorg_notice(fork + 5, 7, &[], "m1"),
        reorg_notice(fork, 7, &[], "m2"),
        reorg_notice(fork, 7, &[&hash[2..]], "m3"),
        reorg_notice(fork + 100, 7, &[], "m0"),
    ];
    let decoded: Vec<_> = payloads
        .iter()
        .map(|p| writer::decode::decode_json(p))
        .collect();
    let copy = |n: usize, stream: &'static str, entry: &'static str| {
        (
            &decoded[n].reorgs[0],
            Source {
                stream,
                entry: EntryId::parse(entry).unwrap(),
            },
        )
    };
    // Recorded before, in its own call: covers nothing.
    let before = copy(3, "t", "1-5");
    let copies = [
        copy(0, "s", "2-0"),
        copy(1, "s", "3-0"),
        copy(2, "t", "2-0"),
        copy(0, "s", "2-0"),
        before,
    ];
    for db in &dbs {
        apply_each(&db.read_model(), &survivors).await;
    }
    for db in [together, one_by_one] {
        let rm = db.read_model();
        apply_on_stream(&rm, "s", &on_s).await;
        apply_on_stream(&rm, "t", &on_t).await;
        let done = writer::reorg::apply(&rm, &[before]).await.unwrap();
        assert_eq!(done.copies[0].removed_events, 0);
    }
    let outcome = |copies: Vec<writer::reorg::ReorgOutcome>| -> Vec<(bool, u64)> {
        copies
            .into_iter()
            .map(|c| (c.applied, c.removed_events))
            .collect()
    };
    let all = writer::reorg::apply(&together.read_model(), &copies)
        .await
        .unwrap();
    let mut each = Vec::new();
    for copy in &copies {
        let done = writer::reorg::apply(&one_by_one.read_model(), std::slice::from_ref(copy))
            .await
            .unwrap();
        each.extend(done.copies);
    }
    let expected = vec![(true, 1), (true, 2), (true, 2), (false, 0), (false, 0)];
    assert_eq!(outcome(all.copies), expected);
    assert_eq!(outcome(each), expected);
    let recorded = "SELECT s.name, n.entry_ms || '-' || n.entry_seq, n.fork_block, n.depth,
             n.affected_tx_hashes::text, n.message_id, n.removed_events, n.notice::text
         FROM reorg_notices n JOIN streams s ON s.id = n.stream_id ORDER BY n.id";
    // Sorted rows: stream, then entry.
    let rows = together.rows(recorded).await;
    let heads: Vec<&str> = rows.iter().map(|r| &r[..r.find("|{\"").unwrap()]).collect();
    assert_eq!(
        heads,
        [
            format!("s|2-0|{}|7|{{}}|m1|1", fork + 5),
            format!("s|3-0|{fork}|7|{{}}|m2|2"),
            format!("t|1-5|{}|7|{{}}|m0|0", fork + 100),
            format!("t|2-0|{fork}|7|{{{hash}}}|m3|2"),
        ]
    );
    assert_eq!(rows, one_by_one.rows(recorded).await);
    assert_same_core(together, one_by_one).await;
    assert_same_core(together, survivors_only).await;
}

/// The chain flips back: fork A, a notice, fork B, a second notice at the
/// same fork block with the same message_id, fork A again. The tables hold
/// fork A; a copy of a notice delivered again changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flip_back_and_a_redelivered_notice() {
    let mut env = rindexer_env(33, 2_500, 1, 1.0).await;
    let workload = generate(&env.spec);
    assert!(workload.reorgs[0].flip_back);
    let notices: Vec<&Entry> = workload.entries.iter().filter(|e| e.notice).collect();
    assert_eq!(notices.len(), 10);
    assert_eq!(notices[0].payload, notices[5].payload, "same message_id");
    let _writer = Writer::start(&env.writer_env("w1"));
    env.publish(&workload.entries).await;
    env.wait_drained().await;
    assert_exact(&env.db, &workload).await;
    assert_eq!(
        env.db
            .scalar_i64("SELECT count(*) FROM reorg_notices")
            .await,
        10
    );

    // A copy delivered again (same stream, same entry id): nothing changes.
    let before = env.db.dump_core().await;
    let rm = env.db.read_model();
    let (stream, id): (String, String) = {
        let row = env
            .db
            .rows("SELECT s.name || ' ' || n.entry_ms || '-' || n.entry_seq FROM reorg_notices n JOIN streams s ON s.id = n.stream_id ORDER BY n.id LIMIT 1")
            .await;
        let (s, i) = row[0].split_once(' ').unwrap();
        (s.to_owned(), i.to_owned())
    };
    let decoded = writer::decode::decode_json(&notices[0].payload);
    let source = Source {
        stream: &stream,
        entry: EntryId::parse(&id).unwrap(),
    };
    let again = writer::reorg::apply(&rm, &[(&decoded.reorgs[0], source)])
        .await
        .unwrap();
    assert!(!again.copies[0].applied);
    assert_eq!(env.db.dump_core().await, before);
}

/// rindexer's own messages (v0.28.1 shape, `tests/data`): the tables hold
/// exactly what their events define, with no dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rindexer_sample_through_the_streams() {
    let text = include_str!("../data/rindexer-sample-v0.28.jsonl");
    let mut env = Env::new(34, 0).await;
    let names = [
        "atom_created",
        "triple_created",
        "deposited",
        "redeemed",
        "share_price_changed",
    ];
    let mut payloads = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let stream = names
            .iter()
            .position(|n| v["stream"] == *n)
            .expect("a known stream");
        let field = v["field"].as_str().unwrap().to_owned();
        let payload = serde_json::to_string(&v["payload"]).unwrap();
        payloads.push(payload.clone());
        env.publish_raw(stream, &[(&field, payload.as_bytes())])
            .await;
    }
    let _writer = Writer::start(&env.writer_env("w1"));
    env.wait_drained().await;
    assert_eq!(dead_letters(&env.db).await, Vec::<String>::new());

    let events: Vec<_> = payloads
        .iter()
        .flat_map(|p| {
            let d = writer::decode::decode_json(p);
            assert!(d.errors.is_empty(), "{:?}", d.errors);
            d.events
        })
        .collect();
    assert_eq!(events.len(), 22);
    let expected = TestDb::new().await;
    let mut ordered = events.clone();
    ordered.sort_by_key(|e| e.chain.order());
    expected.read_model().apply(&ordered).await.unwrap();
    assert_same_core(&env.db, &expected).await;
    assert_analytics(&env.db, &model_of(&events)).await;
    // What the sample's values become: ids with 0x, checksummed addresses,
    // atom data decoded, and the counter term computed as the contract
    // does (the sample's counter vault is b82cb14a…).
    let creator = writer::event::Address::parse("0x5dad7600c5d89fe3824ffa99ec1c3eb8bf3b0501")
        .unwrap()
        .to_string();
    assert_eq!(
        env.db
            .rows("SELECT term_id, data, creator_id FROM atom WHERE data = 'has tag'")
            .await,
        [format!(
            "0x6de69cc0ae3efe4000279b1bf365065096c8715d8180bc2a98046ee07d3356fd|has tag|{creator}"
        )]
    );
    let triple = "0x0e62bbfd5a9a71abb63447432cda12843d15c8dc53e21c60f699bd91953fe8c3";
    assert_eq!(
        env.db
            .rows(&format!(
                "SELECT t.type, t.triple_id, left(t.id, 10) FROM term t JOIN triple x ON t.id = x.counter_term_id WHERE x.term_id = '{triple}'"
            ))
            .await,
        [format!("Triple|{triple}|0xb82cb14a")]
    );
}

// ---- property: any interleaving, batching, concurrency, redelivery ----

/// What a writer runs per batch, on `db`: batches in one transaction.
fn ingest_for(db: &TestDb) -> Ingest {
    ingest_split(db, Partitioning::NONE)
}

/// What a writer runs per batch, on `db`, splitting batches as `split` says.
fn ingest_split(db: &TestDb, split: Partitioning) -> Ingest {
    Ingest {
        read_model: ReadModel::new(db.pool.clone(), db.schema.as_str()),
        max_deliveries: 1000,
        retry: RetryConfig {
            max_retries: 5,
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(100),
        },
        circuit: Arc::new(Circuit::new(5)),
        split,
    }
}

/// Processes `deliveries` (stream entries, some more than once) in batches
/// of random size by `workers` concurrent tasks, like writers in a group
/// whose batches commit in any order, each batch split into `parts`
/// concurrent transactions (ADR 0016; every batch, however small).
async fn ingest_concurrently(
    db: &TestDb,
    deliveries: Vec<StreamEntry>,
    workers: usize,
    parts: usize,
    seed: u64,
) {
    let split = Partitioning {
        parts,
        min_events: 1,
    };
    let ingest = Arc::new(ingest_split(db, split));
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut batches: Vec<Vec<StreamEntry>> = Vec::new();
    let mut rest = deliveries;
    while !rest.is_empty() {
        let n = rng.usize(1..=40).min(rest.len());
        let tail = rest.split_off(n);
        batches.push(std::mem::replace(&mut rest, tail));
    }
    let queue = Arc::new(std::sync::Mutex::new(batches));
    let never = tokio_util::sync::CancellationToken::new();
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (ingest, queue, never) = (ingest.clone(), queue.clone(), never.clone());
            tokio::spawn(async move {
                loop {
                    let batch = queue.lock().unwrap().pop();
                    let Some(batch) = batch else { break };
                    let processed = ingest.process(&batch, &never).await.expect("processed");
                    assert!(
                        processed.dead_letters.is_empty(),
                        "{:?}",
                        processed.dead_letters
                    );
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

fn check(seed: u64, reorgs: usize, depth: i64, workers: usize, parts: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut spec = Spec::rindexer(seed, 1_200, reorgs);
        spec.max_reorg_depth = depth;
        let workload = generate(&spec);
        assert_eq!(workload.reorgs.len(), reorgs);
        let mut rng = fastrand::Rng::with_seed(seed ^ 0xabc);
        let order = workload.interleaved(rng.u64(..));
        let mut deliveries = stream_entries(order);
        // Redelivery (a restart, a reclaim): some entries, notices
        // included, are processed again, anywhere in the sequence.
        for _ in 0..deliveries.len() / 10 {
            let copy = deliveries[rng.usize(..deliveries.len())].clone();
            let at = rng.usize(..=deliveries.len());
            deliveries.insert(at, copy);
        }
        // Batches complete in any order: shuffle them, keeping nothing of
        // the streams' order but the entry ids.
        rng.shuffle(&mut deliveries);
        let actual = TestDb::new().await;
        ingest_concurrently(&actual, deliveries, workers, parts, rng.u64(..)).await;
        testkit::drain_analytics(&actual.pool, &actual.schema)
            .await
            .unwrap();
        assert_exact(&actual, &workload).await;
    });
}

/// Cases per run: 8 in CI; `REORG_CASES=200` for a longer search.
fn cases() -> u32 {
    std::env::var("REORG_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// Real-shape chains with 1–3 reorgs at random depths (flip-backs
    /// included), delivered in any interleaving, batching and concurrency,
    /// with redelivery, batches split by term into concurrent transactions
    /// or not: always exactly the final chain.
    #[test]
    fn any_delivery_of_a_reorganising_chain_ends_in_its_final_chain(
        seed in 0u64..1_000_000,
        reorgs in 1usize..=3,
        depth in 1i64..=6,
        workers in 1usize..=4,
        parts in 1usize..=3,
    ) {
        check(seed, reorgs, depth, workers, parts);
    }
}
