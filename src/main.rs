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
    /// Report what was found: GPU, the CUDA driver, cuBLAS, cuBLASLt and cuDNN (each with the file loaded, or why it
    /// was not found), compiled kernels, whether each module loads. Exits 0 with or without a GPU.
    Doctor(DoctorArgs),
    /// Tokenize with open_clip's CLIP BPE tokenizer: one text per line on stdin, one JSON array of ids per line on
    /// stdout ([SOT, tokens…, EOT, 0…], `--context-length` ids; too long: truncated with EOT last).
    Tokenize(TokenizeArgs),
    /// Train a CLIP model. With no options: the tiny ViT CLIP on the embedded shapes set for a fixed number of steps,
    /// ending with its zero-shot accuracy on the held-out split, on the GPU when one is usable (bf16 compute, fp32
    /// master weights, MFU reported) and otherwise on the CPU. Writes log.jsonl, checkpoints, summary.json and
    /// curves.png to --out.
    Train(Box<cliprt::train::config::TrainArgs>),
    /// Evaluate a checkpoint: zero-shot top-1/top-5 with prompt ensembles, retrieval recall@1/5/10, linear probe, on
    /// the shapes set or a folder of images (one sub-folder per class).
    Eval(Box<cliprt::eval::cli::EvalArgs>),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Samples/s of one full training step (forward, loss, backward, AdamW).
    TrainStep(cliprt::bench::TrainStepArgs),
    /// The fused CLIP loss (forward + backward) against the 4-GEMM floor and the materialised baseline (GPU).
    ClipLoss(cliprt::kernel_bench::clip_loss::Args),
    /// Nearest-neighbour search over the embedding queue against the GEMM floor and GEMM + arg-max (GPU).
    NnQueue(cliprt::kernel_bench::nn_queue::Args),
    /// Fused attention (forward, backward) against the byte floor and the materialised baseline (GPU).
    Attention(cliprt::kernel_bench::attention::Args),
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

/// Prints a command's error the same way everywhere: `cliprt <command>: <message>`, exit status 1.
fn fail(command: &str, e: cliprt::Error) -> ExitCode {
    eprintln!("cliprt {command}: {e}");
    ExitCode::FAILURE
}

/// Prints a benchmark's report, or its error.
fn report(result: cliprt::Result<String>, command: &str) -> ExitCode {
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(command, e),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Train(args) => match cliprt::train::run(&args) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => fail("train", e),
        },
        Command::Eval(args) => match cliprt::eval::cli::run(&args) {
            Ok(report) => {
                if args.json {
                    println!("{}", report.to_json());
                } else {
                    print!("{}", report.to_text());
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail("eval", e),
        },
        Command::Bench(BenchCommand::TrainStep(args)) => match cliprt::bench::train_step(&args) {
            Ok(report) => {
                if args.json {
                    println!("{}", report.to_json());
                } else {
                    print!("{}", report.to_text());
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail("bench train-step", e),
        },
        Command::Bench(BenchCommand::ClipLoss(args)) => {
            report(cliprt::kernel_bench::clip_loss::run(&args), "bench clip-loss")
        }
        Command::Bench(BenchCommand::NnQueue(args)) => {
            report(cliprt::kernel_bench::nn_queue::run(&args), "bench nn-queue")
        }
        Command::Bench(BenchCommand::Attention(args)) => {
            report(cliprt::kernel_bench::attention::run(&args), "bench attention")
        }
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
                Err(e) => fail("tokenize", e),
            }
        }
    }
}
