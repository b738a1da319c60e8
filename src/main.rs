use clap::Parser;
use codewatch::config::Cli;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    codewatch::cli::init_tracing(cli.log_format);
    codewatch::cli::run(cli).await
}
