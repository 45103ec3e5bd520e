//! Set-based recomputation of the analytics rows of a set of triples.
//!
//! Given triple ids, `triple_vault` and `triple_term` of those triples are
//! recomputed from their vaults (the per-curve rows and their per-triple
//! sums come from the same CTE). The pairs they belong to
//! (`predicate_object`, `subject_predicate`) then move by exactly what the
//! triples' rows moved, in the same statement — the worker's path, whose
//! cost follows the triples changed, not the size of hot pairs. With
//! `prune` (reorgs, backfill) the pairs are recomputed in full instead, and
//! rows whose triple, vault or pair no longer exists are deleted. No
//! per-term query loops.
//!
//! Concurrent recomputations (several workers, backfill, a reorg) are
//! serialised with advisory locks on the pairs of the triples involved
//! (striped, taken sorted): without them, two transactions could each
//! compute a pair total from a snapshot missing the other's triple_term
//! update, or write a triple's rows from an older snapshot after a newer
//! one. A triple is only ever recomputed under the locks of both its pairs,
//! so the pair locks cover the triple's own rows too.

use sqlx::PgConnection;

use crate::apply::triple::RemovedTriple;
use crate::lock::{self, Domain, LockSet};

/// `triple_vault` and `triple_term` of the triples `$1`, recomputed from
/// their vaults (cheap: a triple has few vaults). Continued by [`FULL`] or
/// [`INCREMENTAL`]; `old` is `triple_term` as it was, `term_rows` what
/// changed.
macro_rules! triple_rows {
    () => {
        concat!(r#"
WITH t AS (
    -- One primary-key probe per id (`OFFSET 0` keeps the planner from
    -- turning it into a hash join over the whole table).
    SELECT t.* FROM unnest($1::text[]) AS i(id) CROSS JOIN LATERAL (
        SELECT term_id, counter_term_id, subject_id, predicate_id, object_id
        FROM triple WHERE term_id = i.id
        OFFSET 0
    ) t
),
vaults AS (
    -- The vaults of both sides, found through the primary key with the
    -- whole list at once: as cheap with a million vaults as with a hundred.
    SELECT v.term_id, v.curve_id, v.total_shares, v.total_assets, v.position_count,
        v.market_cap
    FROM vault v
    WHERE v.term_id = ANY(ARRAY(SELECT term_id FROM t UNION ALL SELECT counter_term_id FROM t))
),
per_curve AS (
    SELECT term_id, counter_term_id, curve_id,
        sum(total_shares) AS total_shares, sum(total_assets) AS total_assets,
        sum(position_count)::bigint AS position_count, sum(market_cap) AS market_cap
    FROM (
        SELECT t.term_id, t.counter_term_id, v.curve_id, v.total_shares, v.total_assets,
            v.position_count, v.market_cap
        FROM t JOIN vaults v ON v.term_id = t.term_id
        UNION ALL
        SELECT t.term_id, t.counter_term_id, v.curve_id, v.total_shares, v.total_assets,
            v.position_count, v.market_cap
        FROM t JOIN vaults v ON v.term_id = t.counter_term_id
    ) sides
    GROUP BY term_id, counter_term_id, curve_id
),
vault_rows AS (
    INSERT INTO triple_vault AS tv (term_id, counter_term_id, curve_id, total_shares,
        total_assets, position_count, market_cap)
    SELECT term_id, counter_term_id, curve_id, total_shares, total_assets, position_count,
        market_cap
    FROM per_curve
    ORDER BY term_id, curve_id
    ON CONFLICT (term_id, counter_term_id, curve_id) "#,
    update_changed!(tv: total_shares, total_assets, position_count, market_cap),
    r#"),
per_triple AS (
    SELECT t.term_id, t.counter_term_id,
        coalesce(sum(c.total_assets), 0) AS total_assets,
        coalesce(sum(c.market_cap), 0) AS total_market_cap,
        coalesce(sum(c.position_count), 0)::bigint AS total_position_count
    FROM t LEFT JOIN per_curve c USING (term_id, counter_term_id)
    GROUP BY t.term_id, t.counter_term_id
),
old AS (
    SELECT tt.term_id, tt.total_market_cap, tt.total_position_count
    FROM t CROSS JOIN LATERAL (
        SELECT tt.term_id, tt.total_market_cap, tt.total_position_count FROM triple_term tt
        WHERE tt.term_id = t.term_id AND tt.counter_term_id = t.counter_term_id
        OFFSET 0
    ) tt
),
term_rows AS (
    INSERT INTO triple_term AS tt (term_id, counter_term_id, total_assets, total_market_cap,
        total_position_count)
    SELECT term_id, counter_term_id, total_assets, total_market_cap, total_position_count
    FROM per_triple
    ORDER BY term_id
    ON CONFLICT (term_id, counter_term_id) "#,
    update_changed!(tt: total_assets, total_market_cap, total_position_count),
    r#"    RETURNING tt.term_id, tt.total_market_cap, tt.total_position_count
)
"#)
    };
}

/// `cte AS (…)`: the rows of one pair table (`table`, keyed by the
/// triple columns `a` and `b`) moved by the `deltas` of its triples. The
/// two pair tables differ only in their key.
macro_rules! pair_deltas {
    ($cte:literal, $table:literal, $a:literal, $b:literal) => {
        concat!(
            $cte,
            " AS (
    INSERT INTO ",
            $table,
            " AS x (",
            $a,
            ", ",
            $b,
            ", triple_count,
        total_position_count, total_market_cap)
    SELECT ",
            $a,
            ", ",
            $b,
            ", sum(added)::int8, sum(positions)::int8, sum(market_cap)
    FROM deltas
    GROUP BY ",
            $a,
            ", ",
            $b,
            "
    ORDER BY ",
            $a,
            ", ",
            $b,
            "
    ON CONFLICT (",
            $a,
            ", ",
            $b,
            ") DO UPDATE SET
        triple_count = x.triple_count + EXCLUDED.triple_count,
        total_position_count = x.total_position_count + EXCLUDED.total_position_count,
        total_market_cap = x.total_market_cap + EXCLUDED.total_market_cap,
        updated_at = now()
    WHERE (EXCLUDED.triple_count, EXCLUDED.total_position_count, EXCLUDED.total_market_cap)
        <> (0, 0, 0)
    RETURNING 1
)"
        )
    };
}

/// `cte AS (…)`: the rows of one pair table (`table`, keyed by the triple
/// columns `a` and `b`) for the pairs listed in `pairs`, recomputed in full
/// from the counted triples (those with a `triple_term` row).
macro_rules! pair_totals {
    ($cte:literal, $pairs:literal, $table:literal, $a:literal, $b:literal) => {
        concat!(
            $cte, " AS (
    INSERT INTO ", $table, " AS x (", $a, ", ", $b, ", triple_count,
        total_position_count, total_market_cap)
    SELECT pr.", $a, ", pr.", $b, ", count(*),
        coalesce(sum(tt.total_position_count), 0)::bigint,
        coalesce(sum(tt.total_market_cap), 0)
    FROM ", $pairs, " pr
    JOIN triple t ON t.", $a, " = pr.", $a, " AND t.", $b, " = pr.", $b, "
    JOIN triple_term tt ON tt.term_id = t.term_id AND tt.counter_term_id = t.counter_term_id
    GROUP BY pr.", $a, ", pr.", $b, "
    ORDER BY pr.", $a, ", pr.", $b, "
    ON CONFLICT (", $a, ", ", $b, ") ",
            update_changed!(x: triple_count, total_position_count, total_market_cap),
            "    RETURNING 1
)"
        )
    };
}

/// Triple rows, then nothing more: the pairs are recomputed in full after.
const FULL: &str = concat!(triple_rows!(), "SELECT count(*) FROM term_rows");

/// Triple rows, then the pair rows moved by exactly what the triples'
/// `triple_term` rows moved (a triple's first row adds it to its pairs'
/// `triple_count`): proportional to the triples changed, not to the size of
/// their pairs. Exact because every change of `triple_term` moves its pairs
/// in the same transaction, under the pair locks (or recomputes them in
/// full, [`FULL_PAIRS`]).
const INCREMENTAL: &str = concat!(
    triple_rows!(),
    r#",
deltas AS (
    SELECT t.subject_id, t.predicate_id, t.object_id,
        CASE WHEN o.term_id IS NULL THEN 1 ELSE 0 END::int8 AS added,
        r.total_position_count - coalesce(o.total_position_count, 0) AS positions,
        r.total_market_cap - coalesce(o.total_market_cap, 0) AS market_cap
    FROM term_rows r
    JOIN t ON t.term_id = r.term_id
    LEFT JOIN old o ON o.term_id = r.term_id
),
"#,
    pair_deltas!("po_rows", "predicate_object", "predicate_id", "object_id"),
    ",\n",
    pair_deltas!("sp_rows", "subject_predicate", "subject_id", "predicate_id"),
    r#"
SELECT (SELECT count(*) FROM term_rows), (SELECT count(*) FROM po_rows),
    (SELECT count(*) FROM sp_rows)
"#
);

/// Rows of `$1`'s triples that no longer have a source: a triple removed by
/// a reorg, or a vault that no longer exists. Only reorgs and backfill need
/// this; the normal path only ever adds vaults and triples.
const PRUNE_TRIPLE_ROWS: &str = r#"
WITH stale_vault_rows AS (
    DELETE FROM triple_vault tv
    WHERE tv.term_id = ANY($1::text[])
      AND NOT EXISTS (
          SELECT 1 FROM triple t JOIN vault v
            ON v.term_id IN (t.term_id, t.counter_term_id) AND v.curve_id = tv.curve_id
          WHERE t.term_id = tv.term_id AND t.counter_term_id = tv.counter_term_id)
)
DELETE FROM triple_term tt
WHERE tt.term_id = ANY($1::text[])
  AND NOT EXISTS (SELECT 1 FROM triple t WHERE t.term_id = tt.term_id)
"#;

/// The pair rows of `$1..$4` recomputed in full from the triples that
/// have their `triple_term` row (a triple counts in its pairs from its first
/// analytics pass on, as in [`INCREMENTAL`]).
const FULL_PAIRS: &str = concat!(
    r#"
WITH po_pairs AS (
    SELECT DISTINCT predicate_id, object_id
    FROM unnest($1::text[], $2::text[]) AS u(predicate_id, object_id)
),
sp_pairs AS (
    SELECT DISTINCT subject_id, predicate_id
    FROM unnest($3::text[], $4::text[]) AS u(subject_id, predicate_id)
),
"#,
    pair_totals!(
        "po_rows",
        "po_pairs",
        "predicate_object",
        "predicate_id",
        "object_id"
    ),
    ",\n",
    pair_totals!(
        "sp_rows",
        "sp_pairs",
        "subject_predicate",
        "subject_id",
        "predicate_id"
    ),
    r#"
SELECT (SELECT count(*) FROM po_rows), (SELECT count(*) FROM sp_rows)
"#
);

/// Pair rows no counted triple has any more (after a reorg removed or
/// moved triples).
const PRUNE_PAIR_ROWS: &str = r#"
WITH po_gone AS (
    DELETE FROM predicate_object x
    USING unnest($1::text[], $2::text[]) AS pr(p, o)
    WHERE x.predicate_id = pr.p AND x.object_id = pr.o
      AND NOT EXISTS (SELECT 1 FROM triple t JOIN triple_term tt USING (term_id, counter_term_id)
                      WHERE t.predicate_id = pr.p AND t.object_id = pr.o)
)
DELETE FROM subject_predicate x
USING unnest($3::text[], $4::text[]) AS pr(s, p)
WHERE x.subject_id = pr.s AND x.predicate_id = pr.p
  AND NOT EXISTS (SELECT 1 FROM triple t JOIN triple_term tt USING (term_id, counter_term_id)
                  WHERE t.subject_id = pr.s AND t.predicate_id = pr.p)
"#;

/// Recomputes the analytics rows of `triple_ids` (pro term ids), and of the
/// pairs of `removed` triples (which no longer exist); `prune` also deletes
/// rows left without a source. Runs inside the caller's transaction; takes
/// the analytics locks it needs.
pub async fn recompute(
    conn: &mut PgConnection,
    schema: &str,
    triple_ids: &[&str],
    removed: &[RemovedTriple],
    prune: bool,
) -> Result<(), sqlx::Error> {
    if triple_ids.is_empty() && removed.is_empty() {
        return Ok(());
    }
    let mut ids: Vec<&str> = triple_ids.to_vec();
    ids.extend(removed.iter().map(|r| r.0.as_str()));
    ids.sort_unstable();
    ids.dedup();
    let spo = lock_pairs(&mut *conn, schema, &ids, removed).await?;

    if !prune {
        sqlx::query(INCREMENTAL)
            .bind(&ids)
            .execute(&mut *conn)
            .await?;
        return Ok(());
    }
    sqlx::query(FULL).bind(&ids).execute(&mut *conn).await?;
    sqlx::query(PRUNE_TRIPLE_ROWS)
        .bind(&ids)
        .execute(&mut *conn)
        .await?;
    let subjects: Vec<&str> = spo.iter().map(|t| t.0.as_str()).collect();
    let predicates: Vec<&str> = spo.iter().map(|t| t.1.as_str()).collect();
    let objects: Vec<&str> = spo.iter().map(|t| t.2.as_str()).collect();
    for pairs in [FULL_PAIRS, PRUNE_PAIR_ROWS] {
        sqlx::query(pairs)
            .bind(&predicates)
            .bind(&objects)
            .bind(&subjects)
            .bind(&predicates)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Takes the analytics locks of the triples `ids` (pair locks, see the
/// module doc), in the caller's transaction, and returns nothing: for a
/// caller that must wait for any recomputation of these triples in flight
/// before it reads their dirty marks (`analytics::refresh`). Taking them
/// again later in the same transaction does not wait.
pub async fn lock(conn: &mut PgConnection, schema: &str, ids: &[&str]) -> Result<(), sqlx::Error> {
    lock_pairs(conn, schema, ids, &[]).await.map(drop)
}

/// Takes the pair locks of the existing triples among `ids` and of
/// `removed`; returns their subjects, predicates and objects.
async fn lock_pairs(
    conn: &mut PgConnection,
    schema: &str,
    ids: &[&str],
    removed: &[RemovedTriple],
) -> Result<Vec<(String, String, String)>, sqlx::Error> {
    // Subject, predicate, object of the triples that exist.
    let mut spo: Vec<(String, String, String)> = sqlx::query_as(
        r#"SELECT t.subject_id, t.predicate_id, t.object_id
           FROM unnest($1::text[]) AS i(id) CROSS JOIN LATERAL (
               SELECT subject_id, predicate_id, object_id FROM triple
               WHERE term_id = i.id OFFSET 0) t"#,
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    spo.extend(
        removed
            .iter()
            .map(|r| (r.2.clone(), r.3.clone(), r.4.clone())),
    );
    let mut locks = LockSet::default();
    locks.add_stripes(
        schema,
        Domain::PredicateObject,
        spo.iter()
            .map(|(_, p, o)| lock::stripe(&[p, ":", o], lock::PAIR_STRIPES)),
    );
    locks.add_stripes(
        schema,
        Domain::SubjectPredicate,
        spo.iter()
            .map(|(s, p, _)| lock::stripe(&[s, ":", p], lock::PAIR_STRIPES)),
    );
    locks.take(&mut *conn).await?;
    Ok(spo)
}
