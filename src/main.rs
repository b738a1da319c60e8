use clap::Parser;
use codewatch::config::Cli;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    codewatch::cli::init_tracing(cli.log_format);
    match codewatch::cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if codewatch::cli::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:?}");
            ExitCode::FAILURE
        }
    }
}
