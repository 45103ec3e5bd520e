-- Operational tables: dead letters, reorg notices and the events they
-- removed, backfill progress.

CREATE TABLE dead_letter (
    id             BIGSERIAL PRIMARY KEY,
    stream         TEXT        NOT NULL,
    entry_id       TEXT        NOT NULL,
    -- Which entry field held the payload (payload, data or event_data);
    -- NULL when the entry had none and `payload` holds all its fields.
    payload_field  TEXT,
    payload        BYTEA       NOT NULL,
    error          TEXT        NOT NULL,
    delivery_count INTEGER     NOT NULL,
    first_seen     TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen      TIMESTAMPTZ NOT NULL DEFAULT now(),
    replayed_at    TIMESTAMPTZ,
    replay_error   TEXT,
    UNIQUE (stream, entry_id)
);
-- /health and /metrics count unresolved and recent dead letters every few
-- seconds; these keep the counts cheap however large the table grows.
CREATE INDEX dead_letter_unresolved ON dead_letter (id) WHERE replayed_at IS NULL;
CREATE INDEX dead_letter_last_seen ON dead_letter (last_seen);

CREATE TABLE reorg_notices (
    id                 BIGSERIAL PRIMARY KEY,
    -- SHA-256 of network, fork block and sorted hashes: a redelivered notice
    -- is recognised and not applied twice.
    notice_key         TEXT        NOT NULL UNIQUE,
    network            TEXT        NOT NULL,
    fork_block         BIGINT      NOT NULL,
    depth              BIGINT,
    affected_tx_hashes TEXT[]      NOT NULL,
    notice             JSONB       NOT NULL,
    removed_events     BIGINT      NOT NULL DEFAULT 0,
    received_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Events removed by a reorg. An event redelivered later with the same
-- (transaction_hash, log_index, block_hash) belongs to the abandoned fork and
-- is not inserted again; the re-published event of the new chain has another
-- block_hash and applies normally.
CREATE TABLE reorged_events (
    transaction_hash TEXT COLLATE "C" NOT NULL,
    log_index        BIGINT      NOT NULL,
    block_hash       TEXT COLLATE "C" NOT NULL,
    network          TEXT        NOT NULL,
    block_number     BIGINT      NOT NULL,
    event_table      TEXT        NOT NULL,
    reorg_id         BIGINT      NOT NULL REFERENCES reorg_notices (id),
    removed_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (transaction_hash, log_index, block_hash)
);
-- A later notice supersedes the tombstones in its range (ADR 0004).
CREATE INDEX reorged_events_range ON reorged_events (network, block_number);

CREATE TABLE backfill_progress (
    from_term    TEXT COLLATE "C" PRIMARY KEY,
    last_term    TEXT COLLATE "C",
    terms_done   BIGINT      NOT NULL DEFAULT 0,
    started_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at  TIMESTAMPTZ
);
