//! `facegate bench match`: measured matcher latency, memory and load time.
//!
//! For each gallery size N it writes N random unit templates (two per person) into a fresh
//! encrypted store in a private temp directory, then times what a daemon start does — open the
//! store, decrypt every template, build the matcher — and runs identify on random unit queries
//! (a full scan, as for an unknown face), reporting median and p99. Everything is measured on
//! the machine it runs on; nothing is extrapolated. The same queries also run, interleaved,
//! through every scan this CPU offers (the plain `f32` scan of every row and each int8 prefilter
//! kernel), so their ratio comes from one run.

use std::path::PathBuf;
use std::time::Instant;

use facegate::bench::random_unit;
use facegate::matcher::{Kernel, MatchParams, Matcher};
use facegate::store::{EMBEDDING_DIM, Kek, KekSource, NewPerson, NewTemplate, SecretKey, Store};
use serde::Serialize;

use super::keys::store_err;
use crate::cli::{bad_input, print_json};

/// Arguments of `facegate bench match`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Gallery sizes (templates) to measure
    #[arg(long = "templates", value_name = "N", num_args = 1.., default_values_t = [1_000usize, 10_000, 100_000])]
    pub templates: Vec<usize>,
    /// Identify calls per size
    #[arg(long, default_value_t = 200)]
    pub queries: usize,
    /// Directory for the temporary store [default: system temp dir]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Machine-readable output
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Row {
    templates: usize,
    people: usize,
    store_write_ms: f64,
    store_bytes: u64,
    load_ms: f64,
    matcher_bytes: usize,
    identify_median_us: f64,
    identify_p99_us: f64,
    queries: usize,
    /// The scan the matcher picked for this CPU.
    default_scan: String,
    /// Median µs of each scan over the same queries, interleaved.
    scans: Vec<(String, f64)>,
}

fn scan_name(k: Option<Kernel>) -> String {
    k.map_or_else(|| "f32".to_string(), |k| format!("int8-{}", k.name()))
}

/// Median identify µs of every scan variant on `qs`, in interleaved rounds so drift hits all
/// alike (switching rebuilds the int8 copy, which is not timed). Leaves the fastest scan on.
fn scan_medians(
    matcher: &mut Matcher,
    qs: &[Vec<f32>],
    params: &MatchParams,
) -> Vec<(String, f64)> {
    let default = matcher.prefilter_kernel();
    let variants: Vec<Option<Kernel>> = std::iter::once(None)
        .chain(Kernel::available().into_iter().map(Some))
        .collect();
    let mut samples = vec![Vec::new(); variants.len()];
    for chunk in qs.chunks(qs.len().div_ceil(4).max(1)) {
        for (v, s) in variants.iter().zip(samples.iter_mut()) {
            matcher.set_prefilter(*v);
            std::hint::black_box(matcher.identify(&chunk[0], params));
            for q in chunk {
                let t = Instant::now();
                std::hint::black_box(matcher.identify(std::hint::black_box(q), params));
                s.push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
    }
    matcher.set_prefilter(default);
    variants
        .iter()
        .zip(samples)
        .map(|(v, mut s)| {
            s.sort_by(f64::total_cmp);
            (scan_name(*v), percentile(&s, 0.5))
        })
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn measure(n: usize, queries: usize, base: &std::path::Path) -> anyhow::Result<Row> {
    let mut rng = rand::rng();
    let dir = base.join(format!("facegate-bench-{}-{n}", std::process::id()));
    std::fs::create_dir(&dir)
        .map_err(|e| bad_input(format!("cannot create {}: {e}", dir.display())))?;
    let result = (|| -> anyhow::Result<Row> {
        let path = dir.join("bench.redb");
        let kek = Kek::from_secret(SecretKey::random().map_err(store_err)?, KekSource::Memory);
        let people = n.div_ceil(2);
        let bar = indicatif::ProgressBar::new(n as u64);
        bar.set_style(indicatif::ProgressStyle::with_template(
            "  writing {pos}/{len} templates {bar:30} {eta}",
        )?);
        let t0 = Instant::now();
        {
            let store = Store::create(&path, &kek, "bench").map_err(store_err)?;
            let mut written = 0;
            for chunk_start in (0..people).step_by(2_000) {
                let batch: Vec<(NewPerson, Vec<NewTemplate>)> = (chunk_start
                    ..(chunk_start + 2_000).min(people))
                    .map(|p| {
                        let k = if 2 * p + 1 < n { 2 } else { n - 2 * p };
                        let t = (0..k)
                            .map(|_| NewTemplate::anchor(random_unit(&mut rng), "bench", "1"))
                            .collect();
                        (
                            NewPerson {
                                id: format!("p{p:07}"),
                                label: format!("Bench {p}"),
                                external_id: None,
                            },
                            t,
                        )
                    })
                    .collect();
                let refs: Vec<_> = batch.iter().map(|(p, t)| (p, t.as_slice())).collect();
                store.add_people(&refs, "bench").map_err(store_err)?;
                written += batch.iter().map(|(_, t)| t.len()).sum::<usize>();
                bar.set_position(written as u64);
            }
        }
        bar.finish_and_clear();
        let store_write_ms = t0.elapsed().as_secs_f64() * 1e3;
        let store_bytes = std::fs::metadata(&path)?.len();

        let t1 = Instant::now();
        let store = Store::open(&path, &kek).map_err(store_err)?;
        let mut matcher = Matcher::from_store(&store, Some(("bench", "1"))).map_err(store_err)?;
        let load_ms = t1.elapsed().as_secs_f64() * 1e3;
        drop(store);
        anyhow::ensure!(
            matcher.len() == n,
            "built {} of {n} templates",
            matcher.len()
        );

        let params = MatchParams {
            threshold: 0.5,
            margin: 0.05,
        };
        let qs: Vec<Vec<f32>> = (0..queries).map(|_| random_unit(&mut rng)).collect();
        for q in qs.iter().take(5) {
            std::hint::black_box(matcher.identify(q, &params)); // warm caches
        }
        let mut lat: Vec<f64> = qs
            .iter()
            .map(|q| {
                let t = Instant::now();
                std::hint::black_box(matcher.identify(std::hint::black_box(q), &params));
                t.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        lat.sort_by(f64::total_cmp);
        let scans = scan_medians(&mut matcher, &qs, &params);
        Ok(Row {
            templates: n,
            people,
            store_write_ms,
            store_bytes,
            load_ms,
            matcher_bytes: matcher.memory_bytes(),
            identify_median_us: percentile(&lat, 0.5),
            identify_p99_us: percentile(&lat, 0.99),
            queries,
            default_scan: scan_name(matcher.prefilter_kernel()),
            scans,
        })
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Run the benchmark for every requested size.
pub fn run(args: Args) -> anyhow::Result<()> {
    if args.templates.contains(&0) || args.queries == 0 {
        return Err(bad_input("--templates and --queries must be positive"));
    }
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let mut rows = Vec::new();
    if !args.json {
        println!(
            "{:>9} {:>8} {:>12} {:>12} {:>11} {:>13} {:>12} {:>10}",
            "templates",
            "people",
            "median_us",
            "p99_us",
            "matcher_MB",
            "load_ms",
            "write_ms",
            "store_MB"
        );
    }
    for &n in &args.templates {
        let r = measure(n, args.queries, &base)?;
        if !args.json {
            println!(
                "{:>9} {:>8} {:>12.1} {:>12.1} {:>11.2} {:>13.1} {:>12.1} {:>10.2}",
                r.templates,
                r.people,
                r.identify_median_us,
                r.identify_p99_us,
                r.matcher_bytes as f64 / 1e6,
                r.load_ms,
                r.store_write_ms,
                r.store_bytes as f64 / 1e6
            );
            let f32_us = r.scans.first().map_or(f64::NAN, |s| s.1);
            let scans: Vec<String> = r
                .scans
                .iter()
                .map(|(name, us)| format!("{name} {us:.1} us ({:.2}x f32)", us / f32_us))
                .collect();
            println!(
                "          scans (same queries, interleaved): {}; identify uses {}",
                scans.join(", "),
                r.default_scan
            );
        }
        rows.push(r);
    }
    if args.json {
        print_json(&serde_json::json!({"bench": "match", "dim": EMBEDDING_DIM, "results": rows}))?;
    }
    Ok(())
}
