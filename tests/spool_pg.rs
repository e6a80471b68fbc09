//! The spool tests of `tests/spool.rs`, the same bodies, run against the
//! PostgreSQL backend (SPEC §11): `common::spool_store` gives this binary
//! (crate name ending in `_pg`) a fresh database per test on a throwaway
//! cluster. Without PostgreSQL installed they say so loudly and run on
//! SQLite; `.ci/run` installs it, so in CI they always run on PostgreSQL.

#[path = "spool.rs"]
mod on_postgres;
