//! codewatch: short-lived two-factor codes on Azure Queue Storage.
//!
//! `serve` issues codes and announces each on a queue; the worker makes each code valid in a table and
//! re-arms the message to come back when the code expires. See the README for the whole picture.
#![warn(missing_docs)]

pub mod backends;
pub mod cli;
pub mod clock;
pub mod code;
pub mod config;
pub mod function_key;
pub mod http;
pub mod identity;
pub mod message;
pub mod number_api;
pub mod ops;
pub mod queue;
pub mod secret;
pub mod shutdown;
pub mod signing;
pub mod store;
pub mod subject;
pub mod timestamp;
pub mod untrusted;
pub mod verify;
pub mod worker;
