//! A fresh, migrated schema per test, dropped when the test ends (also when
//! it panics).

use std::time::Duration;

use sqlx::{Connection, PgPool};
use writer::apply::ReadModel;
use writer::config::{DatabaseConfig, Secret};
use writer::schema::Schema;

pub fn database_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

pub use super::private::unique_name;

pub struct TestDb {
    pub schema: String,
    pub pool: PgPool,
    pub url: String,
}

impl TestDb {
    pub async fn new() -> TestDb {
        TestDb::new_at(&database_url()).await
    }

    /// A schema in the database at `url` (a private server, say).
    pub async fn new_at(url: &str) -> TestDb {
        let schema = unique_name("t");
        let config = Self::config(url, &schema);
        let pool = writer::db::pool(&config).expect("pool");
        writer::migrate::run(&pool, &config.schema)
            .await
            .expect("migrate");
        TestDb {
            schema,
            pool,
            url: url.to_owned(),
        }
    }

    /// The schema as the writer's library takes it.
    pub fn name(&self) -> Schema {
        Schema::parse(&self.schema).expect("a test schema name")
    }

    /// A new pool, for after the server dropped this one's connections.
    pub fn reconnect(&mut self) {
        self.pool = writer::db::pool(&Self::config(&self.url, &self.schema)).expect("pool");
    }

    pub fn config(url: &str, schema: &str) -> DatabaseConfig {
        DatabaseConfig {
            url: Secret::new(url),
            schema: Schema::parse(schema).expect("a test schema name"),
            pool_size: 12,
            acquire_timeout: Duration::from_secs(30),
            statement_timeout: Duration::ZERO,
            ..DatabaseConfig::default()
        }
    }

    pub fn read_model(&self) -> ReadModel {
        ReadModel::new(self.pool.clone(), self.schema.as_str())
    }

    /// Rows of `sql` as text, one string per row (columns joined by `|`,
    /// NULL as `∅`), sorted bytewise (collation-independent).
    pub async fn rows(&self, sql: &str) -> Vec<String> {
        let wrapped = format!(
            "SELECT (SELECT string_agg(coalesce(v, '∅'), '|') FROM json_each_text(row_to_json(q)) AS j(k, v)) FROM ({sql}) q"
        );
        let mut rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(wrapped))
            .fetch_all(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        rows.sort();
        rows
    }

    /// Runs `sql` (one or more statements): a test's set-up or damage.
    pub async fn execute(&self, sql: &str) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    pub async fn scalar_i64(&self, sql: &str) -> i64 {
        sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Every table of the read model except timestamps, sorted: two schemas
    /// with equal dumps hold the same read model.
    pub async fn dump_core(&self) -> Vec<(String, Vec<String>)> {
        let mut out = Vec::new();
        for (table, sql) in CORE_DUMPS {
            out.push((table.to_string(), self.rows(sql).await));
        }
        out
    }
}

impl TestDb {
    /// The four analytics tables, as [`testkit::model::Analytics`] renders them.
    pub async fn dump_analytics(&self) -> testkit::model::Analytics {
        testkit::model::Analytics {
            triple_vault: self.rows("SELECT term_id, counter_term_id, curve_id, total_shares, total_assets, position_count, market_cap FROM triple_vault").await,
            triple_term: self.rows("SELECT term_id, counter_term_id, total_assets, total_market_cap, total_position_count FROM triple_term").await,
            predicate_object: self.rows("SELECT predicate_id, object_id, triple_count, total_position_count, total_market_cap FROM predicate_object").await,
            subject_predicate: self.rows("SELECT subject_id, predicate_id, triple_count, total_position_count, total_market_cap FROM subject_predicate").await,
        }
    }
}

pub const CORE_DUMPS: &[(&str, &str)] = &[
    (
        "atom_created_events",
        "SELECT transaction_hash, log_index, block_number, block_hash, block_timestamp, transaction_index, address, network, creator, term_id, atom_data, encode(raw_data, 'hex') AS raw_data, atom_wallet FROM atom_created_events ORDER BY 1, 2",
    ),
    (
        "triple_created_events",
        "SELECT transaction_hash, log_index, block_number, block_hash, block_timestamp, transaction_index, address, network, creator, term_id, subject_id, predicate_id, object_id, counter_term_id FROM triple_created_events ORDER BY 1, 2",
    ),
    (
        "deposited_events",
        "SELECT transaction_hash, log_index, block_number, block_hash, block_timestamp, transaction_index, address, network, sender, receiver, term_id, curve_id, assets, assets_after_fees, shares, total_shares, vault_type FROM deposited_events ORDER BY 1, 2",
    ),
    (
        "redeemed_events",
        "SELECT transaction_hash, log_index, block_number, block_hash, block_timestamp, transaction_index, address, network, sender, receiver, term_id, curve_id, shares, total_shares, assets, fees, vault_type FROM redeemed_events ORDER BY 1, 2",
    ),
    (
        "share_price_changed_events",
        "SELECT transaction_hash, log_index, block_number, block_hash, block_timestamp, transaction_index, address, network, term_id, curve_id, share_price, total_assets, total_shares, vault_type FROM share_price_changed_events ORDER BY 1, 2",
    ),
    (
        "generic_events",
        "SELECT transaction_hash, log_index, block_number, block_hash, block_timestamp, transaction_index, address, network, event_name, event_signature_hash, event_data::text FROM generic_events ORDER BY 1, 2",
    ),
    (
        "atom",
        "SELECT term_id, wallet_id, creator_id, data, encode(raw_data, 'hex') AS raw_data, type, resolving_status, last_event_block, last_event_log_index FROM atom ORDER BY 1",
    ),
    (
        "triple",
        "SELECT term_id, creator_id, subject_id, predicate_id, object_id, counter_term_id, last_event_block, last_event_log_index FROM triple ORDER BY 1",
    ),
    (
        "position",
        "SELECT account_id, term_id, curve_id, shares, total_deposit_assets_after_total_fees, total_redeem_assets_for_receiver, last_event_block, last_event_log_index FROM position ORDER BY 1, 2, 3",
    ),
    (
        "vault",
        "SELECT term_id, curve_id, total_shares, current_share_price, total_assets, market_cap, position_count, vault_type, share_price_block, share_price_log_index, last_event_block, last_event_log_index FROM vault ORDER BY 1, 2",
    ),
    (
        "term",
        "SELECT id, type, atom_id, triple_id, total_assets, total_market_cap FROM term ORDER BY 1",
    ),
];

impl Drop for TestDb {
    fn drop(&mut self) {
        // The test's runtime may be gone: drop the schema from a thread of
        // our own with its own connection.
        let schema = self.schema.clone();
        let url = self.url.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&url).await {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
                    )))
                    .execute(&mut conn)
                    .await;
                    let _ = conn.close().await;
                }
            });
        })
        .join();
    }
}
