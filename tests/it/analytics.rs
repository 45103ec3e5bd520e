//! Analytics and backfill: the derived tables always converge to
//! invariants 6–8, computed independently in `testkit::model` (issue 4).

use crate::support::CleanEnv;
use std::process::{Command, Stdio};
use std::time::Duration;

use testkit::workload::generate;

use crate::support::TestDb;
use crate::support::service::{
    DRAIN, Env, Writer, assert_analytics, assert_exact, eventually, model_of,
};

/// How soon after the input goes quiet the analytics must be exact
/// (SPEC §2 invariant 9: "within seconds").
const QUIET: Duration = Duration::from_secs(20);

/// After a workload drains, all four analytics tables equal the
/// from-scratch computation of invariants 6–8.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_converge_exactly() {
    let mut env = Env::new(21, 5_000).await;
    let _writer = Writer::start(&env.writer_env("w1"));
    let workload = env.publish_workload().await;
    let events = workload.events();
    let model = model_of(&events);
    env.wait_streams_drained().await;
    converged(&env, &model).await;
    let checkpoint = env
        .db
        .rows("SELECT last_term_id IS NOT NULL, terms_processed > 0 FROM analytics_checkpoint")
        .await;
    assert_eq!(checkpoint, ["true|true"]);
}

/// Announced triples alone make the analytics converge: with the sweep an
/// hour away, nothing the worker took in during its last pass waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_converge_without_the_sweep() {
    let mut env = Env::new(28, 5_000).await;
    // Small writer batches and long passes: messages keep arriving while
    // the worker recomputes, up to the last one.
    let _writer = Writer::start(&env.writer_env_with(
        "w1",
        &[
            ("ANALYTICS_SWEEP_INTERVAL_MS", "3600000"),
            ("BATCH_SIZE", "5"),
            ("MIN_BATCH_INTERVAL_MS", "1000"),
            ("ANALYTICS_CATCH_UP_DELAY_MS", "0"),
        ],
    ));
    let workload = env.publish_workload().await;
    let model = model_of(&workload.events());
    env.wait_streams_drained().await;
    converged(&env, &model).await;
}

/// Invariant 9: within seconds of the input going quiet (the bound leaves
/// room for a loaded CI machine), the analytics equal the model's.
async fn converged(env: &Env, model: &testkit::model::Model) {
    let expected = model.analytics();
    eventually(QUIET, Duration::from_millis(200), async || {
        match env.db.dump_analytics().await {
            actual if actual == expected => Ok(()),
            actual => Err(format!(
                "analytics not yet what the model gives: {actual:?}\nexpected {expected:?}"
            )),
        }
    })
    .await;
}

/// A counter or gauge of the writer's /metrics (0 when absent).
async fn metric(writer: &Writer, name: &str) -> f64 {
    let (_, metrics) = writer.get("/metrics", None).await.unwrap();
    metrics
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A backlog (published before the writer starts, read in small batches):
/// while the writers are behind, the worker gathers the triples they dirty
/// and recomputes each about once when they catch up — not once per writer
/// batch — and the analytics still converge exactly, within seconds of the
/// input going quiet although the delay is a minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_recomputes_each_triple_about_once() {
    let mut env = Env::new(25, 6_000).await;
    let workload = env.publish_workload().await;
    let model = model_of(&workload.events());
    let delay = Duration::from_secs(60);
    assert!(delay > QUIET);
    let delay_ms = delay.as_millis().to_string();
    let writer = Writer::start(&env.writer_env_with(
        "w1",
        &[
            ("BATCH_SIZE", "20"),
            ("ANALYTICS_CATCH_UP_DELAY_MS", &delay_ms),
        ],
    ));
    env.wait_streams_drained().await;
    converged(&env, &model).await;

    let triples = model.triples().len() as f64;
    let recomputed = metric(&writer, "writer_analytics_terms_total").await;
    assert!(
        metric(&writer, "writer_analytics_catch_ups_total").await >= 1.0,
        "the worker never saw the writers behind"
    );
    assert!(
        recomputed <= 1.25 * triples,
        "{recomputed} recomputations for {triples} triples during one catch-up"
    );
}

/// The same on a host where every writer batch takes longer than the
/// worker's 500 ms floor for "caught up" (Postgres slowed here by a trigger
/// that sleeps once in each transaction inserting events), with two writer
/// tasks committing side by side: the worker waits a few of the batches'
/// own apply times and keeps gathering for the whole backlog, instead of
/// recomputing after each batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_slow_batches_recomputes_each_triple_about_once() {
    let mut env = Env::new(30, 2_000).await;
    env.db
        .execute(
            "CREATE FUNCTION slow_transaction() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF current_setting('test.slept', true) IS DISTINCT FROM 'yes' THEN
                     PERFORM set_config('test.slept', 'yes', true);
                     PERFORM pg_sleep(0.8);
                 END IF;
                 RETURN NULL;
             END $$",
        )
        .await;
    let event_tables = testkit::model::TABLES
        .iter()
        .filter(|t| t.ends_with("_events"));
    for table in event_tables {
        env.db
            .execute(&format!(
                "CREATE TRIGGER slow AFTER INSERT ON {table} \
                 FOR EACH STATEMENT EXECUTE FUNCTION slow_transaction()"
            ))
            .await;
    }
    let workload = env.publish_workload().await;
    let model = model_of(&workload.events());
    let writer = Writer::start(&env.writer_env_with(
        "w1",
        &[
            ("BATCH_SIZE", "40"),
            ("WORKERS", "2"),
            ("ANALYTICS_CATCH_UP_DELAY_MS", "60000"),
        ],
    ));
    env.wait_streams_drained().await;
    converged(&env, &model).await;

    let triples = model.triples().len() as f64;
    let recomputed = metric(&writer, "writer_analytics_terms_total").await;
    let batches = metric(&writer, "writer_batch_events_count").await;
    let catch_ups = metric(&writer, "writer_analytics_catch_ups_total").await;
    assert!(batches >= 10.0, "{batches} batches: too few to tell");
    assert!(
        recomputed <= 1.25 * triples,
        "{recomputed} recomputations for {triples} triples in {batches} slow batches \
         ({catch_ups} catch-ups)"
    );
}

/// Invariant 9 with a backlog shared by two writer processes, each
/// deferring its analytics while behind (and sweeping marks the other is
/// gathering): exact within seconds of the input going quiet, although
/// either would wait a minute while behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_shared_by_two_writers_converges() {
    let mut env = Env::new(29, 8_000).await;
    let workload = env.publish_workload().await;
    let model = model_of(&workload.events());
    let settings = [
        ("BATCH_SIZE", "10"),
        ("ANALYTICS_CATCH_UP_DELAY_MS", "60000"),
    ];
    let first = Writer::start(&env.writer_env_with("w1", &settings));
    let second = Writer::start(&env.writer_env_with("w2", &settings));
    env.wait_streams_drained().await;
    converged(&env, &model).await;
    for writer in [&first, &second] {
        assert!(metric(writer, "writer_entries_acked_total").await > 0.0);
    }
    assert!(
        metric(&first, "writer_analytics_catch_ups_total").await
            + metric(&second, "writer_analytics_catch_ups_total").await
            >= 1.0,
        "neither writer saw itself behind"
    );
}

/// Two workers' passes over the same marks (each writer process hears only
/// its own batches, so two processes gather the same hot triples): the
/// second waits for the first's analytics locks, then finds the marks
/// cleared and recomputes nothing, instead of everything again. The first
/// pass is made by hand here so that the second certainly read the marks
/// before the first cleared them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_behind_another_recomputes_only_what_is_still_marked() {
    let workload = generate(&testkit::workload::Spec::new(31, 600));
    let db = crate::support::service::applied_directly(&workload).await;
    let marked = db.rows("SELECT term_id FROM analytics_dirty").await;
    assert!(!marked.is_empty(), "the workload marks triples dirty");
    let schema = db.name();
    let ids: Vec<&str> = marked.iter().map(String::as_str).collect();

    let mut first = db.pool.begin().await.unwrap();
    writer::analytics::recompute::lock(&mut first, schema.as_str(), &ids)
        .await
        .unwrap();
    let first_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *first)
        .await
        .unwrap();
    let second = tokio::spawn({
        let (pool, marked) = (db.pool.clone(), marked.clone());
        async move {
            let claim = writer::analytics::Claim::Listed {
                ids: &marked,
                age: None,
            };
            writer::analytics::refresh(&pool, schema.as_str(), claim, &[], false).await
        }
    });
    eventually(DRAIN, Duration::from_millis(10), async || {
        let blocked: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
        )
        .bind(first_pid)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        (blocked > 0)
            .then_some(())
            .ok_or_else(|| "the second pass is not waiting for the first".to_owned())
    })
    .await;
    writer::analytics::recompute::recompute(&mut first, db.name().as_str(), &ids, &[], false)
        .await
        .unwrap();
    sqlx::query("DELETE FROM analytics_dirty")
        .execute(&mut *first)
        .await
        .unwrap();
    first.commit().await.unwrap();

    let refreshed = second.await.unwrap().unwrap();
    assert_eq!(
        refreshed.triples, 0,
        "recomputed again what the first pass had just recomputed"
    );
    assert_eq!(
        refreshed.last_mark.as_deref(),
        marked.iter().max().map(String::as_str)
    );
    assert_analytics(&db, &model_of(&workload.events())).await;
}

/// A catch-up pass takes only the marks dirty for at least its age and
/// leaves the younger ones marked, returned for a later pass; a re-mark
/// keeps the first mark's time, so a triple changed again and again during
/// a backlog still comes due (ADR 0013, third addendum).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_pass_leaves_young_marks_for_a_later_pass() {
    let workload = generate(&testkit::workload::Spec::new(31, 600));
    let mut events = workload.canonical_events();
    events.sort_by_key(|e| e.chain.order());
    let (early, late) = events.split_at(events.len() / 2);
    let db = TestDb::new().await;
    let rm = db.read_model();
    rm.apply(early).await.unwrap();
    db.execute("UPDATE analytics_dirty SET marked_at = now() - interval '1 hour'")
        .await;
    let old = db.rows("SELECT term_id FROM analytics_dirty").await;
    let version = db
        .scalar_i64("SELECT max(version) FROM analytics_dirty")
        .await;
    rm.apply(late).await.unwrap();
    let marked = db.rows("SELECT term_id FROM analytics_dirty").await;
    let young: Vec<String> = marked
        .iter()
        .filter(|t| !old.contains(t))
        .cloned()
        .collect();
    assert!(!young.is_empty(), "the late half marks new triples");
    let still_old = format!(
        "SELECT term_id FROM analytics_dirty WHERE marked_at < now() - interval '30 minutes' AND version > {version}"
    );
    let remarked = db.rows(&still_old).await;
    assert!(
        !remarked.is_empty(),
        "the late half marks some early triples again, and they keep their first mark's time"
    );

    let schema = db.name();
    let age = Duration::from_secs(10);
    let claim = writer::analytics::Claim::Listed {
        ids: &marked,
        age: Some(age),
    };
    let refreshed = writer::analytics::refresh(&db.pool, schema.as_str(), claim, &[], false)
        .await
        .unwrap();
    assert_eq!(refreshed.triples, old.len(), "the settled marks recomputed");
    assert_eq!(refreshed.left, young, "the young ones returned");
    assert_eq!(db.rows("SELECT term_id FROM analytics_dirty").await, young);

    // The next pass, once the writers have caught up, takes them all.
    let claim = writer::analytics::Claim::Listed {
        ids: &marked,
        age: None,
    };
    let refreshed = writer::analytics::refresh(&db.pool, schema.as_str(), claim, &[], false)
        .await
        .unwrap();
    assert_eq!((refreshed.triples, refreshed.left.len()), (young.len(), 0));
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM analytics_dirty").await,
        0
    );
    assert_analytics(&db, &model_of(&workload.events())).await;
}

/// A catch-up longer than ANALYTICS_CATCH_UP_DELAY_MS still refreshes the
/// analytics every delay: some are recomputed while the backlog lasts. The
/// marks its passes leave for being young are taken by the worker's later
/// passes, not left for the sweep (an hour away here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_catch_up_refreshes_every_delay() {
    let mut env = Env::new(26, 12_000).await;
    let workload = env.publish_workload().await;
    let model = model_of(&workload.events());
    let writer = Writer::start(&env.writer_env_with(
        "w1",
        &[
            ("BATCH_SIZE", "4"),
            ("WORKERS", "1"),
            ("ANALYTICS_CATCH_UP_DELAY_MS", "300"),
            ("ANALYTICS_SWEEP_INTERVAL_MS", "3600000"),
        ],
    ));
    eventually(DRAIN, Duration::from_millis(20), async || {
        let processed = env
            .db
            .scalar_i64("SELECT terms_processed FROM analytics_checkpoint")
            .await;
        match env.backlog().await {
            Some(backlog) if processed > 0 && backlog > 0 => Ok(()),
            Some(0) => Err("drained before any analytics were recomputed".to_owned()),
            backlog => Err(format!("backlog {backlog:?}, {processed} recomputed")),
        }
    })
    .await;
    env.wait_drained().await;
    converged(&env, &model).await;
    assert!(metric(&writer, "writer_analytics_catch_ups_total").await >= 2.0);
}

/// The triples gathered during a catch-up are recomputed chunk after chunk
/// without MIN_BATCH_INTERVAL_MS between the chunks: spaced out, this pass
/// would take longer than invariant 9 allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gathered_pass_runs_its_chunks_back_to_back() {
    let mut env = Env::new(27, 6_000).await;
    let workload = env.publish_workload().await;
    let model = model_of(&workload.events());
    let (chunk, interval) = (10, Duration::from_secs(2));
    let chunks = model.triples().len().div_ceil(chunk);
    assert!(
        interval * chunks as u32 > 2 * QUIET,
        "{chunks} chunks: too few for the test to tell"
    );
    let (chunk_size, interval_ms) = (chunk.to_string(), interval.as_millis().to_string());
    let writer = Writer::start(&env.writer_env_with(
        "w1",
        &[
            ("BATCH_SIZE", "20"),
            ("ANALYTICS_BATCH_SIZE", &chunk_size),
            ("MIN_BATCH_INTERVAL_MS", &interval_ms),
            ("ANALYTICS_CATCH_UP_DELAY_MS", "60000"),
        ],
    ));
    env.wait_streams_drained().await;
    converged(&env, &model).await;
    assert!(metric(&writer, "writer_analytics_catch_ups_total").await >= 1.0);
}

/// SIGKILL at random moments while consuming, restarting each time: core
/// tables and analytics still converge exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converges_after_repeated_sigkills() {
    let mut env = Env::new(22, 30_000).await;
    let workload = generate(&env.spec);
    let vars = env.writer_env("w1");
    let kills_mid_stream = env
        .drain_through_kills(&vars, &workload.entries, 8, 22)
        .await;
    assert!(
        kills_mid_stream >= 4,
        "only {kills_mid_stream} kills hit a busy writer"
    );
    assert_exact(&env.db, &workload).await;
}

/// A channel of capacity 1 under load drops messages; the dirty marks make
/// up for every one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_channel_loses_nothing() {
    let mut env = Env::new(23, 6_000).await;
    // A deferring worker reads the channel all the time (ADR 0013): this
    // test is about the worker busy with a batch while messages arrive.
    let vars = env.writer_env_with(
        "w1",
        &[
            ("ANALYTICS_CHANNEL_CAPACITY", "1"),
            ("ANALYTICS_CATCH_UP_DELAY_MS", "0"),
            ("MIN_BATCH_INTERVAL_MS", "200"),
            ("ANALYTICS_SWEEP_INTERVAL_MS", "1000"),
        ],
    );
    let (writer, workload) = env.consume_workload(&vars).await;
    let dropped = metric(&writer, "writer_analytics_messages_dropped_total").await;
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
    db.execute(
        "TRUNCATE triple_vault, triple_term, predicate_object, subject_predicate;
         UPDATE term SET total_assets = 0, total_market_cap = 0;
         UPDATE vault SET position_count = 0;",
    )
    .await;
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
    env.wait_drained().await;
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
    env.wait_drained().await;
    assert_exact(&env.db, &workload).await;

    // Interrupted half-way, then run again: it resumes and ends the same.
    wreck_derived_tables(&env.db).await;
    let total = env.db.scalar_i64("SELECT count(*) FROM term").await;
    let mut run = backfill(&vars, &["--from-term", "0x00", "--batch-size", "20"]);
    eventually(Duration::from_secs(60), Duration::from_millis(10), async || {
        let done = env
            .db
            .scalar_i64("SELECT coalesce(max(terms_done), 0) FROM backfill_progress WHERE finished_at IS NULL")
            .await;
        if done >= total / 2 {
            Ok(())
        } else {
            Err(format!("backfill did not get half-way: {done} of {total} terms"))
        }
    })
    .await;
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
    env.wait_drained().await;
    assert_exact(&env.db, &workload).await;
}
