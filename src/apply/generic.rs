//! Events the writer stores without interpreting them.

use sqlx::PgConnection;

use super::columns::ChainColumns;
use crate::event::{ChainPosition, Generic};

#[derive(Debug, Default)]
pub(crate) struct Generics<'e> {
    pub events: Vec<(&'e ChainPosition<'e>, &'e Generic<'e>)>,
}

const INSERT: &str = r#"
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

impl Generics<'_> {
    /// Inserts the event rows; returns how many were new.
    pub async fn insert(&self, conn: &mut PgConnection) -> Result<u64, sqlx::Error> {
        if self.events.is_empty() {
            return Ok(0);
        }
        let e = &self.events;
        let names: Vec<&str> = e.iter().map(|(_, g)| g.event_name.as_ref()).collect();
        let signatures: Vec<Option<&str>> = e
            .iter()
            .map(|(_, g)| g.event_signature_hash.as_deref())
            .collect();
        let data: Vec<&str> = e.iter().map(|(_, g)| g.data).collect();
        let row = ChainColumns::of(e.iter().map(|(c, _)| *c))
            .bind(sqlx::query(INSERT))
            .bind(&names)
            .bind(&signatures)
            .bind(&data)
            .fetch_one(conn)
            .await?;
        let new: i64 = sqlx::Row::try_get(&row, 0)?;
        Ok(new as u64) // a count(*)
    }
}
