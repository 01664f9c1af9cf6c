//! `pgai-trigger bench` until the CLI has the subcommand:
//! cargo run --release -p pgai-trigger --example bench -- --quick

use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: pgai_trigger::bench::BenchArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    pgai_trigger::bench::run(Cli::parse().args).await
}
