-- Current state, maintained in the same transaction as the events that
-- change it. The last_event_* / share_price_* columns record the chain
-- position (block_number, log_index) of the event a value came from, so an
-- older event arriving late never overwrites a newer value.

CREATE TABLE atom (
    term_id              TEXT COLLATE "C" PRIMARY KEY,
    wallet_id            TEXT COLLATE "C" NOT NULL,
    creator_id           TEXT COLLATE "C" NOT NULL,
    data                 TEXT,
    raw_data             BYTEA,
    -- Filled by the metadata resolver, not by the writer.
    type                 TEXT,
    emoji                TEXT,
    label                TEXT,
    image                TEXT,
    value_id             TEXT,
    resolving_status     TEXT        NOT NULL DEFAULT 'Pending',
    last_event_block     BIGINT      NOT NULL,
    last_event_log_index BIGINT      NOT NULL,
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE triple (
    term_id              TEXT COLLATE "C" PRIMARY KEY,
    creator_id           TEXT COLLATE "C" NOT NULL,
    subject_id           TEXT COLLATE "C" NOT NULL,
    predicate_id         TEXT COLLATE "C" NOT NULL,
    object_id            TEXT COLLATE "C" NOT NULL,
    counter_term_id      TEXT COLLATE "C" NOT NULL,
    last_event_block     BIGINT      NOT NULL,
    last_event_log_index BIGINT      NOT NULL,
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX triple_counter_term_id ON triple (counter_term_id);
CREATE INDEX triple_predicate_object ON triple (predicate_id, object_id);
CREATE INDEX triple_subject_predicate ON triple (subject_id, predicate_id);

CREATE TABLE position (
    account_id                            TEXT COLLATE "C" NOT NULL,
    term_id                               TEXT COLLATE "C" NOT NULL,
    curve_id                              NUMERIC(78, 0) NOT NULL,
    shares                                NUMERIC(78, 0) NOT NULL DEFAULT 0,
    total_deposit_assets_after_total_fees NUMERIC(78, 0) NOT NULL DEFAULT 0,
    total_redeem_assets_for_receiver      NUMERIC(78, 0) NOT NULL DEFAULT 0,
    -- Chain position of the newest Deposited/Redeemed: `shares` is its totalShares.
    last_event_block                      BIGINT         NOT NULL,
    last_event_log_index                  BIGINT         NOT NULL,
    created_at                            TIMESTAMPTZ    NOT NULL DEFAULT now(),
    updated_at                            TIMESTAMPTZ    NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, term_id, curve_id)
);
CREATE INDEX position_vault ON position (term_id, curve_id);

CREATE TABLE vault (
    term_id               TEXT COLLATE "C" NOT NULL,
    curve_id              NUMERIC(78, 0) NOT NULL,
    total_shares          NUMERIC(78, 0) NOT NULL DEFAULT 0,
    current_share_price   NUMERIC(78, 0) NOT NULL DEFAULT 0,
    total_assets          NUMERIC(78, 0) NOT NULL DEFAULT 0,
    market_cap            NUMERIC(78, 0) NOT NULL DEFAULT 0,
    position_count        BIGINT         NOT NULL DEFAULT 0,
    vault_type            TEXT           NOT NULL,
    -- Chain position of the newest SharePriceChanged (NULL before one arrives).
    share_price_block     BIGINT,
    share_price_log_index BIGINT,
    -- Chain position of the newest event naming the vault (gives vault_type).
    last_event_block      BIGINT         NOT NULL,
    last_event_log_index  BIGINT         NOT NULL,
    created_at            TIMESTAMPTZ    NOT NULL DEFAULT now(),
    updated_at            TIMESTAMPTZ    NOT NULL DEFAULT now(),
    PRIMARY KEY (term_id, curve_id)
);

CREATE TABLE term (
    id               TEXT COLLATE "C" PRIMARY KEY,
    type             TEXT           NOT NULL CHECK (type IN ('Atom', 'Triple', 'Unknown')),
    atom_id          TEXT COLLATE "C",
    triple_id        TEXT COLLATE "C",
    total_assets     NUMERIC(78, 0) NOT NULL DEFAULT 0,
    total_market_cap NUMERIC(78, 0) NOT NULL DEFAULT 0,
    created_at       TIMESTAMPTZ    NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ    NOT NULL DEFAULT now()
);
