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
SELECT (SELECT count(*) FROM dep) + (SELECT count(*) FROM red) + (SELECT count(*) FROM spc)
"#;

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

    pub async fn apply(&self, conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
        if self.is_empty() {
            return Ok(0);
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
        sqlx::Row::try_get(&row, 0)
    }
}
