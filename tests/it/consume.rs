//! `writer run` end to end: real Redis streams, real Postgres, the writer as
//! a process (SPEC §3 "Consume", "ACK"; issue 3).

use std::time::Duration;

use testkit::model::EVENT_TABLES;
use testkit::workload::{Entry, Spec, Workload, generate};

use crate::support::TestDb;
use crate::support::proxy::Proxy;
use crate::support::service::{
    Env, Writer, assert_core_exact, assert_exact, eventually, json_body, writer_once,
};

/// A generated workload XADDed to the five streams ends in exactly the
/// tables the same events give when applied directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_give_the_same_tables_as_direct_apply() {
    let mut env = Env::new(11, 4_000).await;
    let workload = env.publish_workload().await;
    let writer = Writer::start(&env.writer_env("w1"));
    env.wait_drained().await;
    assert_core_exact(&env.db, &workload).await;
    assert_eq!(
        env.db.scalar_i64("SELECT count(*) FROM dead_letter").await,
        0,
        "{}",
        writer.log()
    );
}

/// Entries delivered to a consumer that died (never ACKed) are reclaimed by
/// another after CLAIM_IDLE_MS; nothing is lost and nothing applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_consumers_entries_are_reclaimed() {
    let mut env = Env::new(12, 4_000).await;
    let workload = env.publish_workload().await;
    // A consumer that reads a share of the stream and dies without ACKing.
    for s in env.spec.streams.clone() {
        env.ghost_reads(&s, 150).await;
    }

    // A real writer, SIGKILLed while it works through the rest (once it
    // applied a share, or after 30 s).
    let mut first = Writer::start(&env.writer_env("first"));
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        while env
            .db
            .scalar_i64("SELECT count(*) FROM deposited_events")
            .await
            <= 200
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    first.signal("KILL");
    first
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("killed");
    let after_kill = env.backlog().await.unwrap();
    assert!(
        after_kill > 0,
        "the kill left nothing pending; the test proves nothing"
    );

    let second = Writer::start(&env.writer_env("second"));
    env.wait_drained().await;
    assert_core_exact(&env.db, &workload).await;
    assert!(
        second
            .log()
            .contains("reclaimed entries of an idle consumer"),
        "{}",
        second.log()
    );
}

/// Poison entries interleaved with good ones: every bad one is dead-lettered
/// with its reason and ACKed, every good one applied, the writer keeps going.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_entries_are_dead_lettered() {
    let mut env = Env::new(13, 1_500).await;
    let workload = generate(&env.spec);
    let (first, second) = workload.entries.split_at(workload.entries.len() / 2);
    env.publish(first).await;

    let good = &a_deposit(&workload).payload;
    let poison: Vec<(&str, Vec<u8>, &str)> = vec![
        ("payload", b"{\"event_name\": \"Deposited\", ".to_vec(), "payload: invalid JSON"),
        ("payload", good.replace("\"termId\"", "\"termIdX\"").into_bytes(), "termId: missing or null"),
        ("payload", good.replacen("\"receiver\":\"", "\"receiver\":\"0xzz", 1).into_bytes(), "receiver: "),
        (
            "payload",
            good.replacen("\"assets\":", "\"assets\":\"0x1ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff\",\"x\":", 1)
                .into_bytes(),
            "assets: exceeds 2^256-1",
        ),
        ("data", vec![0xff, 0xfe, 0x00], "payload: not valid UTF-8"),
        ("foo", b"bar".to_vec(), "entry has no `payload`, `data` or `event_data` field"),
        // Valid, but Postgres refuses it: its market cap overflows NUMERIC(78,0).
        ("payload", overflowing_share_price().into_bytes(), "could not be stored after 5 attempts"),
    ];
    let mut ids = Vec::new();
    for (field, value, _) in &poison {
        ids.push(env.publish_raw(2, &[(field, value)]).await);
    }
    env.publish(second).await;

    let mut writer = Writer::start(&env.writer_env("w1"));
    env.wait_drained().await;
    assert!(writer.is_running(), "{}", writer.log());

    for (id, (_, _, reason)) in ids.iter().zip(&poison) {
        let error = dead_letter_error(&env.db, id)
            .await
            .unwrap_or_else(|e| panic!("{id} not dead-lettered: {e}"));
        assert!(error.contains(reason), "{id}: {error} lacks {reason}");
    }
    assert_eq!(
        env.db.scalar_i64("SELECT count(*) FROM dead_letter").await,
        poison.len() as i64
    );
    // The raw bytes are kept exactly, also when they are not UTF-8.
    let raw: Vec<u8> =
        sqlx::query_scalar("SELECT payload FROM dead_letter WHERE payload_field = 'data'")
            .fetch_one(&env.db.pool)
            .await
            .unwrap();
    assert_eq!(raw, [0xff, 0xfe, 0x00]);
    assert_core_exact(&env.db, &workload).await;
    // Dead letters in the last minutes show as degraded (the counts behind
    // /health refresh every two seconds).
    eventually(
        Duration::from_secs(10),
        Duration::from_millis(200),
        async || {
            let (code, body) = writer.get("/health", None).await.unwrap();
            assert_eq!(code, 200, "{body}");
            if json_body(&body)["status"] == "degraded" {
                Ok(())
            } else {
                Err(format!("recent dead letters do not show: {body}"))
            }
        },
    )
    .await;
}

/// A Deposited entry of `workload` (not a duplicate).
fn a_deposit(workload: &Workload) -> &Entry {
    workload
        .entries
        .iter()
        .find(|e| e.payload.contains("\"event_name\":\"Deposited\"") && !e.duplicate)
        .expect("a Deposited entry")
}

/// The error the dead letter of entry `id` records.
async fn dead_letter_error(db: &TestDb, id: &str) -> Result<String, sqlx::Error> {
    sqlx::query_scalar("SELECT error FROM dead_letter WHERE entry_id = $1")
        .bind(id)
        .fetch_one(&db.pool)
        .await
}

fn overflowing_share_price() -> String {
    use crate::support::events::{at, id, share_price};
    let max = format!("\"0x{}\"", "f".repeat(64));
    share_price(&at(9_000_000, 0), &id(77), 1, 1, 1, 1, 0)
        .replacen("\"sharePrice\":\"1\"", &format!("\"sharePrice\":{max}"), 1)
        .replacen(
            "\"totalShares\":\"1\"",
            &format!("\"totalShares\":{max}"),
            1,
        )
}

/// Three writer processes in one consumer group share the load and end in
/// the same tables as one writer would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_writers_in_one_group() {
    let mut env = Env::new(14, 6_000).await;
    let writers: Vec<Writer> = ["a", "b", "c"]
        .iter()
        .map(|n| Writer::start(&env.writer_env(n)))
        .collect();
    let workload = env.publish_workload().await;
    env.wait_drained().await;
    assert_core_exact(&env.db, &workload).await;
    let busy = writers
        .iter()
        .filter(|w| w.log().contains("batch committed and acknowledged"))
        .count();
    assert!(
        busy >= 2,
        "the load was not shared: {busy} writer(s) committed batches"
    );
}

/// A block's entries (rindexer XADDs one per event type, each on its
/// stream) that are waiting when a caught-up writer next reads apply in one
/// transaction, not one per stream (ADR 0018); the tables stay exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocks_entries_waiting_for_a_caught_up_writer_apply_in_one_transaction() {
    let mut env = Env::for_spec(Spec::rindexer(38, 800, 0)).await;
    let workload = generate(&env.spec);
    // A block past the first hundred entries whose entries follow each
    // other on at least three streams, none of them a repeat.
    let entries = &workload.entries;
    let (start, end) = (100..entries.len())
        .filter(|&i| entries[i].block != entries[i - 1].block)
        .map(|i| {
            let len = entries[i..]
                .iter()
                .take_while(|e| e.block == entries[i].block)
                .count();
            (i, i + len)
        })
        .find(|&(i, j)| {
            let block = &entries[i..j];
            let mut streams: Vec<usize> = block.iter().map(|e| e.stream).collect();
            streams.sort_unstable();
            streams.dedup();
            streams.len() >= 3 && block.iter().all(|e| !e.duplicate && e.events > 0)
        })
        .expect("a block with entries on three streams");
    let block = entries[start].block;
    let mut vars = env.writer_env("w1");
    vars.insert("WORKERS".into(), "1".into());
    let _writer = Writer::start(&vars);
    env.publish(&entries[..start - 2]).await;
    env.wait_streams_drained().await;
    // Caught up, then busy: the one worker's batch waits for the reorg
    // lock, the next batch read waits for the worker, and the reader waits
    // for them while the block's entries arrive.
    let mut reorg = env.db.pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(writer::lock::key(
            &env.db.schema,
            writer::lock::Domain::Reorg,
            "",
        ))
        .execute(&mut *reorg)
        .await
        .unwrap();
    for (i, entry) in entries[start - 2..start].iter().enumerate() {
        env.publish([entry]).await;
        env.wait_pending(i as u64 + 1).await;
    }
    env.publish(&entries[start..end]).await;
    reorg.commit().await.unwrap();
    env.wait_streams_drained().await;
    let rows: Vec<String> = EVENT_TABLES
        .iter()
        .map(|t| format!("SELECT xmin::text AS x FROM {t} WHERE block_number = {block}"))
        .collect();
    let rows = rows.join(" UNION ALL ");
    let transactions = env
        .db
        .scalar_i64(&format!("SELECT count(DISTINCT x) FROM ({rows}) r"))
        .await;
    assert_eq!(
        transactions,
        1,
        "the {} entries of block {block} took {transactions} transactions",
        end - start
    );
    env.publish(&entries[end..]).await;
    env.wait_drained().await;
    assert_exact(&env.db, &workload).await;
}

/// Postgres unreachable for a few seconds under load: the writer stops
/// pulling, retries, and recovers by itself without loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_from_a_postgres_outage_without_restart() {
    let mut env = Env::new(15, 6_000).await;
    let proxy = Proxy::to_postgres(&env.db.url).await;
    let vars = env.writer_env_through(&proxy, "w1");
    let mut writer = Writer::start(&vars);
    writer.wait_http(Duration::from_secs(30)).await;
    let workload = env.publish_workload().await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    proxy.cut();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (code, _) = writer.get("/health", None).await.unwrap();
    assert_eq!(code, 503, "health must report the outage");
    proxy.restore();

    env.wait_drained().await;
    assert!(writer.is_running());
    let log = writer.log();
    assert!(
        log.contains("circuit open"),
        "the outage was not noticed:\n{log}"
    );
    assert_core_exact(&env.db, &workload).await;
}

/// An entry delivered more than MAX_DELIVERIES times is dead-lettered
/// without being applied; `writer dead-letters replay` then applies it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_delivered_entries_are_dead_lettered_and_replayable() {
    let mut env = Env::new(16, 50).await;
    let workload = generate(&env.spec);
    let entry = a_deposit(&workload);
    let id = env
        .publish_raw(2, &[("payload", entry.payload.as_bytes())])
        .await;
    let stream = env.spec.streams[2].clone();
    env.ghost_reads(&stream, 1).await;
    for i in 0..6 {
        let _: redis::Value = redis::cmd("XCLAIM")
            .arg(&stream)
            .arg(&env.group)
            .arg(format!("ghost{i}"))
            .arg(0)
            .arg(&id)
            .query_async(&mut env.redis)
            .await
            .unwrap();
    }
    let mut vars = env.writer_env("w1");
    vars.insert("MAX_DELIVERIES".into(), "3".into());
    let writer = Writer::start(&vars);
    env.wait_drained().await;
    let error = dead_letter_error(&env.db, &id)
        .await
        .unwrap_or_else(|e| panic!("not dead-lettered ({e}):\n{}", writer.log()));
    assert!(error.contains("more than MAX_DELIVERIES (3)"), "{error}");
    assert_eq!(
        env.db
            .scalar_i64("SELECT count(*) FROM deposited_events")
            .await,
        0
    );

    let list = writer_once(&["dead-letters", "list"], &vars);
    assert!(list.stdout.contains(&id), "{}", list.text());
    let replay = writer_once(&["dead-letters", "replay"], &vars);
    assert_eq!(replay.code, Some(0), "{}", replay.text());
    let out = &replay.stdout;
    assert!(out.contains("1 applied, 0 still failing"), "{out}");
    assert_eq!(
        env.db
            .scalar_i64("SELECT count(*) FROM deposited_events")
            .await,
        entry.events as i64
    );
    assert_eq!(
        env.db
            .scalar_i64("SELECT count(*) FROM dead_letter WHERE replayed_at IS NOT NULL")
            .await,
        1
    );
}
