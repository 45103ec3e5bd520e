//! Deposited, Redeemed and SharePriceChanged: their event rows, and the
//! `position` and `vault` rows they change, in one statement.
//!
//! Only events inserted by this statement (not seen before, not removed by a
//! reorg) cascade, which is what makes the sums in `position` exact under
//! redelivery. Values that come from "the newest event" are guarded by the
//! chain position recorded next to them, so arrival order does not matter:
//!
//! - `position.shares` = totalShares of the newest Deposited/Redeemed;
//!   the two totals are sums over the new events.
//! - `vault.position_count` moves by the number of positions that crossed
//!   zero in this statement (old and new shares are both visible here).
//! - `vault.total_shares/current_share_price/total_assets/market_cap` come
//!   from the newest SharePriceChanged; `vault_type` from the newest event.

use sqlx::PgConnection;

use super::columns::ChainColumns;
use crate::event::{ChainPosition, Deposited, Redeemed, SharePriceChanged};

#[derive(Debug, Default)]
pub(crate) struct VaultRows<'e> {
    deposits: DepositColumns<'e>,
    redeems: RedeemColumns<'e>,
    prices: PriceColumns<'e>,
}

#[derive(Debug, Default)]
struct DepositColumns<'e> {
    chain: ChainColumns<'e>,
    sender: Vec<&'e str>,
    receiver: Vec<&'e str>,
    term_id: Vec<&'e str>,
    curve_id: Vec<&'e str>,
    assets: Vec<&'e str>,
    assets_after_fees: Vec<&'e str>,
    shares: Vec<&'e str>,
    total_shares: Vec<&'e str>,
    vault_type: Vec<i16>,
}

#[derive(Debug, Default)]
struct RedeemColumns<'e> {
    chain: ChainColumns<'e>,
    sender: Vec<&'e str>,
    receiver: Vec<&'e str>,
    term_id: Vec<&'e str>,
    curve_id: Vec<&'e str>,
    shares: Vec<&'e str>,
    total_shares: Vec<&'e str>,
    assets: Vec<&'e str>,
    fees: Vec<&'e str>,
    vault_type: Vec<i16>,
}

#[derive(Debug, Default)]
struct PriceColumns<'e> {
    chain: ChainColumns<'e>,
    term_id: Vec<&'e str>,
    curve_id: Vec<&'e str>,
    share_price: Vec<&'e str>,
    total_assets: Vec<&'e str>,
    total_shares: Vec<&'e str>,
    vault_type: Vec<i16>,
}

/// `$1..$17` deposits, `$18..$34` redeems, `$35..$48` share prices.
const APPLY: &str = r#"
WITH dep AS (
    INSERT INTO deposited_events (transaction_hash, log_index, block_number, block_hash,
        block_timestamp, transaction_index, address, network, sender, receiver, term_id,
        curve_id, assets, assets_after_fees, shares, total_shares, vault_type)
    SELECT e.* FROM unnest($1::text[], $2::int8[], $3::int8[], $4::text[], $5::int8[],
        $6::int8[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[],
        $12::text[]::numeric[], $13::text[]::numeric[], $14::text[]::numeric[],
        $15::text[]::numeric[], $16::text[]::numeric[], $17::int2[])
        AS e(transaction_hash, log_index, block_number, block_hash, block_timestamp,
             transaction_index, address, network, sender, receiver, term_id, curve_id, assets,
             assets_after_fees, shares, total_shares, vault_type)
    WHERE NOT EXISTS (SELECT 1 FROM reorged_events r
        WHERE r.transaction_hash = e.transaction_hash AND r.log_index = e.log_index
          AND r.block_hash = e.block_hash)
    ON CONFLICT DO NOTHING
    RETURNING receiver, term_id, curve_id, assets_after_fees, total_shares, vault_type,
        block_number, log_index
),
red AS (
    INSERT INTO redeemed_events (transaction_hash, log_index, block_number, block_hash,
        block_timestamp, transaction_index, address, network, sender, receiver, term_id,
        curve_id, shares, total_shares, assets, fees, vault_type)
    SELECT e.* FROM unnest($18::text[], $19::int8[], $20::int8[], $21::text[], $22::int8[],
        $23::int8[], $24::text[], $25::text[], $26::text[], $27::text[], $28::text[],
        $29::text[]::numeric[], $30::text[]::numeric[], $31::text[]::numeric[],
        $32::text[]::numeric[], $33::text[]::numeric[], $34::int2[])
        AS e(transaction_hash, log_index, block_number, block_hash, block_timestamp,
             transaction_index, address, network, sender, receiver, term_id, curve_id, shares,
             total_shares, assets, fees, vault_type)
    WHERE NOT EXISTS (SELECT 1 FROM reorged_events r
        WHERE r.transaction_hash = e.transaction_hash AND r.log_index = e.log_index
          AND r.block_hash = e.block_hash)
    ON CONFLICT DO NOTHING
    RETURNING receiver, term_id, curve_id, assets, total_shares, vault_type,
        block_number, log_index
),
spc AS (
    INSERT INTO share_price_changed_events (transaction_hash, log_index, block_number,
        block_hash, block_timestamp, transaction_index, address, network, term_id, curve_id,
        share_price, total_assets, total_shares, vault_type)
    SELECT e.* FROM unnest($35::text[], $36::int8[], $37::int8[], $38::text[], $39::int8[],
        $40::int8[], $41::text[], $42::text[], $43::text[], $44::text[]::numeric[],
        $45::text[]::numeric[], $46::text[]::numeric[], $47::text[]::numeric[], $48::int2[])
        AS e(transaction_hash, log_index, block_number, block_hash, block_timestamp,
             transaction_index, address, network, term_id, curve_id, share_price,
             total_assets, total_shares, vault_type)
    WHERE NOT EXISTS (SELECT 1 FROM reorged_events r
        WHERE r.transaction_hash = e.transaction_hash AND r.log_index = e.log_index
          AND r.block_hash = e.block_hash)
    ON CONFLICT DO NOTHING
    RETURNING term_id, curve_id, share_price, total_assets, total_shares, vault_type,
        block_number, log_index
),
moves AS (
    SELECT receiver AS account_id, term_id, curve_id, assets_after_fees AS deposited,
        0::numeric AS redeemed, total_shares, block_number, log_index
    FROM dep
    UNION ALL
    SELECT receiver, term_id, curve_id, 0, assets, total_shares, block_number, log_index
    FROM red
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
        shares = CASE WHEN (EXCLUDED.last_event_block, EXCLUDED.last_event_log_index)
                         > (p.last_event_block, p.last_event_log_index)
                      THEN EXCLUDED.shares ELSE p.shares END,
        last_event_block = CASE WHEN (EXCLUDED.last_event_block, EXCLUDED.last_event_log_index)
                                   > (p.last_event_block, p.last_event_log_index)
                                THEN EXCLUDED.last_event_block ELSE p.last_event_block END,
        last_event_log_index = CASE WHEN (EXCLUDED.last_event_block, EXCLUDED.last_event_log_index)
                                       > (p.last_event_block, p.last_event_log_index)
                                    THEN EXCLUDED.last_event_log_index ELSE p.last_event_log_index END,
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
price_in AS (
    SELECT DISTINCT ON (term_id, curve_id) term_id, curve_id, share_price, total_assets,
        total_shares, block_number, log_index
    FROM spc
    ORDER BY term_id, curve_id, block_number DESC, log_index DESC
),
touched AS (
    SELECT DISTINCT ON (term_id, curve_id) term_id, curve_id, vault_type, block_number, log_index
    FROM (SELECT term_id, curve_id, vault_type, block_number, log_index FROM dep
          UNION ALL SELECT term_id, curve_id, vault_type, block_number, log_index FROM red
          UNION ALL SELECT term_id, curve_id, vault_type, block_number, log_index FROM spc) t
    ORDER BY term_id, curve_id, block_number DESC, log_index DESC
),
vaults AS (
    INSERT INTO vault AS v (term_id, curve_id, total_shares, current_share_price, total_assets,
        market_cap, position_count, vault_type, share_price_block, share_price_log_index,
        last_event_block, last_event_log_index)
    SELECT t.term_id, t.curve_id,
        coalesce(pr.total_shares, 0), coalesce(pr.share_price, 0), coalesce(pr.total_assets, 0),
        coalesce(div(pr.total_shares * pr.share_price, 1000000000000000000), 0),
        coalesce(d.delta, 0), t.vault_type::text, pr.block_number, pr.log_index,
        t.block_number, t.log_index
    FROM touched t
    LEFT JOIN price_in pr USING (term_id, curve_id)
    LEFT JOIN count_delta d USING (term_id, curve_id)
    ON CONFLICT (term_id, curve_id) DO UPDATE SET
        position_count = v.position_count + EXCLUDED.position_count,
        total_shares = CASE WHEN EXCLUDED.share_price_block IS NOT NULL
                             AND (v.share_price_block IS NULL
                                  OR (EXCLUDED.share_price_block, EXCLUDED.share_price_log_index)
                                   > (v.share_price_block, v.share_price_log_index))
                            THEN EXCLUDED.total_shares ELSE v.total_shares END,
        current_share_price = CASE WHEN EXCLUDED.share_price_block IS NOT NULL
                             AND (v.share_price_block IS NULL
                                  OR (EXCLUDED.share_price_block, EXCLUDED.share_price_log_index)
                                   > (v.share_price_block, v.share_price_log_index))
                            THEN EXCLUDED.current_share_price ELSE v.current_share_price END,
        total_assets = CASE WHEN EXCLUDED.share_price_block IS NOT NULL
                             AND (v.share_price_block IS NULL
                                  OR (EXCLUDED.share_price_block, EXCLUDED.share_price_log_index)
                                   > (v.share_price_block, v.share_price_log_index))
                            THEN EXCLUDED.total_assets ELSE v.total_assets END,
        market_cap = CASE WHEN EXCLUDED.share_price_block IS NOT NULL
                             AND (v.share_price_block IS NULL
                                  OR (EXCLUDED.share_price_block, EXCLUDED.share_price_log_index)
                                   > (v.share_price_block, v.share_price_log_index))
                            THEN EXCLUDED.market_cap ELSE v.market_cap END,
        share_price_block = CASE WHEN EXCLUDED.share_price_block IS NOT NULL
                             AND (v.share_price_block IS NULL
                                  OR (EXCLUDED.share_price_block, EXCLUDED.share_price_log_index)
                                   > (v.share_price_block, v.share_price_log_index))
                            THEN EXCLUDED.share_price_block ELSE v.share_price_block END,
        share_price_log_index = CASE WHEN EXCLUDED.share_price_block IS NOT NULL
                             AND (v.share_price_block IS NULL
                                  OR (EXCLUDED.share_price_block, EXCLUDED.share_price_log_index)
                                   > (v.share_price_block, v.share_price_log_index))
                            THEN EXCLUDED.share_price_log_index ELSE v.share_price_log_index END,
        vault_type = CASE WHEN (EXCLUDED.last_event_block, EXCLUDED.last_event_log_index)
                             > (v.last_event_block, v.last_event_log_index)
                          THEN EXCLUDED.vault_type ELSE v.vault_type END,
        last_event_block = CASE WHEN (EXCLUDED.last_event_block, EXCLUDED.last_event_log_index)
                                   > (v.last_event_block, v.last_event_log_index)
                                THEN EXCLUDED.last_event_block ELSE v.last_event_block END,
        last_event_log_index = CASE WHEN (EXCLUDED.last_event_block, EXCLUDED.last_event_log_index)
                                       > (v.last_event_block, v.last_event_log_index)
                                    THEN EXCLUDED.last_event_log_index ELSE v.last_event_log_index END,
        updated_at = now()
)
SELECT (SELECT count(*) FROM dep), (SELECT count(*) FROM red), (SELECT count(*) FROM spc)
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
/// hold the term locks of every term named.
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

impl<'e> VaultRows<'e> {
    pub fn push_deposit(&mut self, chain: &'e ChainPosition<'_>, d: &'e Deposited) {
        let c = &mut self.deposits;
        c.chain.push(chain);
        c.sender.push(d.sender.as_str());
        c.receiver.push(d.receiver.as_str());
        c.term_id.push(d.term_id.as_str());
        c.curve_id.push(d.curve_id.as_str());
        c.assets.push(d.assets.as_str());
        c.assets_after_fees.push(d.assets_after_fees.as_str());
        c.shares.push(d.shares.as_str());
        c.total_shares.push(d.total_shares.as_str());
        c.vault_type.push(d.vault_type.code());
    }

    pub fn push_redeem(&mut self, chain: &'e ChainPosition<'_>, r: &'e Redeemed) {
        let c = &mut self.redeems;
        c.chain.push(chain);
        c.sender.push(r.sender.as_str());
        c.receiver.push(r.receiver.as_str());
        c.term_id.push(r.term_id.as_str());
        c.curve_id.push(r.curve_id.as_str());
        c.shares.push(r.shares.as_str());
        c.total_shares.push(r.total_shares.as_str());
        c.assets.push(r.assets.as_str());
        c.fees.push(r.fees.as_str());
        c.vault_type.push(r.vault_type.code());
    }

    pub fn push_price(&mut self, chain: &'e ChainPosition<'_>, s: &'e SharePriceChanged) {
        let c = &mut self.prices;
        c.chain.push(chain);
        c.term_id.push(s.term_id.as_str());
        c.curve_id.push(s.curve_id.as_str());
        c.share_price.push(s.share_price.as_str());
        c.total_assets.push(s.total_assets.as_str());
        c.total_shares.push(s.total_shares.as_str());
        c.vault_type.push(s.vault_type.code());
    }

    pub fn is_empty(&self) -> bool {
        self.deposits.chain.is_empty()
            && self.redeems.chain.is_empty()
            && self.prices.chain.is_empty()
    }

    /// Returns how many Deposited, Redeemed and SharePriceChanged events
    /// were new.
    pub async fn apply(&self, conn: &mut PgConnection) -> Result<(i64, i64, i64), sqlx::Error> {
        if self.is_empty() {
            return Ok((0, 0, 0));
        }
        let (d, r, p) = (&self.deposits, &self.redeems, &self.prices);
        let q = d
            .chain
            .bind(sqlx::query(APPLY))
            .bind(&d.sender[..])
            .bind(&d.receiver[..])
            .bind(&d.term_id[..])
            .bind(&d.curve_id[..])
            .bind(&d.assets[..])
            .bind(&d.assets_after_fees[..])
            .bind(&d.shares[..])
            .bind(&d.total_shares[..])
            .bind(&d.vault_type[..]);
        let q = r
            .chain
            .bind(q)
            .bind(&r.sender[..])
            .bind(&r.receiver[..])
            .bind(&r.term_id[..])
            .bind(&r.curve_id[..])
            .bind(&r.shares[..])
            .bind(&r.total_shares[..])
            .bind(&r.assets[..])
            .bind(&r.fees[..])
            .bind(&r.vault_type[..]);
        let row = p
            .chain
            .bind(q)
            .bind(&p.term_id[..])
            .bind(&p.curve_id[..])
            .bind(&p.share_price[..])
            .bind(&p.total_assets[..])
            .bind(&p.total_shares[..])
            .bind(&p.vault_type[..])
            .fetch_one(conn)
            .await?;
        use sqlx::Row;
        Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
    }
}
