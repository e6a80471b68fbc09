#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use hookgate::cli::{self, Cli};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    hookgate::logging::init(cli.log_format);
    cli::run(cli)
}
