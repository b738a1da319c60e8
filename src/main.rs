use clap::Parser;
use codewatch::config::Cli;
use std::process::ExitCode;

fn main() -> ExitCode {
    quiet_library_backtraces();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cli = Cli::parse();
    let telemetry = match codewatch::cli::init_tracing(cli.log_format, cli.otlp_endpoint.as_ref()) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("Error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(run(cli));
    // Outside the runtime: sending the last spans blocks.
    drop(telemetry);
    code
}

async fn run(cli: Cli) -> ExitCode {
    match codewatch::cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if codewatch::cli::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:?}");
            ExitCode::FAILURE
        }
    }
}

/// Libraries build errors that they then discard on the success path: the Azure SDK looks up an absent
/// header through a `Result` on every request. Under `RUST_BACKTRACE=1`, as many hosts set it, each of
/// those captured a backtrace (3–4 % of `serve`'s CPU). `RUST_LIB_BACKTRACE=0` turns capturing off for
/// errors, unless the operator set it; a panic still prints its backtrace under `RUST_BACKTRACE`.
#[allow(unsafe_code)]
fn quiet_library_backtraces() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: the first statement of `main`, before the runtime or any other thread exists, so no
        // other thread can be reading the environment.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
}
