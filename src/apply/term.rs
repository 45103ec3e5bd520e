//! `term` rows recomputed from the rows that define them, and the analytics
//! dirty marks of the triples a batch changed.
//!
//! A term's type, atom_id and triple_id follow from the `atom` and `triple`
//! tables; its totals are sums over its vaults. Recomputing these (instead of
//! patching them event by event) makes the statement idempotent and
//! independent of arrival order, and lets reorg handling and backfill reuse
//! it unchanged. A batch passes only the terms whose row can have changed
//! (created atoms and triples, vaults created, share prices) and, for dirty
//! marks, the terms whose vaults moved. Callers hold the term locks of every
//! id they pass (or the exclusive reorg lock).

use sqlx::PgConnection;

const REFRESH: &str = r#"
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
    ON CONFLICT (id) DO UPDATE SET
        type = EXCLUDED.type,
        atom_id = EXCLUDED.atom_id,
        triple_id = EXCLUDED.triple_id,
        total_assets = EXCLUDED.total_assets,
        total_market_cap = EXCLUDED.total_market_cap,
        updated_at = now()
    WHERE (t.type, t.atom_id, t.triple_id, t.total_assets, t.total_market_cap)
        IS DISTINCT FROM (EXCLUDED.type, EXCLUDED.atom_id, EXCLUDED.triple_id,
                          EXCLUDED.total_assets, EXCLUDED.total_market_cap)
),
removed AS (
    -- Only after a reorg can a term lose everything that defined it.
    DELETE FROM term t USING computed c
    WHERE t.id = c.id AND c.atom_id IS NULL AND c.triple_id IS NULL AND c.vaults = 0
),
marked AS (
    SELECT triple_id AS id FROM computed WHERE triple_id IS NOT NULL
    UNION SELECT t.term_id FROM triple t WHERE t.term_id = ANY($2::text[])
    UNION SELECT t.term_id FROM triple t WHERE t.counter_term_id = ANY($2::text[])
),
dirty AS (
    -- A new version on every mark tells the worker the triple changed again
    -- (ADR 0002). Sorted, so concurrent batches lock dirty rows in one order.
    INSERT INTO analytics_dirty AS d (term_id)
    SELECT id FROM marked
    ORDER BY id
    ON CONFLICT (term_id) DO UPDATE
        SET version = nextval('analytics_dirty_version'), marked_at = now()
    RETURNING d.term_id
)
SELECT term_id FROM dirty
"#;

/// Recomputes the term rows of `ids` and marks dirty, for the analytics
/// worker, the triples among them plus the triples one of whose terms (pro
/// or counter) is in `moved_terms` (terms whose vaults changed). Which
/// triple a vault belongs to follows from the ids, as invariant 6 defines
/// it, never from an event's `vaultType`. Returns the triples marked.
pub async fn refresh(
    conn: &mut PgConnection,
    ids: &[&str],
    moved_terms: &[&str],
) -> Result<Vec<String>, sqlx::Error> {
    if ids.is_empty() && moved_terms.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_scalar(REFRESH)
        .bind(ids)
        .bind(moved_terms)
        .fetch_all(conn)
        .await
}
