//! Test fixtures: a private schema per test, table dumps, an independent
//! model of the invariants.

pub mod db;
pub mod events;
pub mod private;
pub mod proxy;
pub mod service;

pub use db::TestDb;
