//! `infergate-loadtest` command: see `infergate-loadtest --help` and loadtest/README.md.

use std::process::ExitCode;

fn main() -> ExitCode {
    infergate_loadtest::main_with_args(std::env::args_os())
}
