//! The `facegate` binary: the daemon and its operator/technician tools, one subcommand each.
//!
//! This is the binary edge: library errors become `anyhow` errors here, are printed once on
//! stderr, and map to the exit-code contract in [`cli`] (0 ok, 2 bad input, 1 internal).

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// facegate: face-recognition door terminal.
#[derive(Parser, Debug)]
#[command(name = "facegate", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the door terminal service (systemd unit: facegate.service).
    Run(cli::daemon::RunArgs),
    /// Scripted session with SIMULATED camera and relay: enrol, then four arrivals.
    Demo(cli::daemon::DemoArgs),
    /// Check configuration, models, store, camera, GPIO, broker, clock and disk (stop the service first).
    Doctor(cli::daemon::DoctorArgs),
    /// Detect faces and landmarks in an image.
    Detect(cli::vision::DetectArgs),
    /// Embed the largest face of an image (vector only with --json).
    Embed(cli::vision::EmbedArgs),
    /// Compare the largest faces of two images.
    Compare(cli::vision::CompareArgs),
    /// Liveness checks on an image (passive RGB, optional IR and depth) and the fused verdict.
    Liveness(cli::liveness::Args),
    /// List V4L2 devices and the formats they offer.
    Devices(cli::devices::Args),
    /// Install, verify and list the pinned model files.
    #[command(subcommand)]
    Models(cli::models::ModelsCmd),
    /// Enrol a person from photos (quality gates, duplicate check, encrypted anchors).
    Enroll(cli::enroll::EnrollArgs),
    /// Identify the largest face of a photo against the store (liveness, match, margin).
    Identify(cli::enroll::IdentifyArgs),
    /// Create, rotate and inspect the store's encryption keys (never prints key material).
    Keys {
        #[command(subcommand)]
        cmd: cli::keys::Command,
    },
    /// Enrolled people: list, show, remove, export what is held (data-subject rights).
    People {
        #[command(subcommand)]
        cmd: cli::people::Command,
    },
    /// The hash-chained audit log: verify or list.
    Audit {
        #[command(subcommand)]
        cmd: cli::audit::Command,
    },
    /// Fleet template bundles: keygen, create, inspect, apply, publish (signed, site-encrypted).
    #[command(subcommand)]
    Bundle(cli::bundle::Command),
    /// Remote commands to terminals: sign an `open`, send any command and await its result.
    #[command(subcommand)]
    Cmd(cli::cmd::Command),
    /// Crypto-erase the store and its key (`--all --confirm`).
    Erase(cli::erase::Args),
    /// Measure performance (prints figures measured in this run).
    #[command(subcommand)]
    Bench(cli::bench::BenchCmd),
    /// Measure accuracy on labelled data (pairs: accuracy, TAR at FAR, EER).
    #[command(subcommand)]
    Eval(cli::eval::EvalCmd),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The service logs to the journal (info); tools and the demo to stderr (warn).
    match cli.command {
        Command::Run(_) => facegate::logging::init(true, "info"),
        _ => facegate::logging::init(false, "warn"),
    };
    let result = match cli.command {
        Command::Run(a) => cli::daemon::run(a),
        Command::Demo(a) => cli::daemon::demo(a),
        Command::Doctor(a) => cli::daemon::doctor(a),
        Command::Detect(a) => cli::vision::detect(a),
        Command::Embed(a) => cli::vision::embed(a),
        Command::Compare(a) => cli::vision::compare(a),
        Command::Models(c) => cli::models::run(c),
        Command::Liveness(a) => cli::liveness::run(a),
        Command::Devices(a) => cli::devices::run(a),
        Command::Bench(c) => cli::bench::run(c),
        Command::Eval(c) => cli::eval::run(c),
        Command::Enroll(a) => cli::enroll::enroll(a),
        Command::Identify(a) => cli::enroll::identify(a),
        Command::Keys { cmd } => cli::keys::run(cmd),
        Command::People { cmd } => cli::people::run(cmd),
        Command::Audit { cmd } => cli::audit::run(cmd),
        Command::Erase(a) => cli::erase::run(a),
        Command::Bundle(c) => cli::bundle::run(c),
        Command::Cmd(c) => cli::cmd::run(c),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("facegate: error: {e:#}");
            ExitCode::from(cli::exit_code_for(&e))
        }
    }
}
