//! `facegate detect | embed | compare`: the vision core on still images, for people and scripts.
//!
//! JSON contract (scripts and tests rely on it; fields may be added, never renamed):
//! detect → `{"faces":[{"box":[x,y,w,h],"landmarks":[[x,y]×5],"score":s}],"width":W,"height":H}`;
//! embed → `{"embedding":[128 floats],"face":{...}}`; compare → `{"similarity":s,"threshold":t,
//! "same_person":bool}`. Coordinates are in the original image.

use std::path::PathBuf;

use facegate::detect::Face;
use serde_json::json;

use super::common::{ModelArgs, open_image};
use super::{bad_input, print_json};

/// `facegate detect IMAGE`.
#[derive(clap::Args, Debug)]
pub struct DetectArgs {
    /// Image file (JPEG or PNG).
    pub image: PathBuf,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub models: ModelArgs,
}

/// `facegate embed IMAGE`.
#[derive(clap::Args, Debug)]
pub struct EmbedArgs {
    /// Image file (JPEG or PNG); the largest face is embedded.
    pub image: PathBuf,
    /// Machine-readable output, including the vector itself (biometric data: handle with care).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub models: ModelArgs,
}

/// `facegate compare IMAGE_A IMAGE_B`.
#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// First image.
    pub image_a: PathBuf,
    /// Second image.
    pub image_b: PathBuf,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub models: ModelArgs,
}

fn face_line(f: &Face) -> String {
    let lm: Vec<String> = f
        .landmarks
        .iter()
        .map(|p| format!("({:.1},{:.1})", p[0], p[1]))
        .collect();
    format!(
        "box x={:.1} y={:.1} w={:.1} h={:.1} score={:.3} landmarks {}",
        f.bbox[0],
        f.bbox[1],
        f.bbox[2],
        f.bbox[3],
        f.score,
        lm.join(" ")
    )
}

/// Run `detect`.
pub fn detect(args: DetectArgs) -> anyhow::Result<()> {
    let frame = open_image(&args.image)?;
    let vision = args.models.load_vision()?;
    let faces = vision.detect(&frame)?;
    if args.json {
        return print_json(&json!({
            "faces": faces,
            "width": frame.width(),
            "height": frame.height(),
        }));
    }
    println!(
        "{}: {}x{}, {} face(s)",
        args.image.display(),
        frame.width(),
        frame.height(),
        faces.len()
    );
    for (i, f) in faces.iter().enumerate() {
        println!("  #{i} {}", face_line(f));
    }
    Ok(())
}

fn largest(
    vision: &facegate::vision::Vision,
    path: &std::path::Path,
) -> anyhow::Result<facegate::vision::FaceEmbedding> {
    let frame = open_image(path)?;
    vision
        .largest_face_embedding(&frame)?
        .ok_or_else(|| bad_input(format!("no face found in {}", path.display())))
}

/// Run `embed`.
pub fn embed(args: EmbedArgs) -> anyhow::Result<()> {
    let vision = args.models.load_vision()?;
    let fe = largest(&vision, &args.image)?;
    if args.json {
        return print_json(&json!({
            "embedding": fe.embedding.as_slice(),
            "face": fe.face,
            "model": vision.embedder.model_id(),
        }));
    }
    println!(
        "{}: largest of {} face(s): {}",
        args.image.display(),
        fe.faces_in_frame,
        face_line(&fe.face)
    );
    println!(
        "embedding: {} dims, L2 norm {:.4} (values only with --json)",
        fe.embedding.as_slice().len(),
        fe.embedding.norm()
    );
    Ok(())
}

/// Run `compare`.
pub fn compare(args: CompareArgs) -> anyhow::Result<()> {
    let vision = args.models.load_vision()?;
    let a = largest(&vision, &args.image_a)?;
    let b = largest(&vision, &args.image_b)?;
    let similarity = a.embedding.cosine(&b.embedding);
    let threshold = vision.threshold();
    let same = similarity >= threshold;
    if args.json {
        return print_json(&json!({
            "similarity": similarity,
            "threshold": threshold,
            "same_person": same,
        }));
    }
    println!(
        "similarity {similarity:.4} (threshold {threshold}): {}",
        if same {
            "same person"
        } else {
            "different people"
        }
    );
    Ok(())
}
