-- The immutable event log: one table per MultiVault event, plus
-- generic_events for everything else. An event is identified by
-- (transaction_hash, log_index); inserts use ON CONFLICT DO NOTHING so a
-- redelivered event changes nothing.
--
-- Every table is created in the schema named by DATABASE_SCHEMA: the writer
-- sets search_path on each connection, so no name here is schema-qualified.
--
-- Ids, hashes and addresses are hex text with COLLATE "C": byte order is the
-- natural order of hex, comparisons are plain memcmp (much cheaper than a
-- linguistic collation in every index probe), and every id column shares one
-- collation so joins between them can always use the indexes.

CREATE TABLE atom_created_events (
    transaction_hash  TEXT COLLATE "C" NOT NULL,
    log_index         BIGINT      NOT NULL,
    block_number      BIGINT      NOT NULL,
    block_hash        TEXT COLLATE "C" NOT NULL,
    block_timestamp   BIGINT,
    transaction_index BIGINT      NOT NULL,
    address           TEXT COLLATE "C" NOT NULL,
    network           TEXT        NOT NULL,
    creator           TEXT COLLATE "C" NOT NULL,
    term_id           TEXT COLLATE "C" NOT NULL,
    atom_data         TEXT,
    raw_data          BYTEA,
    atom_wallet       TEXT COLLATE "C" NOT NULL,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (transaction_hash, log_index)
);
CREATE INDEX atom_created_events_term_id ON atom_created_events (term_id);

CREATE TABLE triple_created_events (
    transaction_hash  TEXT COLLATE "C" NOT NULL,
    log_index         BIGINT      NOT NULL,
    block_number      BIGINT      NOT NULL,
    block_hash        TEXT COLLATE "C" NOT NULL,
    block_timestamp   BIGINT,
    transaction_index BIGINT      NOT NULL,
    address           TEXT COLLATE "C" NOT NULL,
    network           TEXT        NOT NULL,
    creator           TEXT COLLATE "C" NOT NULL,
    term_id           TEXT COLLATE "C" NOT NULL,
    subject_id        TEXT COLLATE "C" NOT NULL,
    predicate_id      TEXT COLLATE "C" NOT NULL,
    object_id         TEXT COLLATE "C" NOT NULL,
    counter_term_id   TEXT COLLATE "C" NOT NULL,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (transaction_hash, log_index)
);
CREATE INDEX triple_created_events_term_id ON triple_created_events (term_id);

CREATE TABLE deposited_events (
    transaction_hash  TEXT COLLATE "C" NOT NULL,
    log_index         BIGINT         NOT NULL,
    block_number      BIGINT         NOT NULL,
    block_hash        TEXT COLLATE "C" NOT NULL,
    block_timestamp   BIGINT,
    transaction_index BIGINT         NOT NULL,
    address           TEXT COLLATE "C" NOT NULL,
    network           TEXT           NOT NULL,
    sender            TEXT COLLATE "C" NOT NULL,
    receiver          TEXT COLLATE "C" NOT NULL,
    term_id           TEXT COLLATE "C" NOT NULL,
    curve_id          NUMERIC(78, 0) NOT NULL,
    assets            NUMERIC(78, 0) NOT NULL,
    assets_after_fees NUMERIC(78, 0) NOT NULL,
    shares            NUMERIC(78, 0) NOT NULL,
    total_shares      NUMERIC(78, 0) NOT NULL,
    vault_type        SMALLINT       NOT NULL,
    created_at        TIMESTAMPTZ    NOT NULL DEFAULT now(),
    PRIMARY KEY (transaction_hash, log_index)
);
-- Recomputing a vault's positions after a reorg reads its events by vault.
CREATE INDEX deposited_events_vault ON deposited_events (term_id, curve_id);

CREATE TABLE redeemed_events (
    transaction_hash  TEXT COLLATE "C" NOT NULL,
    log_index         BIGINT         NOT NULL,
    block_number      BIGINT         NOT NULL,
    block_hash        TEXT COLLATE "C" NOT NULL,
    block_timestamp   BIGINT,
    transaction_index BIGINT         NOT NULL,
    address           TEXT COLLATE "C" NOT NULL,
    network           TEXT           NOT NULL,
    sender            TEXT COLLATE "C" NOT NULL,
    receiver          TEXT COLLATE "C" NOT NULL,
    term_id           TEXT COLLATE "C" NOT NULL,
    curve_id          NUMERIC(78, 0) NOT NULL,
    shares            NUMERIC(78, 0) NOT NULL,
    total_shares      NUMERIC(78, 0) NOT NULL,
    assets            NUMERIC(78, 0) NOT NULL,
    fees              NUMERIC(78, 0) NOT NULL,
    vault_type        SMALLINT       NOT NULL,
    created_at        TIMESTAMPTZ    NOT NULL DEFAULT now(),
    PRIMARY KEY (transaction_hash, log_index)
);
CREATE INDEX redeemed_events_vault ON redeemed_events (term_id, curve_id);

CREATE TABLE share_price_changed_events (
    transaction_hash  TEXT COLLATE "C" NOT NULL,
    log_index         BIGINT         NOT NULL,
    block_number      BIGINT         NOT NULL,
    block_hash        TEXT COLLATE "C" NOT NULL,
    block_timestamp   BIGINT,
    transaction_index BIGINT         NOT NULL,
    address           TEXT COLLATE "C" NOT NULL,
    network           TEXT           NOT NULL,
    term_id           TEXT COLLATE "C" NOT NULL,
    curve_id          NUMERIC(78, 0) NOT NULL,
    share_price       NUMERIC(78, 0) NOT NULL,
    total_assets      NUMERIC(78, 0) NOT NULL,
    total_shares      NUMERIC(78, 0) NOT NULL,
    vault_type        SMALLINT       NOT NULL,
    created_at        TIMESTAMPTZ    NOT NULL DEFAULT now(),
    PRIMARY KEY (transaction_hash, log_index)
);
CREATE INDEX share_price_changed_events_vault ON share_price_changed_events (term_id, curve_id);

CREATE TABLE generic_events (
    transaction_hash     TEXT COLLATE "C" NOT NULL,
    log_index            BIGINT      NOT NULL,
    block_number         BIGINT      NOT NULL,
    block_hash           TEXT COLLATE "C" NOT NULL,
    block_timestamp      BIGINT,
    transaction_index    BIGINT      NOT NULL,
    address              TEXT COLLATE "C" NOT NULL,
    network              TEXT        NOT NULL,
    event_name           TEXT        NOT NULL,
    event_signature_hash TEXT,
    event_data           JSONB       NOT NULL,
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (transaction_hash, log_index)
);
