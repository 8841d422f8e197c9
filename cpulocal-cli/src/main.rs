//! The `cpulocal` command: what the engine is doing on this machine, and a
//! counter demo that checks the exactness invariant under contention.
//!
//! Exit status: 0 on success; 1 with a message on stderr when an invariant
//! broke (the counter lost or duplicated adds) or the demo could not run; 2 for
//! a bad command line (clap's convention).

mod cli;

use std::io::{self, Write};
use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command, Failure};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut out = io::stdout().lock();
    let result = match cli.command {
        None => cli::info::print_text(&mut out, true)
            .map_err(Failure::from)
            .and_then(|()| writeln!(out).map_err(Failure::from))
            .and_then(|()| cli::demo::run(&mut out, &cli.demo)),
        Some(Command::Info { json: false }) => {
            cli::info::print_text(&mut out, false).map_err(Failure::from)
        }
        Some(Command::Info { json: true }) => {
            cli::info::print_json(&mut out).map_err(Failure::from)
        }
        Some(Command::Demo(args)) => cli::demo::run(&mut out, &args),
    };
    let _ = out.flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`cpulocal | head`): nothing left to tell it.
        Err(Failure::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(Failure::Output(e)) => {
            eprintln!("cpulocal: error: cannot write the output: {e}");
            ExitCode::FAILURE
        }
        Err(Failure::Broken(message)) => {
            eprintln!("cpulocal: error: {message}");
            ExitCode::FAILURE
        }
    }
}
