//! `facegate run` (the service) and `facegate demo` (the scripted session with SIMULATED devices).

use std::path::PathBuf;
use std::time::Duration;

use facegate::demo::{self, DemoOptions};

use super::bad_input;

/// `facegate run --config FILE`
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Configuration file (TOML; see config/facegate.toml).
    #[arg(long, default_value = "/etc/facegate/facegate.toml")]
    pub config: PathBuf,
}

/// `facegate doctor --config FILE`
#[derive(clap::Args, Debug)]
pub struct DoctorArgs {
    /// Configuration file to check (and whose devices, store and broker to test).
    #[arg(long, default_value = "/etc/facegate/facegate.toml")]
    pub config: PathBuf,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// Run every check; exit code 1 if any failed.
pub fn doctor(args: DoctorArgs) -> anyhow::Result<()> {
    let checks = facegate::doctor::run(&args.config);
    let failed = checks.iter().filter(|c| !c.ok).count();
    if args.json {
        super::print_json(&serde_json::json!({"ok": failed == 0, "checks": checks}))?;
    } else {
        for c in &checks {
            let mark = if c.skipped {
                "–"
            } else if c.ok {
                "✔"
            } else {
                "✖"
            };
            println!("{mark} {:<16} {}", c.name, c.detail);
            if let Some(h) = &c.hint {
                println!("  {:<16} fix: {h}", "");
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} check(s) failed");
    }
    Ok(())
}

/// `facegate demo`
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Fixture root with dev/, spoof/ and spoof-samples/ (default ../shared/faces).
    #[arg(long)]
    pub fixtures: Option<PathBuf>,
    /// Folder of people to enrol, one sub-folder each (default <fixtures>/dev).
    #[arg(long)]
    pub people: Option<PathBuf>,
    /// Model directory.
    #[arg(long)]
    pub models: Option<PathBuf>,
    /// SIMULATED camera frame rate.
    #[arg(long, default_value_t = 10)]
    pub fps: u32,
    /// Print the events left in the outbox.
    #[arg(long)]
    pub show_events: bool,
    /// Publish the events to the broker of this facegate config file (its [device] and [mqtt]
    /// tables: host, port, CA, client certificate and key).
    #[arg(long, value_name = "CONFIG")]
    pub broker: Option<PathBuf>,
}

/// Run the service until SIGTERM/SIGINT.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    if !args.config.is_file() {
        return Err(bad_input(format!(
            "config file {} not found (see config/facegate.toml for a commented example)",
            args.config.display()
        )));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(facegate::service::run(&args.config))
        .map_err(|e| match e {
            facegate::service::ServiceError::Config(c) => bad_input(c.to_string()),
            other => anyhow::Error::new(other),
        })
}

/// Run the demo; exit code 0 only if every scenario came out as expected.
pub fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let fixtures = match args
        .fixtures
        .or_else(|| super::common::shared_faces("dev").map(|d| d.join("..")))
    {
        Some(f) => f,
        None => {
            return Err(bad_input(
                "no fixtures: pass --fixtures DIR (a folder with dev/, spoof/, spoof-samples/)",
            ));
        }
    };
    println!(
        "facegate demo: SIMULATED camera and door relay; RGB-only board profile (no IR/depth fitted)"
    );
    let broker = match &args.broker {
        None => None,
        Some(p) => {
            let c = facegate::config::Config::load(p).map_err(|e| bad_input(e.to_string()))?;
            if c.mqtt.is_none() {
                return Err(bad_input(format!("{}: no [mqtt] table", p.display())));
            }
            Some(c)
        }
    };
    let opts = DemoOptions {
        fixtures,
        people: args.people,
        models: args.models,
        fps: args.fps,
        timeout: Duration::from_secs(20),
        broker,
    };
    let started = std::time::Instant::now();
    let report = demo::run(&opts, |line| println!("  {line}")).map_err(|e| match e {
        demo::DemoError::Fixtures(m) => bad_input(m),
        other => anyhow::Error::new(other),
    })?;
    println!("  models loaded in {:.0} ms", report.load_ms);
    for r in &report.results {
        let sc = &r.scenario;
        match &r.decision {
            Some(d) => {
                let t = &d.times;
                println!(
                    "scenario {}: {} ({}) person={} score={} liveness={} frames={} detect={:.0}ms liveness={:.0}ms embed={:.0}ms match={:.2}ms frame→decision={:.0}ms wall={:.0}ms relay={} expected={}{}",
                    sc.name,
                    if d.granted { "GRANTED" } else { "DENIED" },
                    d.reason,
                    d.person.as_deref().unwrap_or("-"),
                    d.match_score
                        .map(|s| format!("{s:.3}"))
                        .unwrap_or_else(|| "-".into()),
                    d.liveness_score
                        .map(|s| format!("{s:.3}"))
                        .unwrap_or_else(|| "-".into()),
                    t.frames,
                    t.detect_ms,
                    t.liveness_ms,
                    t.embed_ms,
                    t.match_ms,
                    t.frame_to_decision_ms,
                    r.wall_ms,
                    if r.relay_energised {
                        "pulsed"
                    } else {
                        "stayed locked"
                    },
                    if sc.expect_granted {
                        "GRANTED"
                    } else {
                        "DENIED"
                    },
                    if r.ok { "" } else { "  <-- UNEXPECTED" },
                );
                if !d.detail.is_empty() {
                    println!("    detail: {}", d.detail);
                }
            }
            None => println!(
                "scenario {}: DENIED (no_decision) no decision within {:?} ({}) expected={}  <-- UNEXPECTED",
                sc.name,
                opts.timeout,
                sc.what,
                if sc.expect_granted {
                    "GRANTED"
                } else {
                    "DENIED"
                }
            ),
        }
    }
    match report.published {
        Some((n, ms)) => println!(
            "outbox: {} event(s) committed, {n} published and acknowledged by the broker in {ms:.0} ms",
            report.outbox.len()
        ),
        None => println!(
            "outbox: {} event(s) committed (not published: no --broker)",
            report.outbox.len()
        ),
    }
    if args.show_events {
        for e in &report.outbox {
            println!("  {e}");
        }
    }
    let ok = report.all_ok();
    println!(
        "demo {} in {:.1} s",
        if ok { "passed" } else { "FAILED" },
        started.elapsed().as_secs_f64()
    );
    if !ok {
        anyhow::bail!("at least one scenario did not come out as expected");
    }
    Ok(())
}
