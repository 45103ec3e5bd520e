//! `writer`: Intuition MultiVault events from rindexer's Redis streams into a
//! PostgreSQL read model.
//!
//! The data path, one module per stage:
//! Redis entry ([`consumer`], [`stream`]) → decode and validate ([`decode`], [`event`]) →
//! apply in one Postgres transaction with its cascade ([`apply`]) → commit →
//! XACK → analytics channel → analytics worker ([`analytics`]).

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
