//! `facegate enroll` and `facegate identify`: add a person from photos, and run the live pipeline
//! (detect → passive liveness → embed → match) on a photo against the store.

use std::path::PathBuf;

use facegate::enroll::{self, Accepted, QualityConfig, Rejection};
use facegate::hal::Frame;
use facegate::liveness::PassiveAntiSpoof;
use facegate::matcher::{DEFAULT_MARGIN, Decision, MatchParams, Matcher};
use facegate::models::{self, Manifest};
use facegate::store::{NewPerson, NewTemplate, TemplateKind, local_actor};
use serde_json::json;
use zeroize::Zeroizing;

use super::common::ModelArgs;
use super::keys::{StoreArgs, store_err};
use super::{bad_input, print_json};

/// `facegate enroll --id ID --label NAME IMAGE...`
#[derive(clap::Args, Debug)]
pub struct EnrollArgs {
    /// Person id (opaque, e.g. a badge number or UUID; stored in clear as the row key).
    #[arg(long)]
    pub id: String,
    /// Display label (encrypted at rest).
    #[arg(long)]
    pub label: String,
    /// Id in an external system (encrypted at rest).
    #[arg(long)]
    pub external_id: Option<String>,
    /// Enrol even if a face already matches another enrolled person above the threshold.
    #[arg(long)]
    pub force: bool,
    /// Photos of the person (JPEG/PNG); each must pass the quality gates.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub models: ModelArgs,
}

/// `facegate identify IMAGE`
#[derive(clap::Args, Debug)]
pub struct IdentifyArgs {
    /// Photo to identify (the largest face is used).
    pub image: PathBuf,
    /// Required lead of the best person over any other (look-alike protection).
    #[arg(long, default_value_t = DEFAULT_MARGIN)]
    pub margin: f32,
    /// Skip the passive liveness check (diagnostics only; the daemon never does).
    #[arg(long)]
    pub no_liveness: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub models: ModelArgs,
}

fn load_passive(models_arg: &ModelArgs) -> anyhow::Result<PassiveAntiSpoof> {
    let dir = models::resolve_models_dir(models_arg.models.as_deref());
    Ok(PassiveAntiSpoof::load(
        &Manifest::embedded(),
        &dir,
        Default::default(),
    )?)
}

/// Run `enroll`.
pub fn enroll(args: EnrollArgs) -> anyhow::Result<()> {
    let cfg = QualityConfig::default();
    let store = args.store.open()?;
    if store.person_exists(&args.id).map_err(store_err)? {
        return Err(bad_input(format!(
            "person `{}` is already enrolled; remove them first (`facegate people remove {}`)",
            args.id, args.id
        )));
    }
    let vision = args.models.load_vision()?;
    let passive = load_passive(&args.models)?;
    let bar = if args.json || args.images.len() < 3 {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(args.images.len() as u64)
    };
    let mut accepted: Vec<(PathBuf, Accepted)> = Vec::new();
    let mut rejected: Vec<(PathBuf, Rejection)> = Vec::new();
    for path in &args.images {
        bar.set_message(path.display().to_string());
        match Frame::open(path) {
            Err(e) => rejected.push((path.clone(), Rejection::Unreadable { why: e.to_string() })),
            Ok(frame) => match enroll::assess(&vision, Some(&passive), &frame, &cfg)? {
                Ok(a) => accepted.push((path.clone(), a)),
                Err(r) => rejected.push((path.clone(), r)),
            },
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let report_rejections = |rejected: &[(PathBuf, Rejection)]| {
        for (p, r) in rejected {
            eprintln!("rejected {}: {r}", p.display());
        }
    };
    if accepted.is_empty() {
        report_rejections(&rejected);
        return Err(bad_input(format!(
            "no usable image for `{}`: all {} rejected",
            args.id,
            rejected.len()
        )));
    }
    // Duplicate check: this face must not already belong to somebody else.
    let matcher = Matcher::from_store(
        &store,
        Some((vision.embedder.model_id(), vision.embedder.model_version())),
    )
    .map_err(store_err)?;
    let threshold = vision.threshold();
    let mut clashes = Vec::new();
    for (p, a) in &accepted {
        for (other, score) in matcher.scores(a.embedding.as_slice()) {
            if score >= threshold {
                clashes.push((p.clone(), other, score));
            }
        }
    }
    if !clashes.is_empty() && !args.force {
        report_rejections(&rejected);
        let list: Vec<String> = clashes
            .iter()
            .map(|(p, o, s)| format!("{} matches enrolled person `{o}` ({s:.3})", p.display()))
            .collect();
        return Err(bad_input(format!(
            "refusing to enrol `{}`: {}; use --force if this is really a different person",
            args.id,
            list.join("; ")
        )));
    }
    accepted.sort_by(|a, b| b.1.rank().total_cmp(&a.1.rank()));
    accepted.truncate(cfg.max_anchors);
    let templates: Vec<NewTemplate> = accepted
        .iter()
        .map(|(_, a)| NewTemplate {
            kind: TemplateKind::Anchor,
            vector: Zeroizing::new(a.embedding.as_slice().to_vec()),
            model_id: vision.embedder.model_id().to_string(),
            model_version: vision.embedder.model_version().to_string(),
            quality: a.quality.clone(),
        })
        .collect();
    let person = NewPerson {
        id: args.id.clone(),
        label: args.label.clone(),
        external_id: args.external_id.clone(),
    };
    store
        .add_person(&person, &templates, &local_actor())
        .map_err(store_err)?;
    if args.json {
        return print_json(&json!({
            "id": args.id,
            "templates": templates.len(),
            "accepted": accepted.iter().map(|(p, _)| p.display().to_string()).collect::<Vec<_>>(),
            "rejected": rejected.iter().map(|(p, r)| json!({"image": p.display().to_string(), "reason": r.to_string(), "gate": r})).collect::<Vec<_>>(),
            "forced_duplicates": clashes.len(),
        }));
    }
    report_rejections(&rejected);
    println!(
        "enrolled `{}` with {} anchor template(s) ({} image(s) rejected)",
        args.id,
        templates.len(),
        rejected.len()
    );
    Ok(())
}

/// Run `identify`.
pub fn identify(args: IdentifyArgs) -> anyhow::Result<()> {
    if !(0.0..1.0).contains(&args.margin) {
        return Err(bad_input(format!(
            "--margin {} must be in [0, 1)",
            args.margin
        )));
    }
    let frame = Frame::open(&args.image).map_err(|e| bad_input(e.to_string()))?;
    let store = args.store.open()?;
    let vision = args.models.load_vision()?;
    let matcher = Matcher::from_store(
        &store,
        Some((vision.embedder.model_id(), vision.embedder.model_version())),
    )
    .map_err(store_err)?;
    let params = MatchParams {
        threshold: vision.threshold(),
        margin: args.margin,
    };
    let out = |person: Option<String>,
               score: f32,
               margin: Option<f32>,
               decision: &str,
               reason: Option<String>,
               liveness: Option<f32>| {
        if args.json {
            print_json(&json!({
                "person": person, "score": score, "margin": margin,
                "decision": decision, "reason": reason, "liveness": liveness,
            }))
        } else {
            match &person {
                Some(p) => println!(
                    "{decision}: `{p}` (score {score:.3}, margin {})",
                    margin
                        .map(|m| format!("{m:.3}"))
                        .unwrap_or_else(|| "n/a".into())
                ),
                None => println!(
                    "{decision}: {} (best score {score:.3})",
                    reason.as_deref().unwrap_or("")
                ),
            }
            Ok(())
        }
    };
    // Liveness before the embedding: a presentation attack is refused without running SFace.
    let work = vision.working(&frame)?;
    let faces = vision.detector.detect(&work.frame)?;
    let Some(i) = facegate::detect::largest(&faces) else {
        return out(None, 0.0, None, "denied", Some("no_face".into()), None);
    };
    let mut live = None;
    if !args.no_liveness {
        let passive = load_passive(&args.models)?;
        let s = passive.score(&frame, &work.face_to_original(&faces[i]))?;
        live = Some(s.fused);
        if !passive.passes(&s) {
            return out(None, 0.0, None, "denied", Some("liveness".into()), live);
        }
    }
    let embedding = vision.embed_face(&work, &faces[i])?;
    let r = matcher.identify(embedding.as_slice(), &params);
    let reason = r.reason.map(|x| {
        serde_json::to_value(x)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default()
    });
    let decision = match r.decision {
        Decision::Granted => "granted",
        Decision::Denied => "denied",
    };
    out(r.person, r.score, r.margin, decision, reason, live)
}
