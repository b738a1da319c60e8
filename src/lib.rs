//! codewatch: short-lived two-factor codes on Azure Queue Storage.
//!
//! `serve` issues codes and announces each on a queue; the worker makes each code valid in a table and
//! re-arms the message to come back when the code expires. The modules below are listed in the order a
//! code travels; ARCHITECTURE.md says what each owns and must not do.
#![warn(missing_docs)]

// --- The domain every layer speaks: codes, subjects, issuances, the validity rule. ---
pub mod domain;

// --- Issuing: the number API, the HTTP layer (getcode, verification, admin), the clock it issues by. ---
pub mod clock;
pub mod function_key;
pub mod http;
pub mod number_api;

// --- Carrying: the wire format, its signatures, the queue behind one trait. ---
pub mod message;
pub mod queue;
pub mod signing;

// --- Keeping: the worker that activates and expires codes in the store. ---
pub mod store;
pub mod worker;

// --- Delivering: the worker's stage that sends each code to its user (mail, webhook). ---
pub mod delivery;

// --- Checking: verification for a sign-in service (the HTTP routes are in `http`). ---
pub mod verify;

// --- Running: configuration, what it opens, identity, health and metrics, shutdown, the CLI. ---
pub mod azure_http;
pub mod backends;
pub mod cli;
pub mod config;
pub mod identity;
pub mod ops;
pub mod shutdown;
pub mod sqlite;
pub mod telemetry;

// --- Shared helpers: secrets, outside text made safe to log, the sample's timestamp format. ---
pub mod files;
pub mod hex;
pub mod secret;
pub mod timestamp;
pub mod untrusted;
