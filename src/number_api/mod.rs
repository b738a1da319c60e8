//! The third-party "random number" API: the client `serve` calls, and the stand-in server for the
//! sample's Azure Function.

mod client;
mod server;

pub use client::{NumberApiClient, NumberApiError};
pub use server::router;

/// The header Azure Functions reads its access key from.
pub const KEY_HEADER: &str = "x-functions-key";
