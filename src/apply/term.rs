//! The `term` table (invariant 4): a row for every atom, triple, counter
//! term and vault term; its type, atom_id and triple_id from what created
//! it; its totals the sums of its vaults'.
//!
//! A batch patches term rows: created atoms and triples set the type (a
//! late creation turns `Unknown` into `Atom` or `Triple`), and the totals
//! move by exactly what the batch moved the term's vaults by (the vault
//! cascade measures it, under the same term locks). Reorgs and backfill
//! recompute rows from the `atom`, `triple` and `vault` tables instead
//! ([`recompute`]), which also removes terms nothing defines any more.
//! Callers hold the term locks of every id they pass (or the exclusive
//! reorg lock).

use sqlx::PgConnection;

use super::column;
use super::vault::TermMove;

/// Term rows from a batch: `$1` id, `$2` what created it in this batch
/// (0 nothing, 1 an atom, 2 a triple: its pro or counter term), `$3` the
/// triple, `$4..$5` change of the vault totals. New rows of vault terms
/// whose creation has not arrived are `Unknown`. Every row is returned with
/// the triple it belongs to (the vault cascade's moves make its analytics
/// dirty); `updated_at` moves only when a value does.
const CASCADE: &str = r#"
INSERT INTO term AS t (id, type, atom_id, triple_id, total_assets, total_market_cap)
SELECT id,
    CASE created WHEN 1 THEN 'Atom' WHEN 2 THEN 'Triple' ELSE 'Unknown' END,
    CASE created WHEN 1 THEN id END,
    CASE created WHEN 2 THEN triple_id END,
    assets_delta, market_cap_delta
FROM unnest($1::text[], $2::int2[], $3::text[], $4::text[]::numeric[], $5::text[]::numeric[])
    AS i(id, created, triple_id, assets_delta, market_cap_delta)
ORDER BY id
ON CONFLICT (id) DO UPDATE SET
    type = CASE WHEN EXCLUDED.type = 'Unknown' THEN t.type ELSE EXCLUDED.type END,
    atom_id = coalesce(EXCLUDED.atom_id, t.atom_id),
    triple_id = coalesce(EXCLUDED.triple_id, t.triple_id),
    total_assets = t.total_assets + EXCLUDED.total_assets,
    total_market_cap = t.total_market_cap + EXCLUDED.total_market_cap,
    updated_at = CASE
        WHEN EXCLUDED.total_assets <> 0 OR EXCLUDED.total_market_cap <> 0
          OR (EXCLUDED.type <> 'Unknown' AND EXCLUDED.type IS DISTINCT FROM t.type)
        THEN now() ELSE t.updated_at END
RETURNING t.triple_id
"#;

/// Recomputes the term rows of `$1` from `atom`, `triple` and `vault`,
/// deleting those nothing defines any more (only a reorg can do that);
/// returns the triples among them (pro or counter).
const RECOMPUTE: &str = concat!(
    r#"
WITH ids AS (
    SELECT DISTINCT id FROM unnest($1::text[]) AS u(id)
),
computed AS (
    SELECT ids.id,
        CASE WHEN a.term_id IS NOT NULL THEN 'Atom'
             WHEN tp.term_id IS NOT NULL OR tc.term_id IS NOT NULL THEN 'Triple'
             ELSE 'Unknown' END AS type,
        a.term_id AS atom_id,
        coalesce(tp.term_id, tc.term_id) AS triple_id,
        coalesce(s.total_assets, 0) AS total_assets,
        coalesce(s.total_market_cap, 0) AS total_market_cap,
        s.vaults
    FROM ids
    LEFT JOIN atom a ON a.term_id = ids.id
    LEFT JOIN triple tp ON tp.term_id = ids.id
    LEFT JOIN triple tc ON tc.counter_term_id = ids.id
    CROSS JOIN LATERAL (
        SELECT sum(v.total_assets) AS total_assets, sum(v.market_cap) AS total_market_cap,
            count(*) AS vaults
        FROM vault v WHERE v.term_id = ids.id
    ) s
),
upserted AS (
    INSERT INTO term AS t (id, type, atom_id, triple_id, total_assets, total_market_cap)
    SELECT id, type, atom_id, triple_id, total_assets, total_market_cap
    FROM computed
    WHERE atom_id IS NOT NULL OR triple_id IS NOT NULL OR vaults > 0
    ORDER BY id
    ON CONFLICT (id) "#,
    update_changed!(t: type, atom_id, triple_id, total_assets, total_market_cap),
    r#"),
removed AS (
    DELETE FROM term t USING computed c
    WHERE t.id = c.id AND c.atom_id IS NULL AND c.triple_id IS NULL AND c.vaults = 0
)
SELECT DISTINCT triple_id FROM computed WHERE triple_id IS NOT NULL
"#
);

/// What a batch created: atoms (their terms), triples (term and counter).
#[derive(Debug, Default)]
pub(crate) struct Created<'b> {
    pub atoms: Vec<&'b str>,
    pub triples: Vec<(&'b str, &'b str)>,
}

/// Patches the term rows of what a batch created and of the terms whose
/// vaults it moved (`moves`, from the vault cascade); returns the triples
/// those terms belong to, repeats included.
pub(crate) async fn cascade(
    conn: &mut PgConnection,
    created: &Created<'_>,
    moves: &[TermMove],
) -> Result<Vec<String>, sqlx::Error> {
    // id, created (0/1/2), triple, Δ assets, Δ market cap
    let mut rows: Vec<(&str, i16, Option<&str>, &str, &str)> = Vec::new();
    rows.extend(created.atoms.iter().map(|a| (*a, 1, None, "0", "0")));
    for (pro, counter) in &created.triples {
        rows.push((pro, 2, Some(*pro), "0", "0"));
        rows.push((counter, 2, Some(*pro), "0", "0"));
    }
    rows.extend(
        moves
            .iter()
            .map(|(term, assets, cap)| (term.as_str(), 0, None, assets.as_str(), cap.as_str())),
    );
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    // One row per term: a creation and a vault move of one term combine.
    rows.sort_unstable_by_key(|r| (r.0, std::cmp::Reverse(r.1)));
    let mut merged: Vec<(&str, i16, Option<&str>, &str, &str)> = Vec::with_capacity(rows.len());
    for row in rows {
        match merged.last_mut() {
            Some(last) if last.0 == row.0 => {
                if row.1 == 0 {
                    // A term has at most one vault move (grouped per term).
                    last.3 = row.3;
                    last.4 = row.4;
                }
            }
            _ => merged.push(row),
        }
    }
    let triples: Vec<Option<String>> = sqlx::query_scalar(CASCADE)
        .bind(column(&merged, |r| r.0))
        .bind(column(&merged, |r| r.1))
        .bind(column(&merged, |r| r.2))
        .bind(column(&merged, |r| r.3))
        .bind(column(&merged, |r| r.4))
        .fetch_all(conn)
        .await?;
    Ok(triples.into_iter().flatten().collect())
}

/// Recomputes the term rows of `ids` (see [`RECOMPUTE`]); returns the
/// triples among them, whose analytics the caller marks dirty.
pub async fn recompute(conn: &mut PgConnection, ids: &[&str]) -> Result<Vec<String>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_scalar(RECOMPUTE)
        .bind(ids)
        .fetch_all(conn)
        .await
}
