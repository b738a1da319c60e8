//! What operators of a daemon expect: liveness and readiness probes, Prometheus metrics, and the small
//! admin listener the worker serves them on.

pub mod health;
pub mod metrics;
pub mod recent;
pub mod status;

pub use health::{Heartbeat, Readiness, ops_router};
