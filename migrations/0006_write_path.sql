-- The write path: less work per event for Postgres (issue 15).

-- Room on every page of the tables a batch updates in place, so that an
-- update can stay on its page as a heap-only tuple (HOT): no new index
-- entries, less WAL. These rows are updated far more often than inserted
-- (a vault by most events that name it, a term by every price of its
-- vaults). Takes effect for pages written from now on.
DO $$
DECLARE
    t TEXT;
BEGIN
    FOREACH t IN ARRAY ARRAY['position', 'vault', 'term', 'triple_vault', 'triple_term',
        'predicate_object', 'subject_predicate', 'analytics_dirty']
    LOOP
        EXECUTE format('ALTER TABLE %I SET (fillfactor = 80)', t);
    END LOOP;
END $$;

-- Every event row goes into its table's indexes; besides the primary key
-- they serve only rebuilds (reorgs, replaced events, backfill), which look
-- events up by term. Hash indexes on the term: a fraction of the size of
-- the B-trees on text keys they replace, so cheaper to maintain on every
-- insert. Same for the positions, looked up by vault only when one is
-- rebuilt.
DROP INDEX atom_created_events_term_id, triple_created_events_term_id, deposited_events_vault,
    redeemed_events_vault, share_price_changed_events_vault, position_vault;
DO $$
DECLARE
    t TEXT;
BEGIN
    FOREACH t IN ARRAY ARRAY['atom_created_events', 'triple_created_events', 'deposited_events',
        'redeemed_events', 'share_price_changed_events', 'position']
    LOOP
        EXECUTE format('CREATE INDEX %I ON %I USING hash (term_id)', t || '_term_id', t);
    END LOOP;
END $$;
