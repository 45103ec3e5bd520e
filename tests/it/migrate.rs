//! Migrations: every table of SPEC §2 in the configured schema; re-running is
//! a no-op; concurrent runs are serialised.

use crate::support::CleanEnv;
use crate::support::TestDb;

/// Besides the read model ([`testkit::model::TABLES`]).
const OPERATIONAL_TABLES: &[&str] = &[
    "dead_letter",
    "reorg_notices",
    "analytics_dirty",
    "analytics_checkpoint",
];

#[tokio::test]
async fn migrate_is_idempotent_and_schema_scoped() {
    let db = TestDb::new().await;
    // Again, and concurrently: nothing more to apply.
    let name = db.name();
    let (a, b) = tokio::join!(
        writer::migrate::run(&db.pool, &name),
        writer::migrate::run(&db.pool, &name)
    );
    assert!(a.unwrap().is_empty());
    assert!(b.unwrap().is_empty());
    for table in testkit::model::TABLES.iter().chain(OPERATIONAL_TABLES) {
        let n = db
            .scalar_i64(&format!(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = '{}' AND table_name = '{table}'",
                db.schema
            ))
            .await;
        assert_eq!(n, 1, "{table} missing in {}", db.schema);
    }
    // Amounts are NUMERIC(78,0), counts BIGINT, ids TEXT.
    let types = db
        .rows(&format!(
            "SELECT table_name, column_name, data_type, numeric_precision, numeric_scale FROM information_schema.columns WHERE table_schema = '{}' AND table_name = 'vault' AND column_name IN ('term_id', 'market_cap', 'position_count')",
            db.schema
        ))
        .await;
    assert_eq!(
        types,
        [
            "vault|market_cap|numeric|78|0",
            "vault|position_count|bigint|64|0",
            "vault|term_id|text|∅|∅"
        ]
    );
}

/// SPEC §2: "Amounts are NUMERIC(78,0), counts BIGINT, ids TEXT", and
/// `vault_type` is text — for every contract column of the current-state
/// and analytics tables.
#[tokio::test]
async fn contract_columns_have_their_types() {
    let db = TestDb::new().await;
    const AMOUNT: &str = "numeric(78,0)";
    let expected: &[(&str, &[&str], &str)] = &[
        ("atom", &["term_id", "wallet_id", "creator_id"], "text"),
        (
            "triple",
            &[
                "term_id",
                "creator_id",
                "subject_id",
                "predicate_id",
                "object_id",
                "counter_term_id",
            ],
            "text",
        ),
        ("position", &["account_id", "term_id"], "text"),
        (
            "position",
            &[
                "curve_id",
                "shares",
                "total_deposit_assets_after_total_fees",
                "total_redeem_assets_for_receiver",
            ],
            AMOUNT,
        ),
        ("vault", &["term_id", "vault_type"], "text"),
        (
            "vault",
            &[
                "curve_id",
                "total_shares",
                "current_share_price",
                "total_assets",
                "market_cap",
            ],
            AMOUNT,
        ),
        ("vault", &["position_count"], "bigint"),
        ("term", &["id", "type", "atom_id", "triple_id"], "text"),
        ("term", &["total_assets", "total_market_cap"], AMOUNT),
        ("triple_vault", &["term_id", "counter_term_id"], "text"),
        (
            "triple_vault",
            &["curve_id", "total_shares", "total_assets", "market_cap"],
            AMOUNT,
        ),
        ("triple_vault", &["position_count"], "bigint"),
        ("triple_term", &["term_id", "counter_term_id"], "text"),
        ("triple_term", &["total_assets", "total_market_cap"], AMOUNT),
        ("triple_term", &["total_position_count"], "bigint"),
        ("predicate_object", &["predicate_id", "object_id"], "text"),
        (
            "predicate_object",
            &["triple_count", "total_position_count"],
            "bigint",
        ),
        ("predicate_object", &["total_market_cap"], AMOUNT),
        ("subject_predicate", &["subject_id", "predicate_id"], "text"),
        (
            "subject_predicate",
            &["triple_count", "total_position_count"],
            "bigint",
        ),
        ("subject_predicate", &["total_market_cap"], AMOUNT),
        (
            "atom",
            &[
                "data",
                "type",
                "emoji",
                "label",
                "image",
                "value_id",
                "resolving_status",
            ],
            "text",
        ),
        ("atom", &["raw_data"], "bytea"),
        // Event tables: ids and addresses text, amounts NUMERIC(78,0).
        (
            "atom_created_events",
            &[
                "transaction_hash",
                "creator",
                "term_id",
                "atom_wallet",
                "atom_data",
            ],
            "text",
        ),
        ("atom_created_events", &["raw_data"], "bytea"),
        (
            "triple_created_events",
            &[
                "transaction_hash",
                "creator",
                "term_id",
                "subject_id",
                "predicate_id",
                "object_id",
                "counter_term_id",
            ],
            "text",
        ),
        (
            "deposited_events",
            &["transaction_hash", "sender", "receiver", "term_id"],
            "text",
        ),
        (
            "deposited_events",
            &[
                "curve_id",
                "assets",
                "assets_after_fees",
                "shares",
                "total_shares",
            ],
            AMOUNT,
        ),
        (
            "redeemed_events",
            &["transaction_hash", "sender", "receiver", "term_id"],
            "text",
        ),
        (
            "redeemed_events",
            &["curve_id", "shares", "total_shares", "assets", "fees"],
            AMOUNT,
        ),
        (
            "share_price_changed_events",
            &["transaction_hash", "term_id"],
            "text",
        ),
        (
            "share_price_changed_events",
            &["curve_id", "share_price", "total_assets", "total_shares"],
            AMOUNT,
        ),
        // Timestamps.
        (
            "atom",
            &["created_at", "updated_at"],
            "timestamp with time zone",
        ),
        (
            "triple",
            &["created_at", "updated_at"],
            "timestamp with time zone",
        ),
        (
            "position",
            &["created_at", "updated_at"],
            "timestamp with time zone",
        ),
        (
            "vault",
            &["created_at", "updated_at"],
            "timestamp with time zone",
        ),
        (
            "term",
            &["created_at", "updated_at"],
            "timestamp with time zone",
        ),
        ("triple_vault", &["updated_at"], "timestamp with time zone"),
        ("triple_term", &["updated_at"], "timestamp with time zone"),
        (
            "predicate_object",
            &["updated_at"],
            "timestamp with time zone",
        ),
        (
            "subject_predicate",
            &["updated_at"],
            "timestamp with time zone",
        ),
        (
            "atom_created_events",
            &["created_at"],
            "timestamp with time zone",
        ),
        (
            "triple_created_events",
            &["created_at"],
            "timestamp with time zone",
        ),
        (
            "deposited_events",
            &["created_at"],
            "timestamp with time zone",
        ),
        (
            "redeemed_events",
            &["created_at"],
            "timestamp with time zone",
        ),
        (
            "share_price_changed_events",
            &["created_at"],
            "timestamp with time zone",
        ),
        (
            "generic_events",
            &["created_at"],
            "timestamp with time zone",
        ),
    ];
    let actual = db
        .rows(&format!(
            "SELECT table_name, column_name, CASE WHEN data_type = 'numeric' \
                THEN format('numeric(%s,%s)', numeric_precision, numeric_scale) \
                ELSE data_type END \
             FROM information_schema.columns WHERE table_schema = '{}'",
            db.schema
        ))
        .await;
    for (table, columns, ty) in expected {
        for column in *columns {
            let row = format!("{table}|{column}|{ty}");
            assert!(actual.contains(&row), "expected {row}");
        }
    }
    // resolving_status DEFAULT 'Pending'.
    assert_eq!(
        db.rows(&format!(
            "SELECT column_default FROM information_schema.columns \
             WHERE table_schema = '{}' AND table_name = 'atom' AND column_name = 'resolving_status'",
            db.schema
        ))
        .await,
        ["'Pending'::text"]
    );
}

#[tokio::test]
async fn a_changed_migration_is_refused() {
    let db = TestDb::new().await;
    db.execute("UPDATE schema_migrations SET checksum = 'x' WHERE version = 2")
        .await;
    let err = writer::migrate::run(&db.pool, &db.name())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("migration 2"), "{err}");
}

/// `writer <args>` on `schema`: (exit code, stdout, stderr).
fn writer_cli(db: &TestDb, schema: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_writer"))
        .args(args)
        .clean_env()
        .env("DATABASE_URL", &db.url)
        .env("DATABASE_SCHEMA", schema)
        .env("REDIS_URL", crate::support::service::redis_url())
        .env("REDIS_STREAMS", format!("{schema}_never_written"))
        .env("HTTP_HOST", "127.0.0.1")
        .env("HTTP_PORT", "0")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `writer migrate --check` on `schema` exits with `code` and prints `says`.
fn assert_check_says(db: &TestDb, schema: &str, code: i32, says: &str) {
    let (exit, out, err) = writer_cli(db, schema, &["migrate", "--check"]);
    assert_eq!(exit, Some(code), "{out}{err}");
    assert!(out.contains(says), "expected `{says}` in:\n{out}");
}

/// `writer run` refuses to start, promptly, saying `says`.
fn assert_run_refuses(db: &TestDb, says: &str) {
    let started = std::time::Instant::now();
    let (exit, _, err) = writer_cli(db, &db.schema, &["run"]);
    assert_eq!(exit, Some(1), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    assert!(err.contains(says), "expected `{says}` in:\n{err}");
}

/// A freshly migrated schema holds every contract table and column.
#[tokio::test]
async fn a_migrated_schema_holds_the_contract() {
    let db = TestDb::new().await;
    let report = writer::migrate::check(&db.pool, &db.name()).await.unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_check_says(&db, &db.schema, 0, "matches this writer");
}

/// A dropped contract column: `migrate --check` exits 1 naming it, and
/// `writer run` refuses to start, naming it.
#[tokio::test]
async fn a_dropped_contract_column_refuses_start() {
    let db = TestDb::new().await;
    db.execute("ALTER TABLE position DROP COLUMN total_redeem_assets_for_receiver")
        .await;
    assert_check_says(
        &db,
        &db.schema,
        1,
        "drift: table position has no column total_redeem_assets_for_receiver",
    );
    assert_run_refuses(
        &db,
        "table position has no column total_redeem_assets_for_receiver",
    );
}

/// `migrate --check` changes nothing and exits 1 for pending migrations, a
/// migration newer than the binary, and a changed one.
#[tokio::test]
async fn migrate_check_reports_without_changing_anything() {
    let db = TestDb::new().await;
    // A schema never migrated: everything pending; still not created.
    let fresh = format!("{}_fresh", db.schema);
    assert_check_says(&db, &fresh, 1, "pending: migration 1 (event_log)");
    let created = db
        .scalar_i64(&format!(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name = '{fresh}'"
        ))
        .await;
    assert_eq!(created, 0, "--check created the schema");

    // A migration newer than this binary: reported, and `run` refuses.
    db.execute(
        "INSERT INTO schema_migrations (version, name, checksum) VALUES (9999, 'future', 'x')",
    )
    .await;
    assert_check_says(
        &db,
        &db.schema,
        1,
        "drift: migration 9999 is applied but unknown",
    );
    assert_run_refuses(&db, "migration 9999");
    let ledger = db
        .scalar_i64("SELECT count(*) FROM schema_migrations")
        .await;
    assert_eq!(ledger, writer::migrate::MIGRATIONS.len() as i64 + 1);

    db.execute(
        "DELETE FROM schema_migrations WHERE version = 9999;
         UPDATE schema_migrations SET checksum = 'x' WHERE version = 3",
    )
    .await;
    assert_check_says(
        &db,
        &db.schema,
        1,
        "drift: migration 3 (analytics) was applied with different contents",
    );
}
