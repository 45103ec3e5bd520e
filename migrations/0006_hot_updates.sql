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
