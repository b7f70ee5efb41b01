//! Shared helpers for facegate's end-to-end and golden tests.
//!
//! The fixtures (photos, reference outputs, model files) live in `../shared/` beside the project
//! root and are never copied into the repository. These helpers find them, install the models
//! from that mirror once per test process (verified, atomic: the same code path as
//! `facegate models fetch`), and locate the `facegate` binary built by `cargo test --workspace`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use facegate::hal::Frame;
use facegate::models::{self, Manifest};
use facegate::vision::{Vision, VisionConfig};
use serde::Deserialize;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `../shared` beside the project root (override with `$FACEGATE_SHARED`). Panics with a clear
/// message when absent: these tests must never silently skip.
pub fn shared_dir() -> PathBuf {
    let dir = std::env::var_os("FACEGATE_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("../shared"));
    assert!(
        dir.join("faces").is_dir() && dir.join("models").is_dir(),
        "test fixtures not found at {} (expected shared/faces and shared/models beside the project root; set FACEGATE_SHARED)",
        dir.display()
    );
    dir
}

/// A fixture path under `shared/faces`.
pub fn face(rel: &str) -> PathBuf {
    shared_dir().join("faces").join(rel)
}

/// The models directory the tests use (the repository's `models/`), with every model from the
/// manifest installed from the shared mirror (verified) on first use in this process.
pub fn models_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = repo_root().join("models");
        let mirror = shared_dir().join("models");
        for e in &Manifest::embedded().models {
            if let Err(err) = models::fetch_one(e, Some(&mirror), &dir) {
                panic!("installing model {} for tests: {err}", e.id);
            }
        }
        dir
    })
    .clone()
}

/// The default vision core, loaded once per test process.
pub fn vision() -> &'static Vision {
    static V: OnceLock<Vision> = OnceLock::new();
    V.get_or_init(|| {
        Vision::load(
            &Manifest::embedded(),
            &models_dir(),
            &VisionConfig::default(),
        )
        .expect("default models load")
    })
}

/// The `facegate` binary built alongside these tests (`cargo test --workspace` builds it), or
/// `$FACEGATE_BIN` when set: a target directory shared between checkouts holds whichever
/// checkout's binary was linked last.
pub fn facegate_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("FACEGATE_BIN").filter(|v| !v.is_empty()) {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target/<profile>/facegate
    let profile_dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("test binary lives in target/<profile>/deps");
    let bin = profile_dir.join("facegate");
    assert!(
        bin.is_file(),
        "{} not built: run the tests with `cargo test --workspace` (or `cargo build -p facegate` first)",
        bin.display()
    );
    bin
}

/// Run the CLI with `args`; models come from the test models directory unless overridden.
pub fn run_cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(facegate_bin())
        .args(args)
        .env("FACEGATE_MODELS", models_dir())
        .output()
        .expect("spawn facegate")
}

/// One face as listed in `reference/opencv_yunet_sface.json`.
#[derive(Debug, Deserialize, Clone)]
pub struct RefFace {
    /// `[x, y, w, h]`
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    /// Five landmarks.
    pub landmarks: [[f32; 2]; 5],
    /// OpenCV's score.
    pub score: f32,
}

/// One image of the OpenCV reference run.
#[derive(Debug, Deserialize, Clone)]
pub struct RefImage {
    /// Path under `shared/faces`.
    pub file: String,
    /// Width of the (resized) image the reference ran on.
    pub width: u32,
    /// Height of that image.
    pub height: u32,
    /// Faces found by OpenCV.
    pub faces: Vec<RefFace>,
    /// Index of the largest face.
    pub largest_face: Option<usize>,
    /// SFace feature of the largest face (not normalised).
    pub embedding: Option<Vec<f32>>,
}

#[derive(Deserialize)]
struct RefFile {
    images: Vec<RefImage>,
}

/// The OpenCV YuNet + SFace reference outputs.
pub fn opencv_reference() -> Vec<RefImage> {
    let p = shared_dir().join("reference/opencv_yunet_sface.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str::<RefFile>(&text)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .images
}

/// Load a fixture and bring it to the size the reference ran on (long side at most 640, OpenCV
/// `INTER_LINEAR`), so our outputs are comparable coordinate for coordinate.
pub fn reference_frame(img: &RefImage) -> Frame {
    let f = Frame::open(face(&img.file)).expect("fixture decodes");
    if f.width() == img.width && f.height() == img.height {
        f
    } else {
        f.resize_linear(img.width, img.height).expect("resize")
    }
}

/// Cosine similarity of two raw vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

/// The dev people (`shared/faces/dev/<person>/*.jpg`, excluding `scenes`), sorted.
pub fn dev_people() -> Vec<(String, Vec<PathBuf>)> {
    let root = face("dev");
    let mut people: Vec<(String, Vec<PathBuf>)> = std::fs::read_dir(&root)
        .expect("dev dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir() && e.file_name() != "scenes")
        .map(|e| {
            let mut imgs = facegate::bench::image_files(&e.path()).expect("list");
            imgs.sort();
            (e.file_name().to_string_lossy().into_owned(), imgs)
        })
        .collect();
    people.sort();
    people
}

/// The passive anti-spoof models, loaded once per test process with the default fusion settings.
pub fn passive() -> &'static facegate::liveness::PassiveAntiSpoof {
    static P: OnceLock<facegate::liveness::PassiveAntiSpoof> = OnceLock::new();
    P.get_or_init(|| {
        facegate::liveness::PassiveAntiSpoof::load(
            &Manifest::embedded(),
            &models_dir(),
            Default::default(),
        )
        .expect("anti-spoof models load")
    })
}

/// Run the CLI, require exit 0, and parse its stdout as one JSON value.
pub fn run_cli_json(args: &[&str]) -> serde_json::Value {
    let out = run_cli(args);
    assert!(
        out.status.success(),
        "facegate {args:?}: exit {:?}, stderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is JSON")
}

pub mod mosquitto;
