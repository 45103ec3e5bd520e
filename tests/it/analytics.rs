//! Analytics, backfill and reorgs: the derived tables always converge to
//! invariants 6–8, computed independently in `support::model` (issue 4).

use crate::support::CleanEnv;
use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use writer::event::ChainEvent;
use writer::workload::{Workload, generate};

use crate::support::TestDb;
use crate::support::model::Model;
use crate::support::service::{Env, Writer, applied_directly, assert_same_core};

const DRAIN: Duration = Duration::from_secs(120);

fn model_of<'a>(events: impl IntoIterator<Item = &'a ChainEvent<'a>>) -> Model {
    let mut m = Model::default();
    m.apply_all(events);
    m
}

async fn assert_analytics(db: &TestDb, model: &Model) {
    let (actual, expected) = (db.dump_analytics().await, model.analytics());
    for (name, a, e) in [
        ("triple_vault", &actual.triple_vault, &expected.triple_vault),
        ("triple_term", &actual.triple_term, &expected.triple_term),
        (
            "predicate_object",
            &actual.predicate_object,
            &expected.predicate_object,
        ),
        (
            "subject_predicate",
            &actual.subject_predicate,
            &expected.subject_predicate,
        ),
    ] {
        if a != e {
            let missing: Vec<_> = e.iter().filter(|r| !a.contains(r)).take(3).collect();
            let extra: Vec<_> = a.iter().filter(|r| !e.contains(r)).take(3).collect();
            panic!(
                "{name}: {} rows, expected {}\n  missing {missing:?}\n  unexpected {extra:?}",
                a.len(),
                e.len()
            );
        }
    }
    assert!(!expected.triple_vault.is_empty() && !expected.predicate_object.is_empty());
}

/// After a workload drains, all four analytics tables equal the
/// from-scratch computation of invariants 6–8.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_converge_exactly() {
    let mut env = Env::new(21, 5_000).await;
    let workload = generate(&env.spec);
    let _writer = Writer::start(&env.writer_env("w1"));
    env.publish(&workload.entries).await;
    env.wait_drained(DRAIN).await;
    let events = workload.events();
    assert_analytics(&env.db, &model_of(&events)).await;
    let checkpoint = env
        .db
        .rows("SELECT last_term_id IS NOT NULL, terms_processed > 0 FROM analytics_checkpoint")
        .await;
    assert_eq!(checkpoint, ["true|true"]);
}

/// SIGKILL at random moments while consuming, restarting each time: core
/// tables and analytics still converge exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converges_after_repeated_sigkills() {
    let mut env = Env::new(22, 30_000).await;
    let workload = generate(&env.spec);
    env.publish(&workload.entries).await;
    let vars = env.writer_env("w1");
    let kills_mid_stream = env.kill_repeatedly(&vars, 8, 22).await;
    assert!(
        kills_mid_stream >= 4,
        "only {kills_mid_stream} kills hit a busy writer"
    );
    let _writer = Writer::start(&vars);
    env.wait_drained(DRAIN).await;
    let expected = applied_directly(&workload).await;
    assert_same_core(&env.db, &expected).await;
    assert_analytics(&env.db, &model_of(&workload.events())).await;
}

/// A channel of capacity 1 under load drops messages; the dirty marks make
/// up for every one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_channel_loses_nothing() {
    let mut env = Env::new(23, 6_000).await;
    let workload = generate(&env.spec);
    let mut vars = env.writer_env("w1");
    vars.insert("ANALYTICS_CHANNEL_CAPACITY".into(), "1".into());
    vars.insert("MIN_BATCH_INTERVAL_MS".into(), "200".into());
    vars.insert("ANALYTICS_SWEEP_INTERVAL_MS".into(), "1000".into());
    let writer = Writer::start(&vars);
    env.publish(&workload.entries).await;
    env.wait_drained(DRAIN).await;
    let (_, metrics) = writer.get("/metrics", None).await.unwrap();
    let dropped: f64 = metrics
        .lines()
        .find(|l| l.starts_with("writer_analytics_messages_dropped_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(
        dropped > 0.0,
        "the channel never overflowed; the test proves nothing"
    );
    assert_analytics(&env.db, &model_of(&workload.events())).await;
}

fn backfill(
    vars: &std::collections::HashMap<String, String>,
    args: &[&str],
) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_writer"))
        .arg("backfill")
        .args(args)
        .clean_env()
        .envs(vars)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

async fn wreck_derived_tables(db: &TestDb) {
    sqlx::raw_sql(
        "TRUNCATE triple_vault, triple_term, predicate_object, subject_predicate;
         UPDATE term SET total_assets = 0, total_market_cap = 0;
         UPDATE vault SET position_count = 0;",
    )
    .execute(&db.pool)
    .await
    .unwrap();
}

/// Analytics truncated and term totals zeroed: `writer backfill --from-term
/// 0x00` restores every row exactly, also while `writer run` applies more
/// events; interrupted half-way and run again, the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_restores_everything_and_resumes() {
    let mut env = Env::new(24, 6_000).await;
    let workload = generate(&env.spec);
    let (first, second) = workload.entries.split_at(workload.entries.len() / 2);
    let vars = env.writer_env("w1");
    let _writer = Writer::start(&vars);
    env.publish(first).await;
    env.wait_drained(DRAIN).await;
    wreck_derived_tables(&env.db).await;

    // Backfill while the service applies the second half.
    let run = backfill(&vars, &["--from-term", "0x00", "--batch-size", "100"]);
    env.publish(second).await;
    let out = run.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("backfill done"));
    env.wait_drained(DRAIN).await;
    let expected = applied_directly(&workload).await;
    let model = model_of(&workload.events());
    assert_same_core(&env.db, &expected).await;
    assert_analytics(&env.db, &model).await;

    // Interrupted half-way, then run again: it resumes and ends the same.
    wreck_derived_tables(&env.db).await;
    let total = env.db.scalar_i64("SELECT count(*) FROM term").await;
    let mut run = backfill(&vars, &["--from-term", "0x00", "--batch-size", "20"]);
    let started = Instant::now();
    loop {
        let done = env
            .db
            .scalar_i64("SELECT coalesce(max(terms_done), 0) FROM backfill_progress WHERE finished_at IS NULL")
            .await;
        if done >= total / 2 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "backfill made no progress"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    run.kill().unwrap();
    run.wait().unwrap();
    let unfinished = env
        .db
        .scalar_i64("SELECT count(*) FROM backfill_progress WHERE finished_at IS NULL")
        .await;
    assert_eq!(
        unfinished, 1,
        "the interrupted run must leave its progress behind"
    );
    let out = backfill(&vars, &["--from-term", "0x00", "--batch-size", "20"])
        .wait_with_output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("resuming after"),
        "{stdout}"
    );
    env.wait_drained(DRAIN).await;
    assert_same_core(&env.db, &expected).await;
    assert_analytics(&env.db, &model).await;
}

/// Transactions chosen for removal: every third transaction at blocks ≥ the
/// fork block. Returns (fork block, hashes).
fn pick_reorg(events: &[ChainEvent<'_>]) -> (i64, Vec<String>) {
    let mut blocks: Vec<i64> = events.iter().map(|e| e.chain.block_number).collect();
    blocks.sort_unstable();
    let fork = blocks[blocks.len() * 3 / 5];
    let mut seen = HashSet::new();
    let mut hashes = Vec::new();
    for e in events.iter().filter(|e| e.chain.block_number >= fork) {
        if seen.insert(e.chain.transaction_hash) && seen.len() % 3 == 0 {
            hashes.push(e.chain.transaction_hash.to_string());
        }
    }
    (fork, hashes)
}

fn reorg_payload(fork: i64, hashes: &[String], message_id: &str) -> String {
    serde_json::json!({
        "event_name": "__rindexer_reorg",
        "event_signature_hash": "0x00",
        "network": "intuition-testnet",
        "message_id": message_id,
        "event_data": [{
            "type": "reorg", "network": "intuition-testnet", "fork_block": fork,
            "depth": 12, "affected_tx_hashes": hashes
        }]
    })
    .to_string()
}

/// A reorg notice removing some transactions leaves the tables equal to the
/// workload without them; the abandoned fork redelivered changes nothing;
/// the same events re-published for the new chain apply again; and when the
/// chain flips back (a second notice, the original events re-published),
/// the tables equal the whole workload again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reorg_removes_transactions_exactly() {
    let mut env = Env::new(25, 5_000).await;
    let workload: Workload = generate(&env.spec);
    let events = workload.events();
    let (fork, hashes) = pick_reorg(&events);
    let removed: HashSet<&str> = hashes.iter().map(String::as_str).collect();
    let remaining: Vec<ChainEvent<'_>> = events
        .iter()
        .filter(|e| !removed.contains(e.chain.transaction_hash.as_str()))
        .cloned()
        .collect();
    let removed_count = events.len() - remaining.len();
    assert!(removed_count > 100, "{removed_count}");

    let _writer = Writer::start(&env.writer_env("w1"));
    env.publish(&workload.entries).await;
    env.wait_drained(DRAIN).await;
    let notice = reorg_payload(fork, &hashes, "reorg-1");
    env.publish_raw(0, &[("payload", notice.as_bytes())]).await;
    env.wait_drained(DRAIN).await;

    let expected = TestDb::new().await;
    let mut ordered = remaining.clone();
    ordered.sort_by_key(|e| e.chain.order());
    expected.read_model().apply(&ordered).await.unwrap();
    assert_same_core(&env.db, &expected).await;
    assert_analytics(&env.db, &model_of(&remaining)).await;
    assert_eq!(
        env.db
            .rows("SELECT removed_events, fork_block FROM reorg_notices")
            .await,
        [format!("{removed_count}|{fork}")]
    );

    // The abandoned fork's entries and the notice, delivered again.
    let affected: Vec<_> = workload
        .entries
        .iter()
        .filter(|e| hashes.iter().any(|h| e.payload.contains(&h[2..])))
        .cloned()
        .collect();
    env.publish(&affected).await;
    env.publish_raw(0, &[("payload", notice.as_bytes())]).await;
    env.wait_drained(DRAIN).await;
    assert_same_core(&env.db, &expected).await;
    assert_analytics(&env.db, &model_of(&remaining)).await;

    // The removed events re-published on the new chain (new block hashes).
    let old_hashes: HashSet<String> = events
        .iter()
        .filter(|e| removed.contains(e.chain.transaction_hash.as_str()))
        .map(|e| e.chain.block_hash.to_string())
        .collect();
    let republished: Vec<_> = affected
        .iter()
        .map(|e| {
            let mut e = e.clone();
            for h in &old_hashes {
                let new_chain: String = h[2..].chars().rev().collect();
                e.payload = e.payload.replace(&h[2..], &new_chain);
            }
            e
        })
        .collect();
    env.publish(&republished).await;
    env.wait_drained(DRAIN).await;
    let everything = model_of(&events);
    let table = |dump: &Vec<(String, Vec<String>)>, name: &str| {
        dump.iter().find(|(t, _)| t == name).unwrap().1.clone()
    };
    let dump = env.db.dump_core().await;
    assert_eq!(table(&dump, "position"), everything.positions());
    assert_eq!(table(&dump, "vault"), everything.vaults());
    assert_eq!(table(&dump, "term"), everything.terms());
    assert_analytics(&env.db, &everything).await;

    // The chain flips back: a new notice removes the new-chain versions, and
    // the original events are published once more.
    let back = reorg_payload(fork, &hashes, "reorg-2");
    env.publish_raw(0, &[("payload", back.as_bytes())]).await;
    env.wait_drained(DRAIN).await;
    assert_same_core(&env.db, &expected).await;
    env.publish(&affected).await;
    env.wait_drained(DRAIN).await;
    let original = applied_directly(&workload).await;
    assert_same_core(&env.db, &original).await;
    assert_analytics(&env.db, &everything).await;
    assert_eq!(
        env.db
            .scalar_i64("SELECT count(*) FROM reorg_notices")
            .await,
        2
    );
}
