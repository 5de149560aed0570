//! kiln-agent: Kiln's node agent.

mod cli;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "kiln-agent",
    version,
    about = "Kiln's node agent: runs GGUF models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt.
    Generate(cli::generate::GenerateArgs),
    /// Measure prompt-processing and generation speed.
    Bench(cli::bench::BenchArgs),
    /// Write a synthetic model (random weights in a real architecture's layout).
    Synth(cli::synth::SynthArgs),
    /// Serve the OpenAI-compatible HTTP API.
    Serve(cli::serve::ServeArgs),
    /// List the GPUs (JSON); with --env, the ROCm environment Kiln would set and why.
    Gpus(cli::gpus::GpusArgs),
    /// Plan device memory for a model: the largest context that fits (JSON).
    Plan(cli::plan::PlanArgs),
    /// Fetch a model into the node cache, verify and check it; prints its local path.
    Fetch(cli::fetch::FetchArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(a) => cli::generate::run(a),
        Command::Bench(a) => cli::bench::run(a),
        Command::Synth(a) => cli::synth::run(a),
        Command::Serve(a) => cli::serve::run(a),
        Command::Gpus(a) => cli::gpus::run(a),
        Command::Plan(a) => cli::plan::run(a),
        Command::Fetch(a) => cli::fetch::run(a),
    };
    if let Err(e) = result {
        eprintln!("kiln-agent: {e:#}");
        std::process::exit(1);
    }
}
