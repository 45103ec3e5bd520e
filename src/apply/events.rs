//! The event log: one table per event kind, written set-based, one statement
//! per table per batch, guarded by stream position (ADR 0009).
//!
//! Each kind declares its columns once, in [`Logged::columns`]: name, SQL
//! type and values side by side. The statements are rendered from that list
//! the first time a kind is written, so the guard below exists once for all
//! six tables:
//!
//! - **orphaned** — a recorded reorg notice on the event's stream comes after
//!   the entry that delivered it and covers its block: the event belongs to
//!   an abandoned fork and is not stored (it was, or will be, removed by the
//!   notice);
//! - **new** — inserted (`ON CONFLICT DO NOTHING`): it cascades;
//! - **conflict** — the row exists. A later delivery on the same stream takes
//!   the row over: with the same block hash only its source moves forward (a
//!   notice between the two deliveries must not remove it); with another
//!   block hash the stored event belonged to an abandoned fork whose notice
//!   has not been handled yet, so it is replaced and what both fed is rebuilt.
//!   An earlier or equal delivery, or one from another stream, changes
//!   nothing.

use std::sync::OnceLock;

use sqlx::postgres::PgArguments;
use sqlx::{Arguments, Encode, PgConnection, Postgres, Row, Type};

use super::rebuild::Feed;
use super::source::EntryId;
use crate::event::{
    AtomCreated, ChainPosition, Deposited, Generic, Redeemed, SharePriceChanged, TripleCreated,
};

/// One event of a batch, with the stream (by id) and entry it came from.
#[derive(Debug)]
pub(crate) struct Item<'b, E> {
    pub stream: i32,
    pub entry: EntryId,
    pub chain: &'b ChainPosition<'b>,
    pub event: &'b E,
}

// By hand: derived impls would require `E: Copy`.
impl<E> Clone for Item<'_, E> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<E> Copy for Item<'_, E> {}

/// An event kind and its table.
pub(crate) trait Logged: Sized {
    const TABLE: &'static EventTable;
    /// Appends this kind's own columns (after the shared ones) for `items`.
    fn columns(rows: &mut Rows, items: &[Item<'_, Self>]);
    /// What a stored event of this kind feeds (rebuilt if it is replaced).
    fn feed(&self) -> Feed;
}

/// One event table and its statements.
#[derive(Debug)]
pub(crate) struct EventTable {
    pub name: &'static str,
    /// SQL over a row `t`: the term, counter term, account and curve (text)
    /// it feeds, as [`Feed`] reads them.
    feeds: &'static str,
    statements: OnceLock<Statements>,
}

#[derive(Debug)]
struct Statements {
    /// The columns the statements were rendered for (checked in debug builds).
    columns: Vec<(&'static str, &'static str)>,
    insert: String,
    resolve: String,
}

impl EventTable {
    const fn new(name: &'static str, feeds: &'static str) -> EventTable {
        EventTable {
            name,
            feeds,
            statements: OnceLock::new(),
        }
    }

    fn statements(&self, columns: &[(&'static str, &'static str)]) -> &Statements {
        let s = self.statements.get_or_init(|| self.render(columns));
        debug_assert_eq!(s.columns, columns, "{}: columns changed", self.name);
        s
    }

    fn render(&self, columns: &[(&'static str, &'static str)]) -> Statements {
        let table = self.name;
        let params: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(i, (_, ty))| format!("${}::{ty}", i + 1))
            .collect();
        let params = params.join(", ");
        let names: Vec<&str> = columns.iter().map(|(n, _)| *n).collect();
        let names = names.join(", ");
        let feeds = self.feeds;
        let covered = covers("e");
        // Ordinals of the events not inserted, and whether they were live:
        // in the common case (all new) nothing comes back. `orphaned` is
        // usually empty; `NOT IN` over it is a hashed lookup per row.
        let insert = format!(
            "WITH e AS (
    SELECT * FROM unnest({params}) WITH ORDINALITY AS e({names}, ord)
),
orphaned AS (
    SELECT e.ord FROM e WHERE EXISTS (SELECT 1 FROM reorg_notices n WHERE {covered})
),
ins AS (
    INSERT INTO {table} ({names})
    SELECT {names} FROM e WHERE e.ord NOT IN (SELECT ord FROM orphaned)
    ON CONFLICT (transaction_hash, log_index) DO NOTHING
    RETURNING transaction_hash, log_index
)
SELECT e.ord, e.ord NOT IN (SELECT ord FROM orphaned) AS live
FROM e
WHERE NOT EXISTS (SELECT 1 FROM ins
                  WHERE ins.transaction_hash = e.transaction_hash AND ins.log_index = e.log_index)"
        );
        // For live events whose row exists: a later delivery on the same
        // stream takes the row over (see the module doc).
        let resolve = format!(
            "WITH e AS (
    SELECT * FROM unnest({params}) WITH ORDINALITY AS e({names}, ord)
),
moved AS (
    UPDATE {table} t SET source_entry_ms = e.source_entry_ms, source_entry_seq = e.source_entry_seq
    FROM e
    WHERE t.transaction_hash = e.transaction_hash AND t.log_index = e.log_index
      AND t.source_stream = e.source_stream AND t.block_hash = e.block_hash
      AND (t.source_entry_ms, t.source_entry_seq) < (e.source_entry_ms, e.source_entry_seq)
),
replaced AS (
    DELETE FROM {table} t USING e
    WHERE t.transaction_hash = e.transaction_hash AND t.log_index = e.log_index
      AND t.source_stream = e.source_stream AND t.block_hash <> e.block_hash
      AND (t.source_entry_ms, t.source_entry_seq) < (e.source_entry_ms, e.source_entry_seq)
    RETURNING e.ord, {feeds}
)
SELECT * FROM replaced"
        );
        Statements {
            columns: columns.to_vec(),
            insert,
            resolve,
        }
    }
}

/// SQL: the recorded notice `n` covers the event `{event}` (a row with the
/// event tables' columns): the notice came on the stream that delivered the
/// event, after its entry, and its fork block is at or below the event's
/// block on its network (SPEC §1 "Reorgs"). An event a notice covers is
/// orphaned: it is not stored if it arrives late, and removed if it is
/// stored when the notice is applied.
fn covers(event: &str) -> String {
    format!(
        "n.stream_id = {event}.source_stream AND n.network = {event}.network
          AND n.fork_block <= {event}.block_number
          AND (n.entry_ms, n.entry_seq) > ({event}.source_entry_ms, {event}.source_entry_seq)"
    )
}

pub(crate) static ATOM_CREATED: EventTable =
    EventTable::new("atom_created_events", "t.term_id, NULL, NULL, NULL");
pub(crate) static TRIPLE_CREATED: EventTable = EventTable::new(
    "triple_created_events",
    "t.term_id, t.counter_term_id, NULL, NULL",
);
pub(crate) static DEPOSITED: EventTable = EventTable::new(
    "deposited_events",
    "t.term_id, NULL, t.receiver, t.curve_id::text",
);
pub(crate) static REDEEMED: EventTable = EventTable::new(
    "redeemed_events",
    "t.term_id, NULL, t.receiver, t.curve_id::text",
);
pub(crate) static SHARE_PRICE_CHANGED: EventTable = EventTable::new(
    "share_price_changed_events",
    "t.term_id, NULL, NULL, t.curve_id::text",
);
pub(crate) static GENERIC: EventTable = EventTable::new("generic_events", "NULL, NULL, NULL, NULL");

/// Every event table, for statements that span them all.
pub(crate) const TABLES: [&EventTable; 6] = [
    &ATOM_CREATED,
    &TRIPLE_CREATED,
    &DEPOSITED,
    &REDEEMED,
    &SHARE_PRICE_CHANGED,
    &GENERIC,
];

/// The column arrays of one statement, bound as they are declared.
#[derive(Default)]
pub(crate) struct Rows {
    columns: Vec<(&'static str, &'static str)>,
    args: PgArguments,
    error: Option<sqlx::error::BoxDynError>,
}

impl Rows {
    fn add<'t, T>(&mut self, name: &'static str, ty: &'static str, values: T)
    where
        T: Encode<'t, Postgres> + Type<Postgres>,
    {
        if let Err(e) = self.args.add(values) {
            self.error.get_or_insert(e);
        }
        self.columns.push((name, ty));
    }

    pub fn text<'v>(&mut self, name: &'static str, values: impl Iterator<Item = &'v str>) {
        self.add(name, "text[]", values.collect::<Vec<_>>());
    }

    pub fn opt_text<'v>(
        &mut self,
        name: &'static str,
        values: impl Iterator<Item = Option<&'v str>>,
    ) {
        self.add(name, "text[]", values.collect::<Vec<_>>());
    }

    /// uint256 values (canonical decimal), stored as NUMERIC(78,0).
    pub fn numeric<'v>(&mut self, name: &'static str, values: impl Iterator<Item = &'v str>) {
        self.add(name, "text[]::numeric[]", values.collect::<Vec<_>>());
    }

    pub fn int8(&mut self, name: &'static str, values: impl Iterator<Item = i64>) {
        self.add(name, "int8[]", values.collect::<Vec<_>>());
    }

    pub fn opt_int8(&mut self, name: &'static str, values: impl Iterator<Item = Option<i64>>) {
        self.add(name, "int8[]", values.collect::<Vec<_>>());
    }

    pub fn int2(&mut self, name: &'static str, values: impl Iterator<Item = i16>) {
        self.add(name, "int2[]", values.collect::<Vec<_>>());
    }

    pub fn int4(&mut self, name: &'static str, values: impl Iterator<Item = i32>) {
        self.add(name, "int4[]", values.collect::<Vec<_>>());
    }

    pub fn opt_bytea<'v>(
        &mut self,
        name: &'static str,
        values: impl Iterator<Item = Option<&'v [u8]>>,
    ) {
        self.add(name, "bytea[]", values.collect::<Vec<_>>());
    }

    pub fn jsonb<'v>(&mut self, name: &'static str, values: impl Iterator<Item = &'v str>) {
        self.add(name, "text[]::jsonb[]", values.collect::<Vec<_>>());
    }

    /// The source and chain columns every event table has, then the kind's own.
    fn of<E: Logged>(items: &[Item<'_, E>]) -> Rows {
        let mut rows = Rows::default();
        rows.int4("source_stream", items.iter().map(|i| i.stream));
        rows.int8("source_entry_ms", items.iter().map(|i| i.entry.ms));
        rows.int8("source_entry_seq", items.iter().map(|i| i.entry.seq));
        let chain = || items.iter().map(|i| i.chain);
        rows.text(
            "transaction_hash",
            chain().map(|c| c.transaction_hash.as_str()),
        );
        rows.int8("log_index", chain().map(|c| c.log_index));
        rows.int8("block_number", chain().map(|c| c.block_number));
        rows.text("block_hash", chain().map(|c| c.block_hash.as_str()));
        rows.opt_int8("block_timestamp", chain().map(|c| c.block_timestamp));
        rows.int8("transaction_index", chain().map(|c| c.transaction_index));
        rows.text("address", chain().map(|c| c.address.as_str()));
        rows.text("network", chain().map(|c| c.network.as_ref()));
        E::columns(&mut rows, items);
        rows
    }

    fn into_args(self) -> Result<PgArguments, sqlx::Error> {
        match self.error {
            Some(e) => Err(sqlx::Error::Encode(e)),
            None => Ok(self.args),
        }
    }
}

/// What writing one kind's events found.
#[derive(Debug, Default)]
pub(crate) struct Written {
    /// Indexes (into the items) of the events inserted for the first time:
    /// these cascade.
    pub new: Vec<usize>,
    /// Events of an abandoned fork, not stored.
    pub orphaned: u64,
    /// Events that replaced a stored event of an abandoned fork: what the
    /// old and the new event feed is rebuilt, not cascaded.
    pub replaced: Vec<Feed>,
}

/// Writes `items` (sorted by identity, no duplicates) to their table.
pub(crate) async fn write<E: Logged>(
    conn: &mut PgConnection,
    items: &[Item<'_, E>],
) -> Result<Written, sqlx::Error> {
    let mut out = Written::default();
    if items.is_empty() {
        return Ok(out);
    }
    let rows = Rows::of(items);
    let sql = &E::TABLE.statements(&rows.columns).insert;
    let skipped = sqlx::query_with(sql.as_str(), rows.into_args()?)
        .fetch_all(&mut *conn)
        .await?;
    let mut conflicts = Vec::new();
    let mut is_new = vec![true; items.len()];
    for row in skipped {
        let index = ordinal(&row)?;
        is_new[index] = false;
        if row.try_get::<bool, _>(1)? {
            conflicts.push(items[index]);
        } else {
            out.orphaned += 1;
        }
    }
    out.new = (0..items.len()).filter(|&i| is_new[i]).collect();
    if conflicts.is_empty() {
        return Ok(out);
    }

    let rows = Rows::of(&conflicts);
    let sql = &E::TABLE.statements(&rows.columns).resolve;
    let replaced = sqlx::query_with(sql.as_str(), rows.into_args()?)
        .fetch_all(&mut *conn)
        .await?;
    if replaced.is_empty() {
        return Ok(out);
    }
    let mut successors = Vec::with_capacity(replaced.len());
    for row in &replaced {
        let successor = conflicts[ordinal(row)?];
        out.replaced.push(Feed::of_row(E::TABLE, row, 1)?);
        out.replaced.push(successor.event.feed());
        successors.push(successor);
    }
    successors.sort_unstable_by_key(|i| i.chain.key());
    // The old rows are gone (in this transaction): the successors insert.
    let rows = Rows::of(&successors);
    let sql = &E::TABLE.statements(&rows.columns).insert;
    sqlx::query_with(sql.as_str(), rows.into_args()?)
        .execute(&mut *conn)
        .await?;
    Ok(out)
}

/// A 1-based ordinal in column 0 as a 0-based index.
fn ordinal(row: &sqlx::postgres::PgRow) -> Result<usize, sqlx::Error> {
    Ok((row.try_get::<i64, _>(0)? - 1) as usize)
}

/// Deletes, from every event table, the events that the notices `notices`
/// (ids in `reorg_notices`, recorded in this transaction) orphan: each
/// notice's stream's events of its network at blocks ≥ its fork block,
/// delivered before it. `from_block` is the lowest of their fork blocks
/// (the statement reads the events from there on through the block
/// indexes). Returns, for each removed event, the first notice covering it
/// — the lowest id, the one that removes it when the notices are applied
/// one by one in the order they were recorded — and what it fed.
pub(crate) async fn remove_orphans(
    conn: &mut PgConnection,
    notices: &[i64],
    from_block: i64,
) -> Result<Vec<(i64, Feed)>, sqlx::Error> {
    static REMOVE: OnceLock<String> = OnceLock::new();
    let sql = REMOVE.get_or_init(|| {
        let covered = covers("t");
        let parts: Vec<String> = TABLES
            .iter()
            .map(|t| {
                format!(
                    "{name} AS (
    DELETE FROM {name} t
    WHERE t.block_number >= $2
      AND EXISTS (SELECT 1 FROM reorg_notices n WHERE n.id = ANY($1) AND {covered})
    RETURNING (SELECT min(n.id) FROM reorg_notices n WHERE n.id = ANY($1) AND {covered}),
        '{name}'::text, {feeds}
)",
                    name = t.name,
                    feeds = t.feeds
                )
            })
            .collect();
        let union: Vec<String> = TABLES
            .iter()
            .map(|t| format!("SELECT * FROM {}", t.name))
            .collect();
        format!("WITH {}\n{}", parts.join(",\n"), union.join("\nUNION ALL "))
    });
    let rows = sqlx::query(sql.as_str())
        .bind(notices)
        .bind(from_block)
        .fetch_all(conn)
        .await?;
    rows.iter()
        .map(|row| {
            let notice: i64 = row.try_get(0)?;
            let table: &str = row.try_get(1)?;
            let table = TABLES
                .iter()
                .find(|t| t.name == table)
                .expect("a table of TABLES");
            Ok((notice, Feed::of_row(table, row, 2)?))
        })
        .collect()
}

impl Logged for AtomCreated {
    const TABLE: &'static EventTable = &ATOM_CREATED;

    fn columns(rows: &mut Rows, items: &[Item<'_, Self>]) {
        let e = || items.iter().map(|i| i.event);
        rows.text("creator", e().map(|a| a.creator.as_str()));
        rows.text("term_id", e().map(|a| a.term_id.as_str()));
        rows.opt_text("atom_data", e().map(|a| a.atom_data.text()));
        rows.opt_bytea("raw_data", e().map(|a| a.atom_data.raw()));
        rows.text("atom_wallet", e().map(|a| a.atom_wallet.as_str()));
    }

    fn feed(&self) -> Feed {
        Feed::atom(self.term_id.as_str())
    }
}

impl Logged for TripleCreated {
    const TABLE: &'static EventTable = &TRIPLE_CREATED;

    fn columns(rows: &mut Rows, items: &[Item<'_, Self>]) {
        let e = || items.iter().map(|i| i.event);
        rows.text("creator", e().map(|t| t.creator.as_str()));
        rows.text("term_id", e().map(|t| t.term_id.as_str()));
        rows.text("subject_id", e().map(|t| t.subject_id.as_str()));
        rows.text("predicate_id", e().map(|t| t.predicate_id.as_str()));
        rows.text("object_id", e().map(|t| t.object_id.as_str()));
        rows.text("counter_term_id", e().map(|t| t.counter_term_id.as_str()));
    }

    fn feed(&self) -> Feed {
        Feed::triple(self.term_id.as_str(), self.counter_term_id.as_str())
    }
}

impl Logged for Deposited {
    const TABLE: &'static EventTable = &DEPOSITED;

    fn columns(rows: &mut Rows, items: &[Item<'_, Self>]) {
        let e = || items.iter().map(|i| i.event);
        rows.text("sender", e().map(|d| d.sender.as_str()));
        rows.text("receiver", e().map(|d| d.receiver.as_str()));
        rows.text("term_id", e().map(|d| d.term_id.as_str()));
        rows.numeric("curve_id", e().map(|d| d.curve_id.as_str()));
        rows.numeric("assets", e().map(|d| d.assets.as_str()));
        rows.numeric(
            "assets_after_fees",
            e().map(|d| d.assets_after_fees.as_str()),
        );
        rows.numeric("shares", e().map(|d| d.shares.as_str()));
        rows.numeric("total_shares", e().map(|d| d.total_shares.as_str()));
        rows.int2("vault_type", e().map(|d| d.vault_type.code()));
    }

    fn feed(&self) -> Feed {
        Feed::position(
            self.receiver.as_str(),
            self.term_id.as_str(),
            self.curve_id.as_str(),
        )
    }
}

impl Logged for Redeemed {
    const TABLE: &'static EventTable = &REDEEMED;

    fn columns(rows: &mut Rows, items: &[Item<'_, Self>]) {
        let e = || items.iter().map(|i| i.event);
        rows.text("sender", e().map(|r| r.sender.as_str()));
        rows.text("receiver", e().map(|r| r.receiver.as_str()));
        rows.text("term_id", e().map(|r| r.term_id.as_str()));
        rows.numeric("curve_id", e().map(|r| r.curve_id.as_str()));
        rows.numeric("shares", e().map(|r| r.shares.as_str()));
        rows.numeric("total_shares", e().map(|r| r.total_shares.as_str()));
        rows.numeric("assets", e().map(|r| r.assets.as_str()));
        rows.numeric("fees", e().map(|r| r.fees.as_str()));
        rows.int2("vault_type", e().map(|r| r.vault_type.code()));
    }

    fn feed(&self) -> Feed {
        Feed::position(
            self.receiver.as_str(),
            self.term_id.as_str(),
            self.curve_id.as_str(),
        )
    }
}

impl Logged for SharePriceChanged {
    const TABLE: &'static EventTable = &SHARE_PRICE_CHANGED;

    fn columns(rows: &mut Rows, items: &[Item<'_, Self>]) {
        let e = || items.iter().map(|i| i.event);
        rows.text("term_id", e().map(|s| s.term_id.as_str()));
        rows.numeric("curve_id", e().map(|s| s.curve_id.as_str()));
        rows.numeric("share_price", e().map(|s| s.share_price.as_str()));
        rows.numeric("total_assets", e().map(|s| s.total_assets.as_str()));
        rows.numeric("total_shares", e().map(|s| s.total_shares.as_str()));
        rows.int2("vault_type", e().map(|s| s.vault_type.code()));
    }

    fn feed(&self) -> Feed {
        Feed::vault(self.term_id.as_str(), self.curve_id.as_str())
    }
}

impl Logged for Generic<'_> {
    const TABLE: &'static EventTable = &GENERIC;

    fn columns(rows: &mut Rows, items: &[Item<'_, Self>]) {
        let e = || items.iter().map(|i| i.event);
        rows.text("event_name", e().map(|g| g.event_name.as_ref()));
        rows.opt_text(
            "event_signature_hash",
            e().map(|g| g.event_signature_hash.as_deref()),
        );
        rows.jsonb("event_data", e().map(|g| g.data));
    }

    fn feed(&self) -> Feed {
        Feed::default()
    }
}
