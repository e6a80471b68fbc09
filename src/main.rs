#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use hookgate::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    hookgate::logging::init(cli.log_format);
    cli::run(cli)
}
