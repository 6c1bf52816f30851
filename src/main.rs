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
    /// Tokenize with open_clip's CLIP BPE tokenizer: one text per line on stdin, one JSON array of ids per line on
    /// stdout ([SOT, tokens…, EOT, 0…], `--context-length` ids; too long: truncated with EOT last).
    Tokenize(TokenizeArgs),
}

#[derive(Args, Debug)]
struct DoctorArgs {
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct TokenizeArgs {
    /// Ids per row, padding included.
    #[arg(long, default_value_t = cliprt::data::tokenizer::DEFAULT_CONTEXT_LENGTH)]
    context_length: usize,
    /// Fail on a text that does not fit instead of truncating it.
    #[arg(long)]
    no_truncate: bool,
    /// DeCLIP's vocabulary with `<|mask|>` (49409 ids: mask 49406, SOT 49407, EOT 49408).
    #[arg(long)]
    declip: bool,
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
        Command::Tokenize(args) => {
            use cliprt::data::tokenizer::{tokenize_lines, Tokenizer};
            let tokenizer = if args.declip { Tokenizer::declip() } else { Tokenizer::clip() };
            let stdout = std::io::stdout();
            let out = std::io::BufWriter::new(stdout.lock());
            match tokenize_lines(tokenizer, std::io::stdin().lock(), out, args.context_length, !args.no_truncate) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("cliprt tokenize: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
