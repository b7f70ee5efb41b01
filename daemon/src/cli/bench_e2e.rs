//! `facegate bench e2e`: time to decision through the real daemon path (in-process, SIMULATED
//! camera and relay), sustained frames per second, and — on a real `facegate run` child process
//! started the way systemd starts it — cold start until `READY=1` and peak RSS with N templates.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use facegate::models::Manifest;
use facegate::store::{Kek, NewPerson, NewTemplate, Store};
use serde::Serialize;

use super::keys::store_err;
use crate::cli::{bad_input, print_json};

/// Arguments of `facegate bench e2e`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Fixture root with dev/ (default ../shared/faces)
    #[arg(long)]
    pub fixtures: Option<PathBuf>,
    /// Model directory
    #[arg(long)]
    pub models: Option<PathBuf>,
    /// Granted presentations to time
    #[arg(long, default_value_t = 10)]
    pub rounds: usize,
    /// Seconds of continuous analysis for the frames/s figure
    #[arg(long, default_value_t = 10)]
    pub sustain_secs: u64,
    /// Analysis threads
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Templates in the daemon's store for the RSS and cold-start figures
    #[arg(long, default_value_t = 10_000)]
    pub templates: usize,
    /// Cold starts of `facegate run` to time
    #[arg(long, default_value_t = 3)]
    pub starts: usize,
    /// Machine-readable output
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct ProcessFigures {
    templates: usize,
    ready_ms: Vec<f64>,
    ready_median_ms: f64,
    /// MiB (`/proc` reports KiB; 1 MiB = 1.048576 MB), as `bench compare` reports memory.
    peak_rss_mib: f64,
    rss_mib: f64,
}

fn status_kb(pid: u32, key: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

fn process_figures(args: &Args, probe: &std::path::Path) -> anyhow::Result<ProcessFigures> {
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("facegate.key");
    let store_path = dir.path().join("facegate.redb");
    let kek = Kek::generate_key_file(&key).map_err(store_err)?;
    let store = Store::create(&store_path, &kek, "bench").map_err(store_err)?;
    let manifest = Manifest::embedded();
    let sface = manifest.get("sface")?;
    let version = &sface.sha256[..12];
    let mut rng = rand::rng();
    let per = 2;
    let people: Vec<(NewPerson, Vec<NewTemplate>)> = (0..args.templates.div_ceil(per))
        .map(|i| {
            (
                NewPerson {
                    id: format!("p{i:06}"),
                    label: format!("synthetic {i}"),
                    external_id: None,
                },
                (0..per)
                    .map(|_| {
                        NewTemplate::anchor(
                            facegate::bench::random_unit(&mut rng),
                            "sface",
                            version,
                        )
                    })
                    .collect(),
            )
        })
        .collect();
    for chunk in people.chunks(1000) {
        let batch: Vec<(&NewPerson, &[NewTemplate])> =
            chunk.iter().map(|(p, t)| (p, t.as_slice())).collect();
        store.add_people(&batch, "bench").map_err(store_err)?;
    }
    drop(store);
    let replay = dir.path().join("replay");
    std::fs::create_dir(&replay)?;
    std::fs::copy(probe, replay.join(probe.file_name().unwrap_or_default()))?;
    let models = facegate::models::resolve_models_dir(args.models.as_deref());
    let cfg = dir.path().join("facegate.toml");
    std::fs::write(
        &cfg,
        format!(
            "[paths]\nmodels = {:?}\nstore = {:?}\nkey_file = {:?}\n[camera]\nsource = \"replay\"\nreplay_dir = {:?}\nfps = 15\n[door]\nlock = \"simulated\"\n",
            models, store_path, key, replay
        ),
    )?;
    let exe = std::env::current_exe()?;
    let mut ready = Vec::new();
    let (mut peak, mut rss) = (0.0f64, 0.0f64);
    for i in 0..args.starts.max(1) {
        let sock_path = dir.path().join(format!("notify{i}.sock"));
        let sock = UnixDatagram::bind(&sock_path)?;
        sock.set_read_timeout(Some(Duration::from_secs(120)))?;
        let t0 = Instant::now();
        let mut child = Command::new(&exe)
            .arg("run")
            .arg("--config")
            .arg(&cfg)
            .env("NOTIFY_SOCKET", &sock_path)
            .env("FACEGATE_LOG_TARGET", "stderr")
            .env("FACEGATE_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut buf = [0u8; 1024];
        let got_ready = loop {
            match sock.recv(&mut buf) {
                Ok(n) if buf[..n].starts_with(b"READY=1") => break true,
                Ok(_) => continue,
                Err(_) => break false,
            }
        };
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        if got_ready {
            ready.push(ms);
            // Let it analyse frames (and allocate what it allocates) before reading RSS.
            std::thread::sleep(Duration::from_secs(args.sustain_secs.clamp(3, 30)));
            peak = peak.max(status_kb(child.id(), "VmHWM:").unwrap_or(0.0) / 1024.0);
            rss = rss.max(status_kb(child.id(), "VmRSS:").unwrap_or(0.0) / 1024.0);
        }
        // SAFETY: kill(2) on our own child process, not yet reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait()?;
        if !got_ready {
            anyhow::bail!("`facegate run` did not send READY=1 (exit {status})");
        }
        if !status.success() {
            anyhow::bail!("`facegate run` did not exit cleanly on SIGTERM: {status}");
        }
    }
    let mut sorted = ready.clone();
    sorted.sort_by(f64::total_cmp);
    Ok(ProcessFigures {
        templates: args.templates,
        ready_median_ms: sorted[sorted.len() / 2],
        ready_ms: ready,
        peak_rss_mib: peak,
        rss_mib: rss,
    })
}

/// Run `bench e2e`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let fixtures = args
        .fixtures
        .clone()
        .or_else(|| super::common::shared_faces("dev").map(|d| d.join("..")))
        .ok_or_else(|| bad_input("no fixtures: pass --fixtures DIR (with dev/)"))?;
    if args.rounds == 0 || !(1..=8).contains(&args.workers) {
        return Err(bad_input("--rounds must be >= 1 and --workers in 1..=8"));
    }
    let e2e = facegate::bench_e2e::run(
        &fixtures,
        args.models.as_deref(),
        args.rounds,
        Duration::from_secs(args.sustain_secs.max(1)),
        args.workers,
    )?;
    let roster = facegate::demo::roster(&fixtures.join("dev"))?;
    let proc_figures = process_figures(&args, &roster.probe.1)?;
    if args.json {
        return print_json(&serde_json::json!({"in_process": e2e, "process": proc_figures}));
    }
    println!(
        "bench e2e (SIMULATED camera and relay; {} analysis thread(s))",
        e2e.workers
    );
    println!(
        "  deciding frame captured → lock command   median {:>7.1} ms   p95 {:>7.1} ms   (n = {})",
        e2e.frame_to_unlock.median_ms, e2e.frame_to_unlock.p95_ms, e2e.rounds
    );
    println!(
        "  face appears → lock command (k-of-n)     median {:>7.1} ms   p95 {:>7.1} ms",
        e2e.arrival_to_unlock.median_ms, e2e.arrival_to_unlock.p95_ms
    );
    println!(
        "  sustained analysis                       {:>7.2} frames/s  ({:.2} stale frames dropped per analysed frame)",
        e2e.sustained_fps, e2e.dropped_per_analysed
    );
    println!(
        "  `facegate run`, {} templates: cold start to READY=1 median {:.0} ms over {:?}; peak RSS {:.1} MiB (VmHWM), RSS {:.1} MiB",
        proc_figures.templates,
        proc_figures.ready_median_ms,
        proc_figures
            .ready_ms
            .iter()
            .map(|m| m.round())
            .collect::<Vec<_>>(),
        proc_figures.peak_rss_mib,
        proc_figures.rss_mib
    );
    Ok(())
}
