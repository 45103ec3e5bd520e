//! Bind arrays for the columns every event table shares.

use sqlx::Postgres;
use sqlx::postgres::PgArguments;
use sqlx::query::Query;

use crate::event::ChainPosition;

/// The chain-position columns, one array each, bound as
/// `$1..$8` = transaction_hash, log_index, block_number, block_hash,
/// block_timestamp, transaction_index, address, network.
#[derive(Debug, Default)]
pub(crate) struct ChainColumns<'e> {
    transaction_hash: Vec<&'e str>,
    log_index: Vec<i64>,
    block_number: Vec<i64>,
    block_hash: Vec<&'e str>,
    block_timestamp: Vec<Option<i64>>,
    transaction_index: Vec<i64>,
    address: Vec<&'e str>,
    network: Vec<&'e str>,
}

impl<'e> ChainColumns<'e> {
    pub fn push(&mut self, c: &'e ChainPosition<'_>) {
        self.transaction_hash.push(c.transaction_hash.as_str());
        self.log_index.push(c.log_index);
        self.block_number.push(c.block_number);
        self.block_hash.push(c.block_hash.as_str());
        self.block_timestamp.push(c.block_timestamp);
        self.transaction_index.push(c.transaction_index);
        self.address.push(c.address.as_str());
        self.network.push(&c.network);
    }

    pub fn is_empty(&self) -> bool {
        self.log_index.is_empty()
    }

    pub fn bind<'q>(
        &self,
        q: Query<'q, Postgres, PgArguments>,
    ) -> Query<'q, Postgres, PgArguments> {
        q.bind(&self.transaction_hash[..])
            .bind(&self.log_index[..])
            .bind(&self.block_number[..])
            .bind(&self.block_hash[..])
            .bind(&self.block_timestamp[..])
            .bind(&self.transaction_index[..])
            .bind(&self.address[..])
            .bind(&self.network[..])
    }
}
