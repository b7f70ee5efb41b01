//! Command-line front end: one file per subcommand family, all sharing this error convention.
//!
//! Exit codes are part of the contract scripts rely on: 0 success, 2 bad input (unreadable
//! image, no face, invalid argument or file), 1 internal failure. A command signals "bad input"
//! by returning an error whose chain contains [`BadInput`]; anything else is internal.

use std::fmt;

/// Marker wrapped around errors caused by the caller's input (exit code 2).
#[derive(Debug)]
pub struct BadInput(pub String);

impl fmt::Display for BadInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadInput {}

/// Build an `anyhow::Error` flagged as bad input.
pub fn bad_input(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(BadInput(msg.into()))
}

/// Exit code for a command's error: 2 if any error in the chain is [`BadInput`], else 1.
pub fn exit_code_for(err: &anyhow::Error) -> u8 {
    if err.chain().any(|e| e.is::<BadInput>()) {
        2
    } else {
        1
    }
}

/// Print a value as one line of JSON on stdout (the machine-readable contract).
pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

pub mod audit;
pub mod bench;
pub mod bench_compare;
pub mod bench_e2e;
pub mod bench_match;
pub mod bench_pad;
pub mod broker;
pub mod bundle;
pub mod cmd;
pub mod common;
pub mod daemon;
pub mod devices;
pub mod enroll;
pub mod erase;
pub mod eval;
pub mod keys;
pub mod liveness;
pub mod models;
pub mod people;
pub mod vision;
