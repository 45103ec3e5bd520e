//! Bind arrays for the columns every event table shares.

use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::Query;
use sqlx::{Postgres, Row};

use crate::event::ChainPosition;

/// The chain-position columns, one array each, bound as
/// `$1..$8` = transaction_hash, log_index, block_number, block_hash,
/// block_timestamp, transaction_index, address, network.
#[derive(Debug)]
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
    pub fn of<'p: 'e>(positions: impl ExactSizeIterator<Item = &'e ChainPosition<'p>>) -> Self {
        let n = positions.len();
        let mut c = ChainColumns {
            transaction_hash: Vec::with_capacity(n),
            log_index: Vec::with_capacity(n),
            block_number: Vec::with_capacity(n),
            block_hash: Vec::with_capacity(n),
            block_timestamp: Vec::with_capacity(n),
            transaction_index: Vec::with_capacity(n),
            address: Vec::with_capacity(n),
            network: Vec::with_capacity(n),
        };
        for p in positions {
            c.transaction_hash.push(p.transaction_hash.as_str());
            c.log_index.push(p.log_index);
            c.block_number.push(p.block_number);
            c.block_hash.push(p.block_hash.as_str());
            c.block_timestamp.push(p.block_timestamp);
            c.transaction_index.push(p.transaction_index);
            c.address.push(p.address.as_str());
            c.network.push(&p.network);
        }
        c
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

/// Turns the 1-based ordinals an insert returned into 0-based indexes.
pub(crate) fn indexes(rows: Vec<PgRow>) -> Result<Vec<usize>, sqlx::Error> {
    rows.iter()
        .map(|r| r.try_get::<i64, _>(0).map(|o| (o - 1) as usize))
        .collect()
}
