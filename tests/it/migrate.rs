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
