-- A dirty mark keeps when its triple first became dirty (issue 15, ADR 0013).
--
-- `marked_at` moved to the latest mark on every re-mark; no one read it.
-- Kept from the first mark instead, it tells how long a triple has waited
-- for its recomputation: a catch-up pass leaves marks younger than half the
-- catch-up delay to a later pass, so that several writer processes, whose
-- workers each gather the same hot triples, recompute each of them about
-- once per delay between them rather than once per delay each.
ALTER TABLE analytics_dirty RENAME COLUMN marked_at TO dirty_since;
