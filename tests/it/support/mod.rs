//! Test fixtures: a private schema per test, table dumps, an independent
//! model of the invariants.

pub mod db;
pub mod events;
pub mod private;
pub mod proxy;
pub mod service;

pub use db::TestDb;

/// `Command::env_clear`, keeping what coverage measurement needs: the writer
/// processes the tests start write their profiles where `cargo llvm-cov`
/// collects them (`scripts/test.sh --coverage`), not into the working tree.
pub trait CleanEnv {
    fn clean_env(&mut self) -> &mut Self;
}

impl CleanEnv for std::process::Command {
    fn clean_env(&mut self) -> &mut Self {
        self.env_clear();
        if let Some(profile) = std::env::var_os("LLVM_PROFILE_FILE") {
            self.env("LLVM_PROFILE_FILE", profile);
        }
        self
    }
}
