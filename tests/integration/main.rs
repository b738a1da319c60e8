//! The library's integration tests, in one binary: each module drives codewatch's parts in-process
//! against real services (Azurite, SQLite files, a PostgreSQL server). One binary links the crate once,
//! and its tests run in parallel with each other.

#[path = "../common/mod.rs"]
mod common;

mod app;
mod connections;
mod delivery;
mod getcode;
mod queue_contract;
mod request_ids;
mod shards;
mod store;
mod verify_api;
mod worker;
