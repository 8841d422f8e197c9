//! The `cpulocal` command: what the engine is doing on this machine, a
//! counter demo that checks the exactness invariant under contention, the
//! comparison with other counters (`bench`), and forward progress under a
//! debugger (`step`).
//!
//! Exit status: 0 on success; 1 with a message on stderr when an invariant
//! broke (the counter lost or duplicated adds, a stepped operation did not
//! complete) or a command could not run; 2 for a bad command line (clap's
//! convention).
#![warn(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

mod cli;

use std::io::{self, Write};
use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command, Failure};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut out = io::stdout().lock();
    let result = match cli.command {
        None => main_job(&mut out, &cli),
        Some(Command::Info { json: false }) => {
            cli::info::print_text(&mut out, false).map_err(Failure::from)
        }
        Some(Command::Info { json: true }) => {
            cli::info::print_json(&mut out).map_err(Failure::from)
        }
        Some(Command::Demo(args)) => cli::demo::run(&mut out, &args),
        Some(Command::Bench(args)) => cli::bench::run(&mut out, &args),
        Some(Command::ParamTest(args)) => cli::param::run(&mut out, &args),
        Some(Command::Step(args)) => cli::step::run(&mut out, &args),
        Some(Command::StepChild(args)) => cli::step::child(&mut out, &args),
        Some(Command::Stress(args)) => cli::stress::run(&mut out, &args),
        Some(Command::Slice(args)) => cli::slice::run(&mut out, &args),
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

/// The command without a subcommand: a first run in plain words.
fn main_job(out: &mut impl Write, cli: &Cli) -> Result<(), Failure> {
    cli::first::run(out, cli)
}
