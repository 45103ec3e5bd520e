-- The write path: less work per event for Postgres (issue 15).

-- Room on every page of the tables a batch updates in place, so that an
-- update can stay on its page as a heap-only tuple (HOT): no new index
-- entries, less WAL. These rows are updated far more often than inserted
-- (a vault by most events that name it, a term by every price of its
-- vaults). Takes effect for pages written from now on.
ALTER TABLE position SET (fillfactor = 80);
ALTER TABLE vault SET (fillfactor = 80);
ALTER TABLE term SET (fillfactor = 80);
ALTER TABLE triple_vault SET (fillfactor = 80);
ALTER TABLE triple_term SET (fillfactor = 80);
ALTER TABLE predicate_object SET (fillfactor = 80);
ALTER TABLE subject_predicate SET (fillfactor = 80);
ALTER TABLE analytics_dirty SET (fillfactor = 80);

-- Every event row goes into its table's indexes; besides the primary key
-- they serve only rebuilds (reorgs, replaced events, backfill), which look
-- events up by term. Hash indexes on the term: a fraction of the size of
-- the B-trees on text keys they replace, so cheaper to maintain on every
-- insert. Same for the positions, looked up by vault only when one is
-- rebuilt.
DROP INDEX atom_created_events_term_id;
CREATE INDEX atom_created_events_term_id ON atom_created_events USING hash (term_id);
DROP INDEX triple_created_events_term_id;
CREATE INDEX triple_created_events_term_id ON triple_created_events USING hash (term_id);
DROP INDEX deposited_events_vault;
CREATE INDEX deposited_events_term_id ON deposited_events USING hash (term_id);
DROP INDEX redeemed_events_vault;
CREATE INDEX redeemed_events_term_id ON redeemed_events USING hash (term_id);
DROP INDEX share_price_changed_events_vault;
CREATE INDEX share_price_changed_events_term_id ON share_price_changed_events USING hash (term_id);
DROP INDEX position_vault;
CREATE INDEX position_term_id ON position USING hash (term_id);
