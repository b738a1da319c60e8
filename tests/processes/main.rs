//! The real binary, in one test binary: each module runs `codewatch` as a process (the operator
//! tools, the daemons under signals and outages, keyless authentication, replicas, `up` and the
//! README's snippets) or checks the deploy files against it.

#[path = "../common/mod.rs"]
mod common;

mod cli;
mod daemon;
mod delivery;
mod deploy;
mod docs;
mod keyless;
mod replicas;
mod signin;
mod status;
mod traces;
mod up;
