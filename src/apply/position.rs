//! The `position` table (key: receiver, term, curve): changed by new
//! Deposited and Redeemed events, rebuilt from the event log when events
//! leave it (invariant 2).
//!
//! - `shares` = totalShares of the newest Deposited/Redeemed, guarded by the
//!   chain position recorded next to it, so arrival order does not matter;
//! - the two totals are sums over the new events, exact because only events
//!   inserted for the first time cascade.
//!
//! The cascade reports, per vault, how many positions crossed zero (old and
//! new shares are both visible in its statement): the vault's
//! `position_count` moves by that much.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use sqlx::PgConnection;

use super::column;
use super::events::Item;
use crate::event::{Amount, ChainPosition, Deposited, Redeemed};

/// A position: account, term, curve (canonical decimal).
pub type PositionKey = (String, String, String);

/// Positions from a batch, one row each (the batch's events added up per
/// position in Rust): `$1..$3` = account, term, curve; `$4..$5` deposited
/// and redeemed in the batch; `$6..$8` = totalShares, block, log of its
/// newest event. Returns, per vault, the change of its count of positions
/// with shares (non-zero only).
const CASCADE: &str = r#"
WITH batch AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[]::numeric[], $4::text[]::numeric[],
        $5::text[]::numeric[], $6::text[]::numeric[], $7::int8[], $8::int8[])
        AS b(account_id, term_id, curve_id, deposited, redeemed, total_shares, block_number,
             log_index)
),
upserted AS (
    INSERT INTO position AS p (account_id, term_id, curve_id, shares,
        total_deposit_assets_after_total_fees, total_redeem_assets_for_receiver,
        last_event_block, last_event_log_index)
    SELECT account_id, term_id, curve_id, total_shares, deposited, redeemed,
        block_number, log_index
    FROM batch
    ON CONFLICT (account_id, term_id, curve_id) DO UPDATE SET
        (shares, last_event_block, last_event_log_index) =
            (SELECT CASE WHEN newer THEN EXCLUDED.shares ELSE p.shares END,
                    CASE WHEN newer THEN EXCLUDED.last_event_block ELSE p.last_event_block END,
                    CASE WHEN newer THEN EXCLUDED.last_event_log_index ELSE p.last_event_log_index END
             FROM (SELECT (EXCLUDED.last_event_block, EXCLUDED.last_event_log_index)
                        > (p.last_event_block, p.last_event_log_index) AS newer) n),
        total_deposit_assets_after_total_fees = p.total_deposit_assets_after_total_fees
            + EXCLUDED.total_deposit_assets_after_total_fees,
        total_redeem_assets_for_receiver = p.total_redeem_assets_for_receiver
            + EXCLUDED.total_redeem_assets_for_receiver,
        updated_at = now()
    RETURNING account_id, term_id, curve_id, shares
)
SELECT u.term_id, u.curve_id::text,
    sum((u.shares > 0)::int - coalesce((o.shares > 0)::int, 0))::int8 AS delta
FROM upserted u
-- The row before this statement (its snapshot), one primary-key probe per
-- row: `OFFSET 0` keeps the planner from turning this into a hash join
-- over the whole table, whose cost would grow with the table.
LEFT JOIN LATERAL (
    SELECT p.shares FROM position p
    WHERE p.account_id = u.account_id AND p.term_id = u.term_id AND p.curve_id = u.curve_id
    OFFSET 0
) o ON true
GROUP BY u.term_id, u.curve_id
HAVING sum((u.shares > 0)::int - coalesce((o.shares > 0)::int, 0)) <> 0
"#;

/// Rebuilds the given positions from the events that remain (after a reorg
/// removed some, or for a backfill): newest totalShares, sums of assets.
/// Positions left without events are deleted. `$1..$3` = account, term, curve.
///
/// Each term's history is read once, through the `term_id` index (a lateral
/// read per term, fenced with `OFFSET 0`): unfenced, a planner without
/// statistics joined both event tables whole by hash — most of a position
/// rebuild's time in a reorg at a steady rate (benches/README.md).
const RECOMPUTE: &str = concat!(
    r#"
WITH keys AS (
    SELECT DISTINCT account_id, term_id, curve_id
    FROM unnest($1::text[], $2::text[], $3::text[]::numeric[]) AS k(account_id, term_id, curve_id)
),
terms AS (
    SELECT DISTINCT term_id FROM keys
),
moves AS (
    SELECT d.receiver AS account_id, d.term_id, d.curve_id, d.assets_after_fees AS deposited,
        0::numeric AS redeemed, d.total_shares, d.block_number, d.log_index
    FROM terms t
    CROSS JOIN LATERAL (
        SELECT * FROM deposited_events d WHERE d.term_id = t.term_id OFFSET 0
    ) d
    JOIN keys k ON d.term_id = k.term_id AND d.curve_id = k.curve_id AND d.receiver = k.account_id
    UNION ALL
    SELECT r.receiver, r.term_id, r.curve_id, 0, r.assets, r.total_shares, r.block_number,
        r.log_index
    FROM terms t
    CROSS JOIN LATERAL (
        SELECT * FROM redeemed_events r WHERE r.term_id = t.term_id OFFSET 0
    ) r
    JOIN keys k ON r.term_id = k.term_id AND r.curve_id = k.curve_id AND r.receiver = k.account_id
),
computed AS (
    SELECT DISTINCT ON (account_id, term_id, curve_id)
        account_id, term_id, curve_id, total_shares, block_number, log_index,
        sum(deposited) OVER w AS deposited, sum(redeemed) OVER w AS redeemed
    FROM moves
    WINDOW w AS (PARTITION BY account_id, term_id, curve_id)
    ORDER BY account_id, term_id, curve_id, block_number DESC, log_index DESC
),
upserted AS (
    INSERT INTO position AS p (account_id, term_id, curve_id, shares,
        total_deposit_assets_after_total_fees, total_redeem_assets_for_receiver,
        last_event_block, last_event_log_index)
    SELECT account_id, term_id, curve_id, total_shares, deposited, redeemed, block_number,
        log_index
    FROM computed
    ON CONFLICT (account_id, term_id, curve_id) "#,
    update_changed!(p:
        shares, total_deposit_assets_after_total_fees, total_redeem_assets_for_receiver,
        last_event_block, last_event_log_index),
    r#")
DELETE FROM position p USING keys k
WHERE p.account_id = k.account_id AND p.term_id = k.term_id AND p.curve_id = k.curve_id
  AND NOT EXISTS (SELECT 1 FROM computed c WHERE c.account_id = k.account_id
                  AND c.term_id = k.term_id AND c.curve_id = k.curve_id)
"#
);

/// A change of a vault's count of positions with shares: term, curve
/// (canonical decimal), change.
pub(crate) type CountDelta = (String, String, i64);

/// A batch's effect on one position.
struct Moved<'b> {
    deposited: Amount,
    redeemed: Amount,
    /// totalShares of its newest event, and where that event sits.
    newest: (&'b ChainPosition<'b>, &'b Amount),
}

impl<'b> Moved<'b> {
    fn add(
        &mut self,
        deposited: &Amount,
        redeemed: &Amount,
        at: &'b ChainPosition<'b>,
        total_shares: &'b Amount,
    ) -> Result<(), sqlx::Error> {
        let overflow =
            || sqlx::Error::Encode("a position's total exceeds 2^256-1 within one batch".into());
        self.deposited = self.deposited.checked_add(deposited).ok_or_else(overflow)?;
        self.redeemed = self.redeemed.checked_add(redeemed).ok_or_else(overflow)?;
        if self.newest.0.order() < at.order() {
            self.newest = (at, total_shares);
        }
        Ok(())
    }
}

/// Updates the positions of new deposits and redeems; returns how each
/// vault's count of positions with shares changed.
pub(crate) async fn cascade(
    conn: &mut PgConnection,
    deposits: &[Item<'_, Deposited>],
    redeems: &[Item<'_, Redeemed>],
) -> Result<Vec<CountDelta>, sqlx::Error> {
    if deposits.is_empty() && redeems.is_empty() {
        return Ok(Vec::new());
    }
    // One row per position, in key order (the order every batch locks
    // position rows in).
    let mut moved: BTreeMap<(&str, &str, &str), Moved<'_>> = BTreeMap::new();
    let mut record =
        |key, deposited: &Amount, redeemed: &Amount, at, total_shares| match moved.entry(key) {
            Entry::Occupied(mut m) => m.get_mut().add(deposited, redeemed, at, total_shares),
            Entry::Vacant(v) => {
                v.insert(Moved {
                    deposited: *deposited,
                    redeemed: *redeemed,
                    newest: (at, total_shares),
                });
                Ok(())
            }
        };
    for i in deposits {
        let e = i.event;
        let key = (e.receiver.as_str(), e.term_id.as_str(), e.curve_id.as_str());
        record(
            key,
            &e.assets_after_fees,
            &Amount::ZERO,
            i.chain,
            &e.total_shares,
        )?;
    }
    for i in redeems {
        let e = i.event;
        let key = (e.receiver.as_str(), e.term_id.as_str(), e.curve_id.as_str());
        record(key, &Amount::ZERO, &e.assets, i.chain, &e.total_shares)?;
    }
    let rows: Vec<_> = moved.into_iter().collect();
    sqlx::query_as(CASCADE)
        .bind(column(&rows, |((account, _, _), _)| *account))
        .bind(column(&rows, |((_, term, _), _)| *term))
        .bind(column(&rows, |((_, _, curve), _)| *curve))
        .bind(column(&rows, |(_, m)| m.deposited.as_str()))
        .bind(column(&rows, |(_, m)| m.redeemed.as_str()))
        .bind(column(&rows, |(_, m)| m.newest.1.as_str()))
        .bind(column(&rows, |(_, m)| m.newest.0.block_number))
        .bind(column(&rows, |(_, m)| m.newest.0.log_index))
        .fetch_all(conn)
        .await
}

/// Rebuilds positions from their events (see [`RECOMPUTE`]). Callers hold
/// the term locks of every term named (or the exclusive reorg lock).
pub async fn recompute(conn: &mut PgConnection, keys: &[PositionKey]) -> Result<(), sqlx::Error> {
    if keys.is_empty() {
        return Ok(());
    }
    let accounts: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
    let terms: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
    let curves: Vec<&str> = keys.iter().map(|k| k.2.as_str()).collect();
    sqlx::query(RECOMPUTE)
        .bind(&accounts)
        .bind(&terms)
        .bind(&curves)
        .execute(conn)
        .await?;
    Ok(())
}
