//! `writer`: Intuition MultiVault events from rindexer's Redis streams into a
//! PostgreSQL read model.
//!
//! The data path, one module per stage:
//! Redis entry ([`consumer`], [`stream`]) → decode and validate ([`decode`], [`event`]) →
//! apply in one Postgres transaction with its cascade ([`apply`]) → commit →
//! XACK → analytics channel → analytics worker ([`analytics`]).

/// The tail of an upsert that rewrites a row only when it changes:
/// `DO UPDATE SET c = EXCLUDED.c, …, updated_at = now() WHERE (t.c, …) IS
/// DISTINCT FROM (EXCLUDED.c, …)`, for the table aliased `t` and the
/// columns listed. Written once because every recompute of a read-model
/// table ends this way; a `&'static str`, so statements stay constants.
macro_rules! update_changed {
    ($alias:ident: $first:ident $(, $col:ident)* $(,)?) => {
        concat!(
            "DO UPDATE SET\n",
            "        ", stringify!($first), " = EXCLUDED.", stringify!($first), ",\n",
            $("        ", stringify!($col), " = EXCLUDED.", stringify!($col), ",\n",)*
            "        updated_at = now()\n",
            "    WHERE (", stringify!($alias), ".", stringify!($first),
            $(", ", stringify!($alias), ".", stringify!($col),)* ")\n",
            "        IS DISTINCT FROM (EXCLUDED.", stringify!($first),
            $(", EXCLUDED.", stringify!($col),)* ")\n"
        )
    };
}

pub mod analytics;
pub mod apply;
pub mod backfill;
pub mod cli;
pub mod config;
pub mod consumer;
pub mod db;
pub mod dead_letter;
pub mod decode;
pub mod event;
pub mod http;
pub mod ingest;
pub mod lock;
pub mod migrate;
pub mod progress;
pub mod redis_client;
pub mod reorg;
pub mod retry;
pub mod schema;
pub mod service;
pub mod stream;
pub mod stream_watch;
pub mod telemetry;
pub mod tls;

#[cfg(test)]
mod tests {
    #[test]
    fn update_changed_sets_and_compares_every_column() {
        assert_eq!(
            update_changed!(v: a, b),
            "DO UPDATE SET\n        a = EXCLUDED.a,\n        b = EXCLUDED.b,\n        \
             updated_at = now()\n    WHERE (v.a, v.b)\n        IS DISTINCT FROM (EXCLUDED.a, EXCLUDED.b)\n"
        );
    }
}
