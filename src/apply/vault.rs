//! The `vault` table (key: term, curve): changed by new Deposited,
//! Redeemed and SharePriceChanged events, rebuilt from the event log when
//! events leave it (invariant 3).
//!
//! A batch changes each vault with one upsert, whatever its number of
//! events: the newest event gives `vault_type`, the newest SharePriceChanged
//! the totals and share price (each guarded by the chain position recorded
//! next to it, so arrival order does not matter), and `position_count`
//! moves by what the positions' cascade reported. The statement also
//! returns how each term's vault totals moved, so the term rows are patched
//! by the difference instead of re-summed ([`super::term`]).

use std::collections::HashMap;

use sqlx::PgConnection;

use super::column;
use super::events::Item;
use super::position::CountDelta;
use crate::event::{ChainPosition, Deposited, Redeemed, SharePriceChanged, VaultEvent};

/// A vault: term, curve (canonical decimal).
pub type VaultKey = (String, String);

/// One upsert per vault the batch changed: `$1..$2` term, curve; `$3`
/// position count change; `$4..$6` type, block, log of its newest event;
/// `$7..$11` newest share price, total assets, total shares, block, log
/// (NULL without a SharePriceChanged). Returns per term the change of its
/// vaults' total assets and market cap.
const CASCADE: &str = r#"
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[]::numeric[], $3::int8[], $4::int2[], $5::int8[],
        $6::int8[], $7::text[]::numeric[], $8::text[]::numeric[], $9::text[]::numeric[],
        $10::int8[], $11::int8[])
        AS i(term_id, curve_id, count_delta, vault_type, block_number, log_index, share_price,
             total_assets, total_shares, price_block, price_log_index)
),
upserted AS (
    INSERT INTO vault AS v (term_id, curve_id, total_shares, current_share_price, total_assets,
        market_cap, position_count, vault_type, share_price_block, share_price_log_index,
        last_event_block, last_event_log_index)
    SELECT term_id, curve_id, coalesce(total_shares, 0), coalesce(share_price, 0),
        coalesce(total_assets, 0),
        coalesce(div(total_shares * share_price, 1000000000000000000), 0),
        count_delta, vault_type::text, price_block, price_log_index, block_number, log_index
    FROM input
    ORDER BY term_id, curve_id
    ON CONFLICT (term_id, curve_id) DO UPDATE SET
        position_count = v.position_count + EXCLUDED.position_count,
        (vault_type, last_event_block, last_event_log_index) =
            (SELECT CASE WHEN newer THEN EXCLUDED.vault_type ELSE v.vault_type END,
                    CASE WHEN newer THEN EXCLUDED.last_event_block ELSE v.last_event_block END,
                    CASE WHEN newer THEN EXCLUDED.last_event_log_index ELSE v.last_event_log_index END
             FROM (SELECT (EXCLUDED.last_event_block, EXCLUDED.last_event_log_index)
                        > (v.last_event_block, v.last_event_log_index) AS newer) n),
        (total_shares, current_share_price, total_assets, market_cap, share_price_block,
         share_price_log_index) =
            (SELECT CASE WHEN priced THEN EXCLUDED.total_shares ELSE v.total_shares END,
                    CASE WHEN priced THEN EXCLUDED.current_share_price ELSE v.current_share_price END,
                    CASE WHEN priced THEN EXCLUDED.total_assets ELSE v.total_assets END,
                    CASE WHEN priced THEN EXCLUDED.market_cap ELSE v.market_cap END,
                    CASE WHEN priced THEN EXCLUDED.share_price_block ELSE v.share_price_block END,
                    CASE WHEN priced THEN EXCLUDED.share_price_log_index
                         ELSE v.share_price_log_index END
             FROM (SELECT EXCLUDED.share_price_block IS NOT NULL
                      AND (v.share_price_block IS NULL
                           OR (EXCLUDED.share_price_block, EXCLUDED.share_price_log_index)
                              > (v.share_price_block, v.share_price_log_index)) AS priced) n),
        updated_at = now()
    RETURNING v.term_id, v.curve_id, v.total_assets, v.market_cap
)
SELECT u.term_id,
    sum(u.total_assets - coalesce(o.total_assets, 0))::text AS assets_delta,
    sum(u.market_cap - coalesce(o.market_cap, 0))::text AS market_cap_delta
FROM upserted u
-- The row before this statement, by primary key (see position::CASCADE).
LEFT JOIN LATERAL (
    SELECT v.total_assets, v.market_cap FROM vault v
    WHERE v.term_id = u.term_id AND v.curve_id = u.curve_id
    OFFSET 0
) o ON true
GROUP BY u.term_id
"#;

/// Rebuilds the given vaults from their remaining events and current
/// positions (run after the positions are rebuilt). Vaults no event names any
/// more are deleted. `$1..$2` = term, curve; `$3` a block from which to look
/// first (NULL: none).
///
/// A vault takes its values from its newest SharePriceChanged and its newest
/// event. Found through the `term_id` index, that reads every event the term
/// ever had: hundreds of milliseconds for a few hot vaults after a million
/// events (benches/README.md), under the exclusive reorg lock. With `$3`,
/// the events at blocks ≥ `$3` are read first, through the `block_number`
/// index (the tail of the chain, where a reorg's vaults had their latest
/// events); a vault with an event there has its newest one there, exactly,
/// and only the vaults without one are looked up through their whole
/// history, each on its own (a lateral read per vault through the `term_id`
/// index); so are a kept vault's positions, to count them. The `OFFSET 0`
/// fences keep each recent read a range scan of its own and each history or
/// position read an index lookup: unfenced, a planner without statistics
/// joined every history table whole by hash (two full scans of
/// the SharePriceChanged table per rebuild, most of a reorg's exclusive
/// transaction at a steady rate), and one ordering by block with `LIMIT 1`
/// could scan the block index backwards through other vaults' events. The
/// statement is planned for its actual `$3` (not prepared).
const RECOMPUTE: &str = concat!(
    r#"
WITH keys AS (
    SELECT DISTINCT term_id, curve_id
    FROM unnest($1::text[], $2::text[]::numeric[]) AS k(term_id, curve_id)
),
recent_prices AS (
    SELECT s.term_id, s.curve_id, s.share_price, s.total_assets, s.total_shares,
        s.vault_type, s.block_number, s.log_index
    FROM (SELECT * FROM share_price_changed_events WHERE block_number >= $3 OFFSET 0) s
    JOIN keys k USING (term_id, curve_id)
),
recent AS (
    SELECT term_id, curve_id, vault_type, block_number, log_index FROM recent_prices
    UNION ALL
    SELECT d.term_id, d.curve_id, d.vault_type, d.block_number, d.log_index
    FROM (SELECT * FROM deposited_events WHERE block_number >= $3 OFFSET 0) d
    JOIN keys k USING (term_id, curve_id)
    UNION ALL
    SELECT r.term_id, r.curve_id, r.vault_type, r.block_number, r.log_index
    FROM (SELECT * FROM redeemed_events WHERE block_number >= $3 OFFSET 0) r
    JOIN keys k USING (term_id, curve_id)
),
-- The vaults without a recent SharePriceChanged, and without any recent
-- event: looked up through their whole history.
old_prices AS (
    SELECT * FROM keys k WHERE NOT EXISTS (
        SELECT 1 FROM recent_prices r WHERE r.term_id = k.term_id AND r.curve_id = k.curve_id)
),
old AS (
    SELECT * FROM keys k WHERE NOT EXISTS (
        SELECT 1 FROM recent r WHERE r.term_id = k.term_id AND r.curve_id = k.curve_id)
),
prices AS (
    SELECT DISTINCT ON (term_id, curve_id) term_id, curve_id, share_price, total_assets,
        total_shares, vault_type, block_number, log_index
    FROM (
        SELECT term_id, curve_id, share_price, total_assets, total_shares, vault_type,
            block_number, log_index
        FROM recent_prices
        UNION ALL
        SELECT k.term_id, k.curve_id, s.share_price, s.total_assets, s.total_shares,
            s.vault_type, s.block_number, s.log_index
        FROM old_prices k
        CROSS JOIN LATERAL (
            SELECT * FROM (
                SELECT * FROM share_price_changed_events s
                WHERE s.term_id = k.term_id AND s.curve_id = k.curve_id
                OFFSET 0
            ) s
            ORDER BY s.block_number DESC, s.log_index DESC
            LIMIT 1
        ) s
    ) e
    ORDER BY term_id, curve_id, block_number DESC, log_index DESC
),
newest AS (
    SELECT DISTINCT ON (term_id, curve_id) term_id, curve_id, vault_type, block_number, log_index
    FROM (
        SELECT * FROM recent
        UNION ALL
        -- Each vault's newest SharePriceChanged, read once in `prices` (for
        -- a vault with a recent event it is in `recent` or older than it).
        SELECT term_id, curve_id, vault_type, block_number, log_index FROM prices
        UNION ALL
        SELECT k.term_id, k.curve_id, h.vault_type, h.block_number, h.log_index
        FROM old k
        CROSS JOIN LATERAL (
            SELECT * FROM (
                SELECT d.vault_type, d.block_number, d.log_index FROM deposited_events d
                WHERE d.term_id = k.term_id AND d.curve_id = k.curve_id
                UNION ALL
                SELECT r.vault_type, r.block_number, r.log_index FROM redeemed_events r
                WHERE r.term_id = k.term_id AND r.curve_id = k.curve_id
                OFFSET 0
            ) u
            ORDER BY u.block_number DESC, u.log_index DESC
            LIMIT 1
        ) h
    ) e
    ORDER BY term_id, curve_id, block_number DESC, log_index DESC
),
upserted AS (
    INSERT INTO vault AS v (term_id, curve_id, total_shares, current_share_price, total_assets,
        market_cap, position_count, vault_type, share_price_block, share_price_log_index,
        last_event_block, last_event_log_index)
    SELECT n.term_id, n.curve_id, coalesce(pr.total_shares, 0), coalesce(pr.share_price, 0),
        coalesce(pr.total_assets, 0),
        coalesce(div(pr.total_shares * pr.share_price, 1000000000000000000), 0),
        c.open_positions, n.vault_type::text, pr.block_number, pr.log_index,
        n.block_number, n.log_index
    FROM newest n
    LEFT JOIN prices pr USING (term_id, curve_id)
    -- Each kept vault's positions, read on their own through the position
    -- table's `term_id` index: joined, the planner scanned the whole table.
    CROSS JOIN LATERAL (
        SELECT count(*) FILTER (WHERE p.shares > 0) AS open_positions
        FROM (
            SELECT p.shares FROM position p
            WHERE p.term_id = n.term_id AND p.curve_id = n.curve_id
            OFFSET 0
        ) p
    ) c
    ON CONFLICT (term_id, curve_id) "#,
    update_changed!(v:
        total_shares, current_share_price, total_assets, market_cap, position_count, vault_type,
        share_price_block, share_price_log_index, last_event_block, last_event_log_index),
    r#")
DELETE FROM vault v USING keys k
WHERE v.term_id = k.term_id AND v.curve_id = k.curve_id
  AND NOT EXISTS (SELECT 1 FROM newest n WHERE n.term_id = k.term_id AND n.curve_id = k.curve_id)
"#
);

/// How a batch moved one term's vaults: the term; Σ total_assets and
/// Σ market_cap after − before over its vaults (decimal).
pub(crate) type TermMove = (String, String, String);

/// What a batch does to one vault.
struct Change<'b> {
    count_delta: i64,
    /// The newest event naming the vault, and the vault type it gives.
    newest: (&'b ChainPosition<'b>, i16),
    /// The newest SharePriceChanged.
    price: Option<(&'b ChainPosition<'b>, &'b SharePriceChanged)>,
}

/// The change of the vault `event` names, which the event at `at` is seen
/// by (the newest event gives the vault its type).
fn saw<'m, 'b>(
    changes: &'m mut HashMap<(&'b str, &'b str), Change<'b>>,
    at: &'b ChainPosition<'b>,
    event: &'b impl VaultEvent,
) -> &'m mut Change<'b> {
    let (term, curve, vault_type) = event.vault();
    let newest = (at, vault_type.code());
    changes
        .entry((term.as_str(), curve.as_str()))
        .and_modify(|c| {
            if c.newest.0.order() < at.order() {
                c.newest = newest;
            }
        })
        .or_insert(Change {
            count_delta: 0,
            newest,
            price: None,
        })
}

/// Updates the vaults of new deposits, redeems and share prices, with the
/// position count changes the positions' cascade reported; returns how each
/// term's vault totals moved (every term whose vaults changed).
pub(crate) async fn cascade(
    conn: &mut PgConnection,
    deposits: &[Item<'_, Deposited>],
    redeems: &[Item<'_, Redeemed>],
    prices: &[Item<'_, SharePriceChanged>],
    counts: &[CountDelta],
) -> Result<Vec<TermMove>, sqlx::Error> {
    let mut changes = HashMap::new();
    for i in deposits {
        saw(&mut changes, i.chain, i.event);
    }
    for i in redeems {
        saw(&mut changes, i.chain, i.event);
    }
    for i in prices {
        let change = saw(&mut changes, i.chain, i.event);
        if change
            .price
            .is_none_or(|(at, _)| at.order() < i.chain.order())
        {
            change.price = Some((i.chain, i.event));
        }
    }
    for (term, curve, delta) in counts {
        // Every vault whose count moved had an event in this batch.
        if let Some(change) = changes.get_mut(&(term.as_str(), curve.as_str())) {
            change.count_delta += delta;
        }
    }
    if changes.is_empty() {
        return Ok(Vec::new());
    }
    // In key order: the order every batch locks vault rows in.
    let mut rows: Vec<((&str, &str), Change<'_>)> = changes.into_iter().collect();
    rows.sort_unstable_by_key(|(key, _)| *key);
    sqlx::query_as(CASCADE)
        .bind(column(&rows, |((term, _), _)| *term))
        .bind(column(&rows, |((_, curve), _)| *curve))
        .bind(column(&rows, |(_, c)| c.count_delta))
        .bind(column(&rows, |(_, c)| c.newest.1))
        .bind(column(&rows, |(_, c)| c.newest.0.block_number))
        .bind(column(&rows, |(_, c)| c.newest.0.log_index))
        .bind(column(&rows, |(_, c)| {
            c.price.map(|(_, p)| p.share_price.as_str())
        }))
        .bind(column(&rows, |(_, c)| {
            c.price.map(|(_, p)| p.total_assets.as_str())
        }))
        .bind(column(&rows, |(_, c)| {
            c.price.map(|(_, p)| p.total_shares.as_str())
        }))
        .bind(column(&rows, |(_, c)| {
            c.price.map(|(at, _)| at.block_number)
        }))
        .bind(column(&rows, |(_, c)| c.price.map(|(at, _)| at.log_index)))
        .fetch_all(conn)
        .await
}

/// The newest block of the vault events (three index probes).
const TIP: &str = "SELECT greatest(
    (SELECT max(block_number) FROM share_price_changed_events),
    (SELECT max(block_number) FROM deposited_events),
    (SELECT max(block_number) FROM redeemed_events))";

/// The most blocks below the tip that [`recompute`] reads first; from
/// further down it reads the vaults' histories instead.
const DEEPEST_RECENT: i64 = 8 * super::rebuild::RECENT_BLOCKS;

/// Rebuilds vaults from their events and current positions (see
/// [`RECOMPUTE`]; run after the positions). Callers hold the term locks of
/// every term named (or the exclusive reorg lock). `recent_from`: a block
/// from which the vaults' newest events are looked for first (any block
/// gives the same rows; one near their latest events gives them sooner),
/// unless it is more than [`DEEPEST_RECENT`] blocks below the tip.
pub async fn recompute(
    conn: &mut PgConnection,
    keys: &[VaultKey],
    recent_from: Option<i64>,
) -> Result<(), sqlx::Error> {
    if keys.is_empty() {
        return Ok(());
    }
    let recent_from = match recent_from {
        Some(from) => {
            // Far below the chain's tip (a late copy of a notice: replayed,
            // reclaimed, its stream behind the others), the recent blocks
            // are most of the tables: their whole range would cost more
            // than the history lookups it saves.
            let tip: Option<i64> = sqlx::query_scalar(TIP).fetch_one(&mut *conn).await?;
            tip.filter(|tip| tip - from <= DEEPEST_RECENT).map(|_| from)
        }
        None => None,
    };
    let terms: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
    let curves: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
    sqlx::query(RECOMPUTE)
        .bind(&terms)
        .bind(&curves)
        .bind(recent_from)
        // Planned for this `$3`: a plan for any `$3` would guess a third of
        // each table and read it all.
        .persistent(false)
        .execute(conn)
        .await?;
    Ok(())
}
