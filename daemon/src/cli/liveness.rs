//! `facegate liveness IMAGE [--ir IMAGE [--ir-off IMAGE]] [--depth FILE] [--json]`: run every
//! liveness check that has input on the largest face of a still image and print the verdict.
//!
//! JSON contract (fields may be added, never renamed): `{"live":bool,"checks":[{"name","score"
//! (null if not run),"pass","reason","required","status"}],"faults":[{"source","detail"}],
//! "face":{...}}`. The verdict is output, not an error: exit 0 for live and not live alike;
//! exit 2 for unreadable input or no face.
//!
//! Policy: without `--config`, the default (RGB-only board: passive required) plus every
//! sensor whose input is given (`--ir` requires the IR check, `--depth` the depth check; the IR
//! emitter differential is used iff `--ir-off` is given). With `--config FILE` (a `[liveness]`
//! table, or its keys at top level) the file decides, and a required sensor without input
//! denies. Geometry: `--registration FILE` (the HAL's calibration TOML), else all sensors are
//! assumed co-registered with the RGB camera (same optical centre and axis, e.g. an aligned
//! RGB-D module), with intrinsics from the depth file header or a `--hfov` field of view.
//! Depth files: 16-bit greyscale PNG in millimetres or FGDEPTH1 (see `liveness::depth_file`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use facegate::detect::largest;
use facegate::hal::registration::CameraModel;
use facegate::hal::{GreyFrame, Registration};
use facegate::liveness::fusion::{co_registered, intrinsics_for_hfov};
use facegate::liveness::{
    CheckKind, Evidence, IrPair, LivenessConfig, LivenessPolicy, PassiveAntiSpoof, Reading,
    depth_file,
};
use facegate::models::{self, Manifest};
use serde_json::json;

use super::common::{ModelArgs, open_image};
use super::{bad_input, print_json};

/// Arguments of `facegate liveness`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// RGB image (JPEG or PNG); the largest face is judged.
    pub image: PathBuf,
    /// NIR image of the same moment (emitter on, if there is one).
    #[arg(long, value_name = "IMAGE")]
    pub ir: Option<PathBuf>,
    /// NIR image with the emitter off (enables the emitter differential and self-test).
    #[arg(long, value_name = "IMAGE", requires = "ir")]
    pub ir_off: Option<PathBuf>,
    /// Depth map: 16-bit greyscale PNG (mm, 0 = invalid) or FGDEPTH1 file.
    #[arg(long, value_name = "FILE")]
    pub depth: Option<PathBuf>,
    /// Liveness policy TOML (`[liveness]` table or its keys at top level).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Sensor calibration TOML (`[rgb]`, `[ir]`, `[depth]`, as in the daemon's config).
    #[arg(long, value_name = "FILE")]
    pub registration: Option<PathBuf>,
    /// Horizontal field of view assumed for uncalibrated, co-registered sensors, degrees.
    #[arg(long, value_name = "DEG", default_value_t = 60.0)]
    pub hfov: f64,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub models: ModelArgs,
}

fn load_config(path: &Path) -> anyhow::Result<LivenessConfig> {
    let text =
        std::fs::read_to_string(path).map_err(|e| bad_input(format!("{}: {e}", path.display())))?;
    let value: toml::Table =
        toml::from_str(&text).map_err(|e| bad_input(format!("{}: {e}", path.display())))?;
    let body = match value.get("liveness") {
        Some(toml::Value::Table(t)) if value.len() == 1 => toml::to_string(t)?,
        _ => text,
    };
    LivenessConfig::from_toml(&body).map_err(|e| bad_input(format!("{}: {e}", path.display())))
}

fn open_grey(path: &Path) -> anyhow::Result<GreyFrame> {
    GreyFrame::open(path).map_err(|e| bad_input(format!("{}: {e}", path.display())))
}

/// Run `liveness`.
pub fn run(args: Args) -> anyhow::Result<()> {
    if !(args.hfov.is_finite() && args.hfov > 10.0 && args.hfov < 170.0) {
        return Err(bad_input("--hfov must be between 10 and 170 degrees"));
    }
    let frame = open_image(&args.image)?;
    let ir = args.ir.as_deref().map(open_grey).transpose()?;
    let ir_off = args.ir_off.as_deref().map(open_grey).transpose()?;
    let depth = args
        .depth
        .as_deref()
        .map(|p| depth_file::read(p).map_err(|e| bad_input(e.to_string())))
        .transpose()?;

    let config = match &args.config {
        Some(p) => load_config(p)?,
        None => {
            let mut c = LivenessConfig::default();
            if ir.is_some() {
                c.required.push(CheckKind::Ir);
            }
            if depth.is_some() {
                c.required.push(CheckKind::Depth);
            }
            c.ir.emitter = ir_off.is_some();
            c
        }
    };
    config.validate().map_err(|e| bad_input(e.to_string()))?;

    let registration: Registration = match &args.registration {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| bad_input(format!("{}: {e}", p.display())))?;
            toml::from_str(&text).map_err(|e| bad_input(format!("{}: {e}", p.display())))?
        }
        None => {
            let model = |w: u32, h: u32| CameraModel {
                width: w,
                height: h,
                intrinsics: intrinsics_for_hfov(w, h, args.hfov),
            };
            let rgb = model(frame.width(), frame.height());
            let ir_cam = ir.as_ref().map(|g| model(g.width(), g.height()));
            let depth_cam = depth.as_ref().map(|d| CameraModel {
                intrinsics: d.intrinsics.unwrap_or_else(|| {
                    intrinsics_for_hfov(d.map.width(), d.map.height(), args.hfov)
                }),
                ..model(d.map.width(), d.map.height())
            });
            co_registered(rgb, ir_cam, depth_cam).map_err(|e| bad_input(e.to_string()))?
        }
    };

    let vision = args.models.load_vision()?;
    let faces = vision.detect(&frame)?;
    let face = largest(&faces)
        .map(|i| faces[i])
        .ok_or_else(|| bad_input(format!("no face found in {}", args.image.display())))?;

    let passive = if config.required.contains(&CheckKind::Passive) || args.config.is_none() {
        let dir = models::resolve_models_dir(args.models.models.as_deref());
        let p = PassiveAntiSpoof::load(&Manifest::embedded(), &dir, config.passive.clone())
            .with_context(|| format!("loading anti-spoof models from {}", dir.display()))?;
        match p.score(&frame, &face) {
            Ok(s) => Reading::Present(s),
            Err(e) => Reading::Faulty(e.to_string()),
        }
    } else {
        Reading::Absent
    };

    let policy =
        LivenessPolicy::new(config, Some(registration)).map_err(|e| bad_input(e.to_string()))?;
    let evidence = Evidence {
        passive,
        ir: match &ir {
            Some(lit) => Reading::Present(IrPair {
                lit,
                unlit: ir_off.as_ref(),
            }),
            None => Reading::Absent,
        },
        depth: match &depth {
            Some(d) => Reading::Present(&d.map),
            None => Reading::Absent,
        },
        challenge: None,
    };
    let verdict = policy.evaluate(&face.bbox, &evidence);

    if args.json {
        return print_json(&json!({
            "live": verdict.live,
            "checks": verdict.checks,
            "faults": verdict.faults,
            "face": face,
        }));
    }
    let b = face.bbox;
    println!(
        "{}: largest of {} face(s) at x={:.0} y={:.0} w={:.0} h={:.0}",
        args.image.display(),
        faces.len(),
        b[0],
        b[1],
        b[2],
        b[3]
    );
    for c in &verdict.checks {
        let state = match (c.score, c.pass) {
            (_, true) => "PASS",
            (Some(_), false) => "FAIL",
            (None, _) => "----",
        };
        let score = c.score.map_or("  -  ".to_string(), |s| format!("{s:.3}"));
        let req = if c.required { "required" } else { "optional" };
        println!("  {:<9} {state} {score} [{req}] {}", c.name, c.reason);
    }
    for f in &verdict.faults {
        println!("  FAULT {:?}: {}", f.source, f.detail);
    }
    println!(
        "verdict: {}",
        if verdict.live { "LIVE" } else { "NOT LIVE" }
    );
    Ok(())
}
