//! Events the writer stores without interpreting them.

use sqlx::PgConnection;

use super::columns::ChainColumns;
use crate::event::{ChainPosition, Generic};

#[derive(Debug, Default)]
pub(crate) struct GenericRows<'e> {
    chain: ChainColumns<'e>,
    event_name: Vec<&'e str>,
    event_signature_hash: Vec<Option<&'e str>>,
    event_data: Vec<&'e str>,
}

const APPLY: &str = r#"
WITH ins AS (
    INSERT INTO generic_events (transaction_hash, log_index, block_number, block_hash,
        block_timestamp, transaction_index, address, network, event_name,
        event_signature_hash, event_data)
    SELECT e.transaction_hash, e.log_index, e.block_number, e.block_hash, e.block_timestamp,
        e.transaction_index, e.address, e.network, e.event_name, e.event_signature_hash,
        e.event_data::jsonb
    FROM unnest($1::text[], $2::int8[], $3::int8[], $4::text[], $5::int8[], $6::int8[],
        $7::text[], $8::text[], $9::text[], $10::text[], $11::text[])
        AS e(transaction_hash, log_index, block_number, block_hash, block_timestamp,
             transaction_index, address, network, event_name, event_signature_hash, event_data)
    WHERE NOT EXISTS (SELECT 1 FROM reorged_events r
        WHERE r.transaction_hash = e.transaction_hash AND r.log_index = e.log_index
          AND r.block_hash = e.block_hash)
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT count(*) FROM ins
"#;

impl<'e> GenericRows<'e> {
    pub fn push(&mut self, chain: &'e ChainPosition<'_>, event: &'e Generic<'_>) {
        self.chain.push(chain);
        self.event_name.push(&event.event_name);
        self.event_signature_hash
            .push(event.event_signature_hash.as_deref());
        self.event_data.push(event.data);
    }

    pub async fn apply(&self, conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
        if self.chain.is_empty() {
            return Ok(0);
        }
        let row = self
            .chain
            .bind(sqlx::query(APPLY))
            .bind(&self.event_name[..])
            .bind(&self.event_signature_hash[..])
            .bind(&self.event_data[..])
            .fetch_one(conn)
            .await?;
        sqlx::Row::try_get(&row, 0)
    }
}
