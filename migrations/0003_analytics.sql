-- Analytics: eventually consistent aggregates over triples, recomputed by
-- the analytics worker from vault, triple and triple_term.

CREATE TABLE triple_vault (
    term_id         TEXT COLLATE "C" NOT NULL,
    counter_term_id TEXT COLLATE "C" NOT NULL,
    curve_id        NUMERIC(78, 0) NOT NULL,
    total_shares    NUMERIC(78, 0) NOT NULL,
    total_assets    NUMERIC(78, 0) NOT NULL,
    position_count  BIGINT         NOT NULL,
    market_cap      NUMERIC(78, 0) NOT NULL,
    updated_at      TIMESTAMPTZ    NOT NULL DEFAULT now(),
    PRIMARY KEY (term_id, counter_term_id, curve_id)
);

CREATE TABLE triple_term (
    term_id              TEXT COLLATE "C" NOT NULL,
    counter_term_id      TEXT COLLATE "C" NOT NULL,
    total_assets         NUMERIC(78, 0) NOT NULL,
    total_market_cap     NUMERIC(78, 0) NOT NULL,
    total_position_count BIGINT         NOT NULL,
    updated_at           TIMESTAMPTZ    NOT NULL DEFAULT now(),
    PRIMARY KEY (term_id, counter_term_id)
);

CREATE TABLE predicate_object (
    predicate_id         TEXT COLLATE "C" NOT NULL,
    object_id            TEXT COLLATE "C" NOT NULL,
    triple_count         BIGINT         NOT NULL,
    total_position_count BIGINT         NOT NULL,
    total_market_cap     NUMERIC(78, 0) NOT NULL,
    updated_at           TIMESTAMPTZ    NOT NULL DEFAULT now(),
    PRIMARY KEY (predicate_id, object_id)
);

CREATE TABLE subject_predicate (
    subject_id           TEXT COLLATE "C" NOT NULL,
    predicate_id         TEXT COLLATE "C" NOT NULL,
    triple_count         BIGINT         NOT NULL,
    total_position_count BIGINT         NOT NULL,
    total_market_cap     NUMERIC(78, 0) NOT NULL,
    updated_at           TIMESTAMPTZ    NOT NULL DEFAULT now(),
    PRIMARY KEY (subject_id, predicate_id)
);

-- Triples whose analytics must be recomputed. Marked in the same
-- transaction as the cascade that changed them; deleted by the worker in
-- the same transaction as the recomputation, and only if `version` is still
-- the one it read (a newer mark means newer changes). The durable half of
-- the analytics channel (ADR 0002).
CREATE SEQUENCE analytics_dirty_version;
CREATE TABLE analytics_dirty (
    term_id   TEXT COLLATE "C" PRIMARY KEY,
    version   BIGINT      NOT NULL DEFAULT nextval('analytics_dirty_version'),
    marked_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The last term the analytics worker finished.
CREATE TABLE analytics_checkpoint (
    id               SMALLINT PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    last_term_id     TEXT COLLATE "C",
    terms_processed  BIGINT      NOT NULL DEFAULT 0,
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
INSERT INTO analytics_checkpoint (id) VALUES (1);
