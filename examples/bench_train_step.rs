//! `cargo run --release --example bench_train_step -- [--steps 10 …]`: the `bench train-step` harness
//! ([`cliprt::bench`]) without the CLI, for profiling the CPU training step.

use std::process::ExitCode;

use clap::Parser;
use cliprt::bench::{train_step, TrainStepArgs};

#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    args: TrainStepArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match train_step(&cli.args) {
        Ok(report) if cli.args.json => println!("{}", report.to_json()),
        Ok(report) => print!("{}", report.to_text()),
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
