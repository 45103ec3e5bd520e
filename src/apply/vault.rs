//! The `position` and `vault` tables: changed by new Deposited, Redeemed and
//! SharePriceChanged events, rebuilt from the event log when events leave it.
//!
//! Values that come from "the newest event" are guarded by the chain
//! position recorded next to them, so arrival order does not matter:
//!
//! - `position.shares` = totalShares of the newest Deposited/Redeemed; the
//!   two totals are sums over the new events (exact because only events
//!   inserted for the first time cascade).
//! - `vault.position_count` moves by the number of positions that crossed
//!   zero in this statement (old and new shares are both visible in it).
//! - `vault.total_shares/current_share_price/total_assets/market_cap` come
//!   from the newest SharePriceChanged (a second statement, guarded by the
//!   price's own chain position); `vault_type` from the newest event.

use sqlx::PgConnection;

use super::events::Item;
use crate::event::{Deposited, Redeemed, SharePriceChanged, VaultType};

/// The new vault events of a batch (inserted for the first time).
#[derive(Debug, Default)]
pub(crate) struct NewEvents<'b> {
    pub deposits: Vec<Item<'b, Deposited>>,
    pub redeems: Vec<Item<'b, Redeemed>>,
    pub prices: Vec<Item<'b, SharePriceChanged>>,
}

/// Positions and vaults from new events: `$1..$9` position moves (account,
/// term, curve, deposited, redeemed, totalShares, block, log, vault type),
/// `$10..$14` the vaults share prices touched (term, curve, block, log,
/// vault type). Creates missing vaults, moves `position_count`, keeps
/// `vault_type` from the newest event; share prices follow in [`PRICES`].
/// Returns the terms of the vaults it created.
const CASCADE: &str = r#"
WITH moves AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[]::numeric[], $4::text[]::numeric[],
        $5::text[]::numeric[], $6::text[]::numeric[], $7::int8[], $8::int8[], $9::int2[])
        AS m(account_id, term_id, curve_id, deposited, redeemed, total_shares, block_number,
             log_index, vault_type)
),
priced AS (
    SELECT * FROM unnest($10::text[], $11::text[]::numeric[], $12::int8[], $13::int8[],
        $14::int2[]) AS s(term_id, curve_id, block_number, log_index, vault_type)
),
pos_in AS (
    SELECT DISTINCT ON (account_id, term_id, curve_id)
        account_id, term_id, curve_id, total_shares, block_number, log_index,
        sum(deposited) OVER w AS deposited, sum(redeemed) OVER w AS redeemed
    FROM moves
    WINDOW w AS (PARTITION BY account_id, term_id, curve_id)
    ORDER BY account_id, term_id, curve_id, block_number DESC, log_index DESC
),
pos_old AS (
    SELECT p.account_id, p.term_id, p.curve_id, p.shares
    FROM position p JOIN pos_in USING (account_id, term_id, curve_id)
),
pos AS (
    INSERT INTO position AS p (account_id, term_id, curve_id, shares,
        total_deposit_assets_after_total_fees, total_redeem_assets_for_receiver,
        last_event_block, last_event_log_index)
    SELECT account_id, term_id, curve_id, total_shares, deposited, redeemed,
        block_number, log_index
    FROM pos_in
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
),
count_delta AS (
    SELECT pos.term_id, pos.curve_id,
        sum((pos.shares > 0)::int - coalesce((o.shares > 0)::int, 0)) AS delta
    FROM pos LEFT JOIN pos_old o USING (account_id, term_id, curve_id)
    GROUP BY pos.term_id, pos.curve_id
),
touched AS (
    SELECT DISTINCT ON (term_id, curve_id) term_id, curve_id, vault_type, block_number, log_index
    FROM (SELECT term_id, curve_id, vault_type, block_number, log_index FROM moves
          UNION ALL SELECT term_id, curve_id, vault_type, block_number, log_index FROM priced) t
    ORDER BY term_id, curve_id, block_number DESC, log_index DESC
)
INSERT INTO vault AS v (term_id, curve_id, position_count, vault_type, last_event_block,
    last_event_log_index)
SELECT t.term_id, t.curve_id, coalesce(d.delta, 0), t.vault_type::text, t.block_number,
    t.log_index
FROM touched t
LEFT JOIN count_delta d USING (term_id, curve_id)
ON CONFLICT (term_id, curve_id) DO UPDATE SET
    position_count = v.position_count + EXCLUDED.position_count,
    (vault_type, last_event_block, last_event_log_index) =
        (SELECT CASE WHEN newer THEN EXCLUDED.vault_type ELSE v.vault_type END,
                CASE WHEN newer THEN EXCLUDED.last_event_block ELSE v.last_event_block END,
                CASE WHEN newer THEN EXCLUDED.last_event_log_index ELSE v.last_event_log_index END
         FROM (SELECT (EXCLUDED.last_event_block, EXCLUDED.last_event_log_index)
                    > (v.last_event_block, v.last_event_log_index) AS newer) n),
    updated_at = now()
RETURNING CASE WHEN xmax = 0 THEN term_id END
"#;

/// Share prices of new SharePriceChanged events, `$1..$7` = term, curve,
/// price, assets, shares, block, log: per vault the newest one, applied
/// only if newer than the vault's current price.
const PRICES: &str = r#"
UPDATE vault v SET
    total_shares = p.total_shares,
    current_share_price = p.share_price,
    total_assets = p.total_assets,
    market_cap = div(p.total_shares * p.share_price, 1000000000000000000),
    share_price_block = p.block_number,
    share_price_log_index = p.log_index,
    updated_at = now()
FROM (
    SELECT DISTINCT ON (term_id, curve_id) *
    FROM unnest($1::text[], $2::text[]::numeric[], $3::text[]::numeric[], $4::text[]::numeric[],
        $5::text[]::numeric[], $6::int8[], $7::int8[])
        AS s(term_id, curve_id, share_price, total_assets, total_shares, block_number, log_index)
    ORDER BY term_id, curve_id, block_number DESC, log_index DESC
) p
WHERE v.term_id = p.term_id AND v.curve_id = p.curve_id
  AND (v.share_price_block IS NULL
       OR (p.block_number, p.log_index) > (v.share_price_block, v.share_price_log_index))
"#;

/// Rebuilds the given positions from the events that remain (after a reorg
/// removed some, or for a backfill): newest totalShares, sums of assets.
/// Positions left without events are deleted. `$1..$3` = account, term, curve.
const RECOMPUTE_POSITIONS: &str = r#"
WITH keys AS (
    SELECT DISTINCT account_id, term_id, curve_id
    FROM unnest($1::text[], $2::text[], $3::text[]::numeric[]) AS k(account_id, term_id, curve_id)
),
moves AS (
    SELECT d.receiver AS account_id, d.term_id, d.curve_id, d.assets_after_fees AS deposited,
        0::numeric AS redeemed, d.total_shares, d.block_number, d.log_index
    FROM deposited_events d
    JOIN keys k ON d.term_id = k.term_id AND d.curve_id = k.curve_id AND d.receiver = k.account_id
    UNION ALL
    SELECT r.receiver, r.term_id, r.curve_id, 0, r.assets, r.total_shares, r.block_number,
        r.log_index
    FROM redeemed_events r
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
    ON CONFLICT (account_id, term_id, curve_id) DO UPDATE SET
        shares = EXCLUDED.shares,
        total_deposit_assets_after_total_fees = EXCLUDED.total_deposit_assets_after_total_fees,
        total_redeem_assets_for_receiver = EXCLUDED.total_redeem_assets_for_receiver,
        last_event_block = EXCLUDED.last_event_block,
        last_event_log_index = EXCLUDED.last_event_log_index,
        updated_at = now()
    WHERE (p.shares, p.total_deposit_assets_after_total_fees, p.total_redeem_assets_for_receiver,
           p.last_event_block, p.last_event_log_index)
        IS DISTINCT FROM (EXCLUDED.shares, EXCLUDED.total_deposit_assets_after_total_fees,
           EXCLUDED.total_redeem_assets_for_receiver, EXCLUDED.last_event_block,
           EXCLUDED.last_event_log_index)
)
DELETE FROM position p USING keys k
WHERE p.account_id = k.account_id AND p.term_id = k.term_id AND p.curve_id = k.curve_id
  AND NOT EXISTS (SELECT 1 FROM computed c WHERE c.account_id = k.account_id
                  AND c.term_id = k.term_id AND c.curve_id = k.curve_id)
"#;

/// Rebuilds the given vaults from their remaining events and current
/// positions (run after [`RECOMPUTE_POSITIONS`]). Vaults no event names any
/// more are deleted. `$1..$2` = term, curve.
const RECOMPUTE_VAULTS: &str = r#"
WITH keys AS (
    SELECT DISTINCT term_id, curve_id
    FROM unnest($1::text[], $2::text[]::numeric[]) AS k(term_id, curve_id)
),
prices AS (
    SELECT DISTINCT ON (s.term_id, s.curve_id) s.term_id, s.curve_id, s.share_price,
        s.total_assets, s.total_shares, s.block_number, s.log_index
    FROM share_price_changed_events s JOIN keys k USING (term_id, curve_id)
    ORDER BY s.term_id, s.curve_id, s.block_number DESC, s.log_index DESC
),
newest AS (
    SELECT DISTINCT ON (term_id, curve_id) term_id, curve_id, vault_type, block_number, log_index
    FROM (
        SELECT d.term_id, d.curve_id, d.vault_type, d.block_number, d.log_index
        FROM deposited_events d JOIN keys k USING (term_id, curve_id)
        UNION ALL
        SELECT r.term_id, r.curve_id, r.vault_type, r.block_number, r.log_index
        FROM redeemed_events r JOIN keys k USING (term_id, curve_id)
        UNION ALL
        SELECT s.term_id, s.curve_id, s.vault_type, s.block_number, s.log_index
        FROM share_price_changed_events s JOIN keys k USING (term_id, curve_id)
    ) e
    ORDER BY term_id, curve_id, block_number DESC, log_index DESC
),
counts AS (
    SELECT p.term_id, p.curve_id, count(*) FILTER (WHERE p.shares > 0) AS open_positions
    FROM position p JOIN keys k USING (term_id, curve_id)
    GROUP BY p.term_id, p.curve_id
),
upserted AS (
    INSERT INTO vault AS v (term_id, curve_id, total_shares, current_share_price, total_assets,
        market_cap, position_count, vault_type, share_price_block, share_price_log_index,
        last_event_block, last_event_log_index)
    SELECT n.term_id, n.curve_id, coalesce(pr.total_shares, 0), coalesce(pr.share_price, 0),
        coalesce(pr.total_assets, 0),
        coalesce(div(pr.total_shares * pr.share_price, 1000000000000000000), 0),
        coalesce(c.open_positions, 0), n.vault_type::text, pr.block_number, pr.log_index,
        n.block_number, n.log_index
    FROM newest n
    LEFT JOIN prices pr USING (term_id, curve_id)
    LEFT JOIN counts c USING (term_id, curve_id)
    ON CONFLICT (term_id, curve_id) DO UPDATE SET
        total_shares = EXCLUDED.total_shares,
        current_share_price = EXCLUDED.current_share_price,
        total_assets = EXCLUDED.total_assets,
        market_cap = EXCLUDED.market_cap,
        position_count = EXCLUDED.position_count,
        vault_type = EXCLUDED.vault_type,
        share_price_block = EXCLUDED.share_price_block,
        share_price_log_index = EXCLUDED.share_price_log_index,
        last_event_block = EXCLUDED.last_event_block,
        last_event_log_index = EXCLUDED.last_event_log_index,
        updated_at = now()
    WHERE (v.total_shares, v.current_share_price, v.total_assets, v.market_cap,
           v.position_count, v.vault_type, v.share_price_block, v.share_price_log_index,
           v.last_event_block, v.last_event_log_index)
        IS DISTINCT FROM (EXCLUDED.total_shares, EXCLUDED.current_share_price,
           EXCLUDED.total_assets, EXCLUDED.market_cap, EXCLUDED.position_count,
           EXCLUDED.vault_type, EXCLUDED.share_price_block, EXCLUDED.share_price_log_index,
           EXCLUDED.last_event_block, EXCLUDED.last_event_log_index)
)
DELETE FROM vault v USING keys k
WHERE v.term_id = k.term_id AND v.curve_id = k.curve_id
  AND NOT EXISTS (SELECT 1 FROM newest n WHERE n.term_id = k.term_id AND n.curve_id = k.curve_id)
"#;

/// A position: account, term, curve (canonical decimal).
pub type PositionKey = (String, String, String);
/// A vault: term, curve (canonical decimal).
pub type VaultKey = (String, String);

/// Rebuilds positions, then vaults, from the events that remain. Callers
/// hold the term locks of every term named (or the exclusive reorg lock).
pub async fn recompute(
    conn: &mut PgConnection,
    positions: &[PositionKey],
    vaults: &[VaultKey],
) -> Result<(), sqlx::Error> {
    if !positions.is_empty() {
        let accounts: Vec<&str> = positions.iter().map(|k| k.0.as_str()).collect();
        let terms: Vec<&str> = positions.iter().map(|k| k.1.as_str()).collect();
        let curves: Vec<&str> = positions.iter().map(|k| k.2.as_str()).collect();
        sqlx::query(RECOMPUTE_POSITIONS)
            .bind(&accounts)
            .bind(&terms)
            .bind(&curves)
            .execute(&mut *conn)
            .await?;
    }
    if !vaults.is_empty() {
        let terms: Vec<&str> = vaults.iter().map(|k| k.0.as_str()).collect();
        let curves: Vec<&str> = vaults.iter().map(|k| k.1.as_str()).collect();
        sqlx::query(RECOMPUTE_VAULTS)
            .bind(&terms)
            .bind(&curves)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

impl NewEvents<'_> {
    pub fn is_empty(&self) -> bool {
        self.deposits.is_empty() && self.redeems.is_empty() && self.prices.is_empty()
    }

    /// The terms of the deposits, redeems and share prices.
    pub fn terms(&self) -> impl Iterator<Item = &str> {
        let deposits = self.deposits.iter().map(|i| i.event.term_id.as_str());
        let redeems = self.redeems.iter().map(|i| i.event.term_id.as_str());
        deposits.chain(redeems).chain(self.price_terms())
    }

    /// The terms of the share prices.
    pub fn price_terms(&self) -> impl Iterator<Item = &str> {
        self.prices.iter().map(|i| i.event.term_id.as_str())
    }
}

/// Updates positions and vaults for new events; returns the terms of the
/// vaults it created.
pub(crate) async fn cascade(
    conn: &mut PgConnection,
    new: &NewEvents<'_>,
) -> Result<Vec<String>, sqlx::Error> {
    if new.is_empty() {
        return Ok(Vec::new());
    }
    // Position moves: account, term, curve, deposited, redeemed,
    // totalShares, at a chain position, in a vault of a type.
    type Move<'m> = ([&'m str; 6], &'m crate::event::ChainPosition<'m>, VaultType);
    let deposits = new.deposits.iter().map(|i| -> Move<'_> {
        let e = i.event;
        let moved = [
            e.receiver.as_str(),
            e.term_id.as_str(),
            e.curve_id.as_str(),
            e.assets_after_fees.as_str(),
            "0",
            e.total_shares.as_str(),
        ];
        (moved, i.chain, e.vault_type)
    });
    let redeems = new.redeems.iter().map(|i| -> Move<'_> {
        let e = i.event;
        let moved = [
            e.receiver.as_str(),
            e.term_id.as_str(),
            e.curve_id.as_str(),
            "0",
            e.assets.as_str(),
            e.total_shares.as_str(),
        ];
        (moved, i.chain, e.vault_type)
    });
    let moves: Vec<Move<'_>> = deposits.chain(redeems).collect();
    let column = |n: usize| -> Vec<&str> { moves.iter().map(|m| m.0[n]).collect() };
    let (account, term, curve) = (column(0), column(1), column(2));
    let (deposited, redeemed, total) = (column(3), column(4), column(5));
    let block: Vec<i64> = moves.iter().map(|m| m.1.block_number).collect();
    let log: Vec<i64> = moves.iter().map(|m| m.1.log_index).collect();
    let kind: Vec<i16> = moves.iter().map(|m| m.2.code()).collect();
    let price = |f: fn(&SharePriceChanged) -> &str| -> Vec<&str> {
        new.prices.iter().map(|i| f(i.event)).collect()
    };
    let price_block: Vec<i64> = new.prices.iter().map(|i| i.chain.block_number).collect();
    let price_log: Vec<i64> = new.prices.iter().map(|i| i.chain.log_index).collect();
    let price_term = price(|e| e.term_id.as_str());
    let price_curve = price(|e| e.curve_id.as_str());
    let created: Vec<Option<String>> = sqlx::query_scalar(CASCADE)
        .bind(&account)
        .bind(&term)
        .bind(&curve)
        .bind(&deposited)
        .bind(&redeemed)
        .bind(&total)
        .bind(&block)
        .bind(&log)
        .bind(&kind)
        .bind(&price_term)
        .bind(&price_curve)
        .bind(&price_block)
        .bind(&price_log)
        .bind(
            new.prices
                .iter()
                .map(|i| i.event.vault_type.code())
                .collect::<Vec<i16>>(),
        )
        .fetch_all(&mut *conn)
        .await?;
    if !new.prices.is_empty() {
        sqlx::query(PRICES)
            .bind(&price_term)
            .bind(&price_curve)
            .bind(price(|e| e.share_price.as_str()))
            .bind(price(|e| e.total_assets.as_str()))
            .bind(price(|e| e.total_shares.as_str()))
            .bind(&price_block)
            .bind(&price_log)
            .execute(&mut *conn)
            .await?;
    }
    Ok(created.into_iter().flatten().collect())
}
