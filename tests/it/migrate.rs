//! Migrations: every table of SPEC §2 in the configured schema; re-running is
//! a no-op; concurrent runs are serialised.

use crate::support::TestDb;

const TABLES: &[&str] = &[
    "atom_created_events",
    "triple_created_events",
    "deposited_events",
    "redeemed_events",
    "share_price_changed_events",
    "generic_events",
    "atom",
    "triple",
    "position",
    "vault",
    "term",
    "triple_vault",
    "triple_term",
    "predicate_object",
    "subject_predicate",
    "dead_letter",
    "reorg_notices",
    "analytics_dirty",
    "analytics_checkpoint",
];

#[tokio::test]
async fn migrate_is_idempotent_and_schema_scoped() {
    let db = TestDb::new().await;
    // Again, and concurrently: nothing more to apply.
    let (a, b) = tokio::join!(
        writer::migrate::run(&db.pool, &db.schema),
        writer::migrate::run(&db.pool, &db.schema)
    );
    assert!(a.unwrap().is_empty());
    assert!(b.unwrap().is_empty());
    for table in TABLES {
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

#[tokio::test]
async fn a_changed_migration_is_refused() {
    let db = TestDb::new().await;
    sqlx::query("UPDATE schema_migrations SET checksum = 'x' WHERE version = 2")
        .execute(&db.pool)
        .await
        .unwrap();
    let err = writer::migrate::run(&db.pool, &db.schema)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("migration 2"), "{err}");
}
