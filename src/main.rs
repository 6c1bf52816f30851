//! The `cliprt` command line. Each subcommand's logic lives in the library (`cliprt::doctor`, …); this file only
//! parses arguments and dispatches.

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "cliprt", version, about = "A framework-free CLIP training runtime with hand-written CUDA kernels")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Report what was found: CUDA driver, GPU, cuBLAS/cuBLASLt/cuDNN, compiled kernels, whether each module loads.
    /// Exits 0 with or without a GPU.
    Doctor(DoctorArgs),
}

#[derive(Args, Debug)]
struct DoctorArgs {
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Doctor(args) => {
            let report = cliprt::doctor::report();
            if args.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_text());
            }
            ExitCode::SUCCESS
        }
    }
}
