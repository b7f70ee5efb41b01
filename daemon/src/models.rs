//! Model files: the manifest, integrity checks, installation, and loading into tract.
//!
//! A face terminal must never run a model it cannot vouch for: a swapped detector or recogniser
//! silently changes who the door opens for. So the manifest (`models/models.toml`, compiled into
//! the binary) pins each file's size and SHA-256, `fetch` installs files atomically (temp file,
//! verify, fsync, rename: never a partial file under the real name), and every load hashes the
//! exact bytes it hands to tract. Errors name the file and the expected hash so a technician knows
//! what to reinstall.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tract_onnx::prelude::*;

/// The manifest text shipped with this build (`models/models.toml`).
pub const EMBEDDED_MANIFEST: &str = include_str!("../../models/models.toml");

/// Where packaged builds (yocto, .deb) install the model files.
pub const SYSTEM_MODELS_DIR: &str = "/usr/share/facegate/models";

/// Environment variable that overrides the models directory.
pub const MODELS_ENV: &str = "FACEGATE_MODELS";

/// Largest model file we will read: a corrupt size field must not make us allocate gigabytes.
const MAX_MODEL_BYTES: u64 = 256 * 1024 * 1024;

/// Everything that can go wrong with a model file. Messages name the file and expected hash.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The manifest does not parse or is inconsistent.
    #[error("model manifest invalid: {0}")]
    Manifest(String),
    /// No manifest entry has this id.
    #[error("unknown model id `{0}` (see `facegate models list`)")]
    UnknownId(String),
    /// The file is not where it should be.
    #[error(
        "model file {path} is missing (expected sha256 {expected}); install it with `facegate models fetch`"
    )]
    Missing {
        /// Full path looked at.
        path: PathBuf,
        /// SHA-256 the manifest pins.
        expected: String,
    },
    /// The file has the wrong length (truncated download, disk error, tampering).
    #[error(
        "model file {path} has {actual} bytes, manifest says {size} (expected sha256 {expected}): truncated or replaced; reinstall with `facegate models fetch`"
    )]
    Size {
        /// Full path.
        path: PathBuf,
        /// Bytes found.
        actual: u64,
        /// Bytes expected.
        size: u64,
        /// SHA-256 the manifest pins.
        expected: String,
    },
    /// The file's content hash differs from the manifest: refuse to run it.
    #[error(
        "model file {path} failed its integrity check: sha256 {actual}, expected sha256 {expected}; the file is corrupt or tampered, reinstall with `facegate models fetch`"
    )]
    Hash {
        /// Full path.
        path: PathBuf,
        /// Hash found.
        actual: String,
        /// Hash expected.
        expected: String,
    },
    /// Reading, writing or downloading failed.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Download from the upstream URL failed.
    #[error("downloading {url}: {why}")]
    Download {
        /// The URL.
        url: String,
        /// What went wrong.
        why: String,
    },
    /// The bytes verified but tract could not build a runnable plan from them.
    #[error("model {file} could not be prepared for inference: {why}")]
    Runtime {
        /// File name.
        file: String,
        /// tract's explanation.
        why: String,
    },
}

/// The role a model plays in the pipeline; lets config errors say "that is not a detector".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Face detector with landmarks (YuNet).
    Detector,
    /// Face embedder (SFace).
    Recognizer,
    /// Passive anti-spoof classifier (MiniFASNet family).
    Antispoof,
}

/// One model as pinned by the manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// Stable name used in config and on the CLI.
    pub id: String,
    /// File name inside the models directory.
    pub file: String,
    /// Lower-case hex SHA-256 of the file.
    pub sha256: String,
    /// Exact size in bytes.
    pub size: u64,
    /// What the model does.
    pub role: Role,
    /// Licence of the weights.
    pub licence: String,
    /// Upstream provenance (repository, commit, path).
    pub source: String,
    /// Download location used by `models fetch` when no mirror has the file.
    pub url: String,
    /// Input geometry: "WxH" or "dynamic".
    pub input: String,
    /// Channel order the network expects.
    pub colour: String,
    /// Pixel normalisation and crop rule.
    pub normalisation: String,
    /// Meaning of the outputs.
    pub output: String,
    /// Installed by `fetch` without naming it.
    pub default: bool,
}

impl ModelEntry {
    /// Fixed input size `(width, height)`, or `None` for a dynamic-size model.
    pub fn fixed_input(&self) -> Option<(usize, usize)> {
        let (w, h) = self.input.split_once('x')?;
        Some((w.parse().ok()?, h.parse().ok()?))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestFile {
    model: Vec<ModelEntry>,
}

/// The parsed manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// All pinned models, in manifest order.
    pub models: Vec<ModelEntry>,
}

impl Manifest {
    /// The manifest compiled into this binary: what the daemon trusts by default.
    pub fn embedded() -> Self {
        // The embedded text is checked by a unit test; failing here is a build defect.
        Self::parse(EMBEDDED_MANIFEST).expect("embedded models.toml is valid")
    }

    /// Parse and sanity-check manifest text (hash format, unique ids).
    pub fn parse(text: &str) -> Result<Self, ModelError> {
        let f: ManifestFile =
            toml::from_str(text).map_err(|e| ModelError::Manifest(e.to_string()))?;
        let mut seen = std::collections::HashSet::new();
        for m in &f.model {
            if m.sha256.len() != 64 || !m.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ModelError::Manifest(format!(
                    "{}: sha256 is not 64 hex digits",
                    m.id
                )));
            }
            if !seen.insert(m.id.clone()) {
                return Err(ModelError::Manifest(format!("duplicate id {}", m.id)));
            }
            if m.file.contains('/') || m.file.contains("..") {
                return Err(ModelError::Manifest(format!(
                    "{}: file must be a plain name",
                    m.id
                )));
            }
        }
        Ok(Self { models: f.model })
    }

    /// Look a model up by id.
    pub fn get(&self, id: &str) -> Result<&ModelEntry, ModelError> {
        self.models
            .iter()
            .find(|m| m.id == id)
            .ok_or_else(|| ModelError::UnknownId(id.to_string()))
    }

    /// Look a model up by id and check it plays `role`, so a config naming a detector where a
    /// recogniser belongs fails at start-up with a clear message.
    pub fn get_role(&self, id: &str, role: Role) -> Result<&ModelEntry, ModelError> {
        let entry = self.get(id)?;
        if entry.role != role {
            return Err(ModelError::Manifest(format!(
                "model `{}` is a {:?} model, not a {role:?} model",
                entry.id, entry.role
            )));
        }
        Ok(entry)
    }
}

/// The repository's `models/` directory this binary was built from, if it still exists.
fn repo_models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("models")
}

/// Resolve the models directory: explicit flag, else `$FACEGATE_MODELS`, else the repository's
/// `models/` (next to the manifest this binary embeds) when present, else the packaged location.
pub fn resolve_models_dir(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os(MODELS_ENV).filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    let repo = repo_models_dir();
    if repo.join("models.toml").is_file() {
        return repo.canonicalize().unwrap_or(repo);
    }
    PathBuf::from(SYSTEM_MODELS_DIR)
}

/// Default mirror for `fetch`: `../shared/models` beside the project root, when it exists.
pub fn default_mirror() -> Option<PathBuf> {
    let candidates = [
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/models"),
        PathBuf::from("../shared/models"),
    ];
    candidates.into_iter().find(|p| p.is_dir())
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Read a model file and verify size and SHA-256 on the very bytes returned, so what is checked
/// is what runs (no window between check and use).
pub fn read_verified(entry: &ModelEntry, dir: &Path) -> Result<Vec<u8>, ModelError> {
    let path = dir.join(&entry.file);
    let mut f = match fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ModelError::Missing {
                path,
                expected: entry.sha256.clone(),
            });
        }
        Err(source) => {
            return Err(ModelError::Io {
                context: format!("opening model file {}", path.display()),
                source,
            });
        }
    };
    let len = f
        .metadata()
        .map_err(|source| ModelError::Io {
            context: format!("reading {}", path.display()),
            source,
        })?
        .len();
    if len != entry.size {
        return Err(ModelError::Size {
            path,
            actual: len,
            size: entry.size,
            expected: entry.sha256.clone(),
        });
    }
    let mut bytes = Vec::with_capacity(len.min(MAX_MODEL_BYTES) as usize);
    Read::by_ref(&mut f)
        .take(MAX_MODEL_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|source| ModelError::Io {
            context: format!("reading {}", path.display()),
            source,
        })?;
    check_bytes(entry, &path, &bytes)?;
    Ok(bytes)
}

fn check_bytes(entry: &ModelEntry, path: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    if bytes.len() as u64 != entry.size {
        return Err(ModelError::Size {
            path: path.to_path_buf(),
            actual: bytes.len() as u64,
            size: entry.size,
            expected: entry.sha256.clone(),
        });
    }
    let actual = sha256_hex(bytes);
    // Not a secret: a plain comparison of public hashes is fine here.
    if !actual.eq_ignore_ascii_case(&entry.sha256) {
        return Err(ModelError::Hash {
            path: path.to_path_buf(),
            actual,
            expected: entry.sha256.clone(),
        });
    }
    Ok(())
}

/// Verify an installed file without keeping its bytes (`models verify`, `doctor`).
pub fn verify(entry: &ModelEntry, dir: &Path) -> Result<PathBuf, ModelError> {
    read_verified(entry, dir).map(|_| dir.join(&entry.file))
}

/// Where `fetch` got a file from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FetchOutcome {
    /// Already installed and verified; nothing written.
    AlreadyPresent,
    /// Copied from the mirror directory.
    Mirror(PathBuf),
    /// Downloaded from the manifest URL.
    Downloaded(String),
}

/// Install one model into `dest`: keep a verified existing copy, else copy it from `mirror`,
/// else download it from its URL. The bytes are verified before they are renamed into place;
/// a failed attempt leaves no file under the model's name.
pub fn fetch_one(
    entry: &ModelEntry,
    mirror: Option<&Path>,
    dest: &Path,
) -> Result<FetchOutcome, ModelError> {
    if verify(entry, dest).is_ok() {
        return Ok(FetchOutcome::AlreadyPresent);
    }
    fs::create_dir_all(dest).map_err(|source| ModelError::Io {
        context: format!("creating {}", dest.display()),
        source,
    })?;
    let target = dest.join(&entry.file);
    let mut mirror_err = None;
    if let Some(m) = mirror {
        let src = m.join(&entry.file);
        if src.is_file() {
            match read_verified(entry, m) {
                Ok(bytes) => {
                    install_atomically(&target, &bytes)?;
                    return Ok(FetchOutcome::Mirror(src));
                }
                // A bad mirror copy is reported, then we still try the upstream URL.
                Err(e) => mirror_err = Some(e),
            }
        }
    }
    match download(&entry.url) {
        Ok(bytes) => {
            check_bytes(entry, Path::new(&entry.url), &bytes)?;
            install_atomically(&target, &bytes)?;
            Ok(FetchOutcome::Downloaded(entry.url.clone()))
        }
        Err(e) => Err(mirror_err.unwrap_or(e)),
    }
}

fn download(url: &str) -> Result<Vec<u8>, ModelError> {
    let err = |why: String| ModelError::Download {
        url: url.to_string(),
        why,
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(300)))
        .build()
        .into();
    let mut resp = agent.get(url).call().map_err(|e| err(e.to_string()))?;
    resp.body_mut()
        .with_config()
        .limit(MAX_MODEL_BYTES)
        .read_to_vec()
        .map_err(|e| err(e.to_string()))
}

/// Write `bytes` to a sibling temp file, fsync it, rename it over `target`, fsync the directory.
fn install_atomically(target: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    let dir = target.parent().unwrap_or(Path::new("."));
    let io = |context: String| move |source| ModelError::Io { context, source };
    // Unique per process and per call, so concurrent installers never share a temp file.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{}.part-{}-{}",
        target
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("model"),
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = fs::File::create(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
        f.write_all(bytes)
            .map_err(io(format!("writing {}", tmp.display())))?;
        f.sync_all()
            .map_err(io(format!("syncing {}", tmp.display())))?;
        fs::rename(&tmp, target).map_err(io(format!("installing {}", target.display())))?;
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// An optimised plan with one execution state kept between runs.
///
/// `SimplePlan::run` builds a fresh state (every op's state, the value table) per call; a
/// terminal runs the same network on every frame, so the state is built once and reused. Same
/// plan, same kernels: outputs are identical. A caller that finds the state busy (another thread
/// is running this model) gets a fresh state instead of waiting.
pub struct Runner {
    plan: Arc<TypedRunnableModel>,
    state: Mutex<Option<TypedSimpleState>>,
}

impl Runner {
    /// Wrap a plan; the state is created on the first run.
    pub fn new(plan: Arc<TypedRunnableModel>) -> Self {
        Self {
            plan,
            state: Mutex::new(None),
        }
    }

    /// The plan this runner executes.
    pub fn plan(&self) -> &Arc<TypedRunnableModel> {
        &self.plan
    }

    /// Run the network on `inputs`, reusing the kept state when it is free.
    pub fn run(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let Ok(mut guard) = self.state.try_lock() else {
            return self.plan.run(inputs);
        };
        let state = match guard.take() {
            Some(s) => s,
            None => self.plan.spawn()?,
        };
        let mut state = state;
        let out = state.run(inputs);
        // A failed run may leave partial values behind: only a clean state is kept.
        if out.is_ok() {
            *guard = Some(state);
        }
        out
    }
}

static INFERENCE_THREADS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);

/// Let every network run spread its matrix products over `n` threads (tract's rayon pool),
/// process-wide; `1` (the default) runs them on the calling thread.
///
/// A terminal analyses one face at a time, so the latency of that one analysis is what the person
/// at the door waits for: on a multi-core board one run's convolutions can share the cores.
/// Each count's pool is started once and kept (benchmarks switch between counts); runs already
/// in progress finish on the executor they started with. Results do not depend on the count:
/// every output tile is computed by one thread in the same order (a golden test checks it).
pub fn set_inference_threads(n: usize) -> Result<(), ModelError> {
    use tract_linalg::multithread::{Executor, set_default_executor};
    static POOLS: Mutex<Vec<(usize, Executor)>> = Mutex::new(Vec::new());
    let n = n.max(1);
    let executor = if n == 1 {
        Executor::SingleThread
    } else {
        let mut pools = POOLS.lock().unwrap_or_else(|p| p.into_inner());
        match pools.iter().find(|(k, _)| *k == n) {
            Some((_, e)) => e.clone(),
            None => {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .thread_name(|i| format!("facegate-infer-{i}"))
                    .build()
                    .map_err(|e| ModelError::Runtime {
                        file: "(inference thread pool)".into(),
                        why: format!("cannot start {n} inference threads: {e}"),
                    })?;
                let e = Executor::MultiThread(Arc::new(pool));
                pools.push((n, e.clone()));
                e
            }
        }
    };
    set_default_executor(executor);
    INFERENCE_THREADS.store(n, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// `n` inference threads, or one per CPU core for `0` (the configuration's "auto").
pub fn resolve_inference_threads(n: usize) -> usize {
    if n == 0 {
        std::thread::available_parallelism().map_or(1, |c| c.get())
    } else {
        n
    }
}

/// Threads a network run may currently use (see [`set_inference_threads`]), for reports.
pub fn inference_threads() -> usize {
    INFERENCE_THREADS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Give the heap pages freed while loading (ONNX protobufs, unfolded weights, intermediate
/// graphs) back to the OS. glibc keeps freed memory for reuse, so without this a terminal's
/// resident size stays near its load-time peak for its whole life. No-op off glibc.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own arenas and has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A model compiled into an optimised tract plan, with the facts we need at run time.
pub struct LoadedModel {
    /// The manifest entry it was loaded from.
    pub entry: ModelEntry,
    /// The runnable plan (shared, cheap to clone).
    pub plan: Arc<TypedRunnableModel>,
    /// Wall time spent verifying, parsing and optimising (reported by `bench`).
    pub load_time: std::time::Duration,
    runner: Runner,
}

impl LoadedModel {
    /// Run the model, reusing its execution state (see [`Runner`]).
    pub fn run(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        self.runner.run(inputs)
    }
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("id", &self.entry.id)
            .field("load_time", &self.load_time)
            .finish_non_exhaustive()
    }
}

/// View a network output as a flat `f32` slice (row-major), or say why it is not one.
pub fn f32_output(v: &TValue) -> Result<&[f32], String> {
    v.try_as_plain_ram()
        .and_then(|p| p.as_slice::<f32>())
        .map_err(|e| format!("{e:#}"))
}

/// Parse verified ONNX bytes into an inference model, folding constant block-quantized
/// `DequantizeLinear` nodes first (see [`crate::onnx_fold`]).
pub fn parse_onnx(entry: &ModelEntry, bytes: &[u8]) -> Result<InferenceModel, ModelError> {
    model_from_proto(entry, parse_proto(entry, bytes)?, Lowering::Facegate)
}

/// How ONNX operators become tract operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lowering {
    /// tract's lowering with our faster `PRelu` and 2×2 `MaxPool` ([`crate::tract_ops`]): what
    /// every model runs with.
    Facegate,
    /// tract's own operators only: the yardstick the golden tests compare [`Lowering::Facegate`]
    /// against, bit for bit.
    TractStock,
}

fn onnx_loader_with(lowering: Lowering) -> tract_onnx::Onnx {
    let onnx = match lowering {
        Lowering::Facegate => crate::tract_ops::onnx_loader_ops(tract_onnx::onnx()),
        Lowering::TractStock => tract_onnx::onnx(),
    };
    // Declared shapes are ignored: input sizes are set per plan (YuNet runs at the frame size).
    onnx.with_ignore_value_info(true)
        .with_ignore_output_shapes(true)
}

fn onnx_loader() -> tract_onnx::Onnx {
    onnx_loader_with(Lowering::Facegate)
}

fn parse_proto(entry: &ModelEntry, bytes: &[u8]) -> Result<tract_onnx::pb::ModelProto, ModelError> {
    onnx_loader()
        .proto_model_for_read(&mut &bytes[..])
        .map_err(|e| ModelError::Runtime {
            file: entry.file.clone(),
            why: format!("{e:#}"),
        })
}

/// Fold, then build tract's model; the protobuf is dropped (and its pages returned) before the
/// caller optimises, so the folded fp32 weights exist twice only for the conversion itself.
fn model_from_proto(
    entry: &ModelEntry,
    mut proto: tract_onnx::pb::ModelProto,
    lowering: Lowering,
) -> Result<InferenceModel, ModelError> {
    let rt = |why: String| ModelError::Runtime {
        file: entry.file.clone(),
        why,
    };
    crate::onnx_fold::fold_constant_dequantize(&mut proto).map_err(|e| rt(e.to_string()))?;
    let model = onnx_loader_with(lowering)
        .model_for_proto_model(&proto)
        .map_err(|e| rt(format!("{e:#}")));
    drop(proto);
    release_freed_memory();
    model
}

/// Verify, parse and optimise a model for a fixed NCHW f32 input shape.
pub fn load_model(
    entry: &ModelEntry,
    dir: &Path,
    input_shape: &[usize],
) -> Result<LoadedModel, ModelError> {
    let start = Instant::now();
    let bytes = read_verified(entry, dir)?;
    // The file's bytes are not needed once parsed: free them before the weights are unfolded.
    let proto = parse_proto(entry, &bytes)?;
    drop(bytes);
    let plan = optimise(
        entry,
        model_from_proto(entry, proto, Lowering::Facegate)?,
        input_shape,
    )?;
    release_freed_memory();
    Ok(LoadedModel {
        entry: entry.clone(),
        runner: Runner::new(plan.clone()),
        plan,
        load_time: start.elapsed(),
    })
}

/// Build an optimised plan for one input shape from already-verified bytes (dynamic models
/// get one plan per frame geometry).
pub fn plan_for_shape(
    entry: &ModelEntry,
    bytes: &[u8],
    input_shape: &[usize],
) -> Result<Arc<TypedRunnableModel>, ModelError> {
    plan_for_shape_with(entry, bytes, input_shape, Lowering::Facegate)
}

/// [`plan_for_shape`] with a chosen [`Lowering`] (equivalence tests and benchmarks).
pub fn plan_for_shape_with(
    entry: &ModelEntry,
    bytes: &[u8],
    input_shape: &[usize],
    lowering: Lowering,
) -> Result<Arc<TypedRunnableModel>, ModelError> {
    let model = model_from_proto(entry, parse_proto(entry, bytes)?, lowering)?;
    optimise(entry, model, input_shape)
}

fn optimise(
    entry: &ModelEntry,
    model: InferenceModel,
    input_shape: &[usize],
) -> Result<Arc<TypedRunnableModel>, ModelError> {
    model
        .with_input_fact(0, f32::fact(input_shape).into())
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .map_err(|e| ModelError::Runtime {
            file: entry.file.clone(),
            why: format!("{e:#}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_manifest_is_valid_and_complete() {
        let m = Manifest::embedded();
        for id in [
            "yunet_640",
            "yunet_320",
            "yunet_dynamic",
            "sface",
            "minifasnet_v2",
        ] {
            m.get(id).unwrap();
        }
        assert_eq!(m.get("yunet_640").unwrap().fixed_input(), Some((640, 640)));
        assert_eq!(m.get("yunet_dynamic").unwrap().fixed_input(), None);
        assert!(matches!(m.get("nope"), Err(ModelError::UnknownId(_))));
    }

    #[test]
    fn manifest_rejects_bad_hash_and_duplicates() {
        let one = r#"[[model]]
id = "a"
file = "a.onnx"
sha256 = "SHA"
size = 1
role = "detector"
licence = "x"
source = "x"
url = "x"
input = "1x1"
colour = "BGR"
normalisation = "x"
output = "x"
default = true
"#;
        assert!(Manifest::parse(one).is_err());
        let ok = one.replace("SHA", &"a".repeat(64));
        assert!(Manifest::parse(&ok).is_ok());
        assert!(Manifest::parse(&format!("{ok}\n{ok}")).is_err());
        assert!(Manifest::parse(&ok.replace("a.onnx", "../a.onnx")).is_err());
    }

    fn entry_for(bytes: &[u8]) -> ModelEntry {
        let mut e = Manifest::embedded().get("yunet_640").unwrap().clone();
        e.file = "m.onnx".into();
        e.size = bytes.len() as u64;
        e.sha256 = sha256_hex(bytes);
        e.url = "http://127.0.0.1:9/unreachable".into();
        e
    }

    #[test]
    fn verify_detects_missing_truncated_and_tampered() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = b"model bytes".to_vec();
        let e = entry_for(&bytes);
        let err = verify(&e, dir.path()).unwrap_err();
        assert!(matches!(err, ModelError::Missing { .. }));
        assert!(err.to_string().contains(&e.sha256));
        fs::write(dir.path().join("m.onnx"), &bytes[..5]).unwrap();
        let err = verify(&e, dir.path()).unwrap_err();
        assert!(matches!(err, ModelError::Size { .. }), "{err}");
        assert!(err.to_string().contains("m.onnx"));
        let mut bad = bytes.clone();
        bad[0] ^= 1;
        fs::write(dir.path().join("m.onnx"), &bad).unwrap();
        let err = verify(&e, dir.path()).unwrap_err();
        assert!(matches!(err, ModelError::Hash { .. }), "{err}");
        assert!(err.to_string().contains(&e.sha256));
        fs::write(dir.path().join("m.onnx"), &bytes).unwrap();
        verify(&e, dir.path()).unwrap();
    }

    #[test]
    fn fetch_from_mirror_is_atomic_and_refuses_bad_copies() {
        let mirror = tempfile::tempdir().unwrap();
        let dest = tempfile::tempdir().unwrap();
        let bytes = b"the real model".to_vec();
        let e = entry_for(&bytes);
        // A tampered mirror copy and an unreachable URL: error, and nothing left in dest.
        fs::write(mirror.path().join("m.onnx"), b"the fake model").unwrap();
        let err = fetch_one(&e, Some(mirror.path()), dest.path()).unwrap_err();
        assert!(matches!(err, ModelError::Hash { .. }), "{err}");
        assert_eq!(fs::read_dir(dest.path()).unwrap().count(), 0);
        // A good mirror copy installs; a second fetch is a no-op.
        fs::write(mirror.path().join("m.onnx"), &bytes).unwrap();
        let out = fetch_one(&e, Some(mirror.path()), dest.path()).unwrap();
        assert!(matches!(out, FetchOutcome::Mirror(_)));
        assert_eq!(fs::read(dest.path().join("m.onnx")).unwrap(), bytes);
        assert_eq!(
            fetch_one(&e, Some(mirror.path()), dest.path()).unwrap(),
            FetchOutcome::AlreadyPresent
        );
        assert_eq!(fs::read_dir(dest.path()).unwrap().count(), 1);
    }

    #[test]
    fn fetch_downloads_over_http_and_verifies() {
        use std::net::TcpListener;
        let bytes = b"served model bytes".to_vec();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let served = bytes.clone();
        let server = std::thread::spawn(move || {
            // Two requests: one good body, one tampered body.
            for body in [served.clone(), b"tampered model bytes".to_vec()] {
                let (mut s, _) = listener.accept().unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                s.write_all(head.as_bytes()).unwrap();
                s.write_all(&body).unwrap();
            }
        });
        let mut e = entry_for(&bytes);
        e.url = format!("http://127.0.0.1:{port}/m.onnx");
        let dest = tempfile::tempdir().unwrap();
        let out = fetch_one(&e, None, dest.path()).unwrap();
        assert_eq!(out, FetchOutcome::Downloaded(e.url.clone()));
        assert_eq!(fs::read(dest.path().join("m.onnx")).unwrap(), bytes);
        let dest2 = tempfile::tempdir().unwrap();
        e.size = 20; // the tampered body has the same length as the real one
        e.sha256 = sha256_hex(b"served model bytes!!");
        let err = fetch_one(&e, None, dest2.path()).unwrap_err();
        assert!(matches!(err, ModelError::Hash { .. }), "{err}");
        assert_eq!(fs::read_dir(dest2.path()).unwrap().count(), 0);
        server.join().unwrap();
    }
}
