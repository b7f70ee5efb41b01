//! SIMULATED presentation-attack suite: deterministic, seeded NIR frame pairs and depth maps for
//! a live face and five attacks, to exercise the IR and depth checks and the fusion policy.
//!
//! **Everything here is simulated.** These are not recordings of real attacks; they are scenes
//! rendered from a simple physical model, so numbers measured on them show that the checks
//! implement their physics and how the layers complement each other, not how they perform on
//! real attacks. The passive RGB models are not exercised (no RGB images are rendered).
//!
//! # Sensor model
//! - One 320×240 NIR camera that is also the depth reference (as in active-stereo modules whose
//!   left IR imager defines the depth image), 60° horizontal field of view (fx = fy ≈ 277 px),
//!   co-registered with the RGB camera ([`SyntheticSample::registration`]): the RGB face box the
//!   detector would report equals the box in NIR/depth pixels.
//! - NIR pixel (fraction of full scale, 10-bit) = ρ·(A + E·cosθ·(500 mm / z)²) + noise, where ρ
//!   is the surface's NIR albedo, A ∈ [0.01, 0.10] the ambient NIR (indoor to shaded
//!   entrance), E the emitter (co-located point source; 0 with the emitter off or dead), cosθ
//!   Lambert's law for the surface normal against the ray. Noise: Gaussian, σ = 0.002 +
//!   0.008·√value (read + shot noise). Values clip at full scale. Exposure and gain are fixed.
//! - Depth (mm, u16): true z + Gaussian noise σ = 0.8 mm·(z/500 mm)² (stereo-like quadratic
//!   growth), 0 beyond 3 m or nearer than 100 mm, where neighbouring true depths jump by more
//!   than 30 mm (the sensors' flying-pixel filter), and at random with a per-material rate
//!   (2 % matte surfaces, 30 % hair, 40 % screen glass: specular, returns no pattern/ToF echo).
//!
//! # Scene model (per sample, parameters drawn uniformly)
//! - **Live face**: head = half-ellipsoid, half-width a ∈ [68, 85] mm, half-height 1.3a, depth
//!   0.95a; nose as an elongated bump 16–26 mm high (σ ≈ 8 × 18 mm); eye sockets −6 mm; tilt up to
//!   ±14° yaw / ±11° pitch (as a linear depth term); nose tip at 350–800 mm. NIR albedo of skin
//!   ρ ∈ [0.42, 0.68] (850 nm: melanin absorbs far less than in the visible, so skin tones
//!   differ less), times a feature pattern (brows, eyes, nostrils, lips, hairline darker). Neck,
//!   torso and a wall behind. The detector box spans 1.9a (cheek to cheek) at the face.
//! - **Flat print**: paper sheet (ρ ∈ [0.70, 0.88]) 150–297 mm tall, face printed at 0.75–1.1×
//!   life size, ink NIR absorption κ ∈ [0.05, 0.7] (dye inkjet inks are nearly NIR-transparent,
//!   carbon toner/pigment absorbs), held flat at 300–700 mm, tilted up to ±19°/±17°, by two
//!   hands (skin) at its lower corners, attacker's body 250–400 mm behind.
//! - **Curved print**: the same print bent around a vertical axis, radius 110–250 mm, convex
//!   toward the camera.
//! - **Screen replay**: phone (face half-width 25–35 mm, at 200–450 mm) or tablet (45–75 mm, at
//!   300–600 mm) showing the face: the display emits no NIR and its glass reflects ρ = 0.04; bezel
//!   ρ = 0.06; held in one hand gripping its lower edge.
//! - **Photo held close**: small print (face half-width 18–32 mm) at 150–300 mm, so that its
//!   image is as large as a real face further away.
//! - **Rigid 3D mask**: the live face geometry (drawn the same way) in a rigid material — painted
//!   resin, plaster, PLA, silicone — NIR albedo ρ ∈ [0.30, 0.95] with painted features, worn by
//!   the attacker.
//!
//! Randomness comes from SplitMix64 seeded with (seed, kind, index), so a sample is reproducible
//! across platforms and dependency versions.

use facegate_hal::registration::{CameraModel, RegistrationError};
use facegate_hal::{DepthMap, GreyFrame, Intrinsics, PixelBox, Registration};
use serde::Serialize;

/// Image width of the simulated sensors.
pub const WIDTH: u32 = 320;
/// Image height of the simulated sensors.
pub const HEIGHT: u32 = 240;
const REF_MM: f64 = 500.0;
/// Emitter strength (fraction of full scale for ρ = 1, cosθ = 1, at 500 mm). With this value a
/// mid-tone face (ρ = 0.55) at 500 mm rises by ≈ 0.30 over its central region, the default
/// `liveness.ir.skin_rise_at_reference`: the simulated device is "calibrated".
pub const EMITTER: f64 = 0.66;

/// What a simulated sample presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttackKind {
    /// A real (simulated) face: bona fide presentation.
    Live,
    /// A flat printed photo.
    FlatPrint,
    /// A printed photo bent around a vertical axis.
    CurvedPrint,
    /// A phone or tablet screen replaying the face.
    ScreenReplay,
    /// A small photo held close to the camera.
    HeldClosePhoto,
    /// A rigid 3D mask.
    RigidMask,
}

impl AttackKind {
    /// Every kind, live first.
    pub const ALL: [AttackKind; 6] = [
        AttackKind::Live,
        AttackKind::FlatPrint,
        AttackKind::CurvedPrint,
        AttackKind::ScreenReplay,
        AttackKind::HeldClosePhoto,
        AttackKind::RigidMask,
    ];

    /// Stable name (reports, JSON).
    pub fn name(self) -> &'static str {
        match self {
            AttackKind::Live => "live",
            AttackKind::FlatPrint => "flat_print",
            AttackKind::CurvedPrint => "curved_print",
            AttackKind::ScreenReplay => "screen_replay",
            AttackKind::HeldClosePhoto => "held_close_photo",
            AttackKind::RigidMask => "rigid_mask",
        }
    }

    /// Whether this is an attack (everything but [`AttackKind::Live`]).
    pub fn is_attack(self) -> bool {
        self != AttackKind::Live
    }
}

/// Ground truth of a sample, for reports and tests.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SampleTruth {
    /// Distance of the presented face's nearest point (nose tip / medium), mm.
    pub distance_mm: f64,
    /// Width of the presented face box in the scene, mm.
    pub face_width_mm: f64,
    /// NIR albedo of the presented surface.
    pub nir_albedo: f64,
}

/// One SIMULATED presentation: NIR on/off frames, depth map, and the face box the RGB detector
/// would report.
#[derive(Debug, Clone)]
pub struct SyntheticSample {
    /// What is presented.
    pub kind: AttackKind,
    /// Index within the suite.
    pub index: usize,
    /// Face box `[x, y, w, h]` in RGB pixels (= NIR and depth pixels: co-registered).
    pub face_box: [f32; 4],
    /// NIR frame with the emitter on.
    pub ir_on: GreyFrame,
    /// NIR frame with the emitter off.
    pub ir_off: GreyFrame,
    /// Depth map, mm.
    pub depth: DepthMap,
    /// Ground truth.
    pub truth: SampleTruth,
}

impl SyntheticSample {
    /// Intrinsics shared by the simulated RGB, NIR and depth cameras.
    pub fn intrinsics() -> Intrinsics {
        super::fusion::intrinsics_for_hfov(WIDTH, HEIGHT, 60.0)
    }

    /// The co-registered calibration of the simulated sensors.
    pub fn registration() -> Result<Registration, RegistrationError> {
        let cam = CameraModel {
            width: WIDTH,
            height: HEIGHT,
            intrinsics: Self::intrinsics(),
        };
        super::fusion::co_registered(cam, Some(cam), Some(cam))
    }

    /// The face box as a [`PixelBox`].
    pub fn pixel_box(&self) -> PixelBox {
        let b = self.face_box;
        PixelBox {
            x0: b[0],
            y0: b[1],
            x1: b[0] + b[2],
            y1: b[1] + b[3],
        }
    }
}

/// SplitMix64: tiny, fast, and the same on every platform and `rand` version.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, kind: AttackKind, index: usize) -> Self {
        let k = AttackKind::ALL.iter().position(|&a| a == kind).unwrap_or(0) as u64;
        let mut r = Rng(seed
            ^ (k + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (index as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
        r.next();
        r
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn range(&mut self, a: f64, b: f64) -> f64 {
        a + (b - a) * self.unit()
    }

    fn normal(&mut self) -> f64 {
        let u1 = self.unit().max(1e-12);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// A head-shaped surface (live face or rigid mask).
#[derive(Debug, Clone, Copy)]
struct Head {
    cx: f64,
    cy: f64,
    a: f64,
    b: f64,
    c: f64,
    nose: f64,
    nose_sx: f64,
    nose_sy: f64,
    tilt_x: f64,
    tilt_y: f64,
    /// Distance of the ellipsoid's base plane.
    base: f64,
    rho: f64,
    hair_dropout: bool,
}

impl Head {
    /// Height toward the camera at local (x, y), None outside the outline.
    fn height(&self, x: f64, y: f64) -> Option<f64> {
        let (u, v) = (x / self.a, y / self.b);
        let r2 = u * u + v * v;
        if r2 >= 1.0 {
            return None;
        }
        let mut h = self.c * (1.0 - r2).sqrt();
        let ny = 0.12 * self.b;
        h += self.nose
            * (-(x * x) / (2.0 * self.nose_sx * self.nose_sx)
                - (y - ny) * (y - ny) / (2.0 * self.nose_sy * self.nose_sy))
                .exp();
        for ex in [-0.4 * self.a, 0.4 * self.a] {
            let (dx, dy) = (x - ex, y + 0.2 * self.b);
            h -= 6.0 * (-(dx * dx + dy * dy) / (2.0 * 12.0 * 12.0)).exp();
        }
        Some(h)
    }

    fn z_at(&self, x: f64, y: f64) -> Option<f64> {
        let h = self.height(x - self.cx, y - self.cy)?;
        Some(self.base - h + self.tilt_x * (x - self.cx) + self.tilt_y * (y - self.cy))
    }
}

/// Everything the renderer can hit.
#[derive(Debug, Clone, Copy)]
enum Object {
    /// Fronto-parallel plane region `z`, with x/y bounds (mm at that depth), albedo, dropout.
    Plane {
        z: f64,
        x0: f64,
        x1: f64,
        y0: f64,
        y1: f64,
        rho: f64,
        dropout: f64,
    },
    Head(Head),
    /// A (possibly tilted or cylindrically bent) sheet carrying a printed face or a screen.
    Sheet {
        d: f64,
        cx: f64,
        cy: f64,
        half_w: f64,
        half_h: f64,
        tilt_x: f64,
        tilt_y: f64,
        radius: Option<f64>,
        content: Content,
    },
    /// An elliptical skin patch (hand) in a fronto-parallel plane.
    Hand {
        z: f64,
        cx: f64,
        cy: f64,
        rx: f64,
        ry: f64,
        rho: f64,
    },
}

#[derive(Debug, Clone, Copy)]
enum Content {
    /// Paper with a printed face of half-width `a` centred at sheet-local (0, fy).
    Print { rho: f64, ink: f64, a: f64, fy: f64 },
    /// A display: glass (ρ 0.04) inside `glass_w`×`glass_h`, bezel outside.
    Screen { glass_hw: f64, glass_hh: f64 },
}

struct Hit {
    z: f64,
    rho: f64,
    cos: f64,
    dropout: f64,
}

/// NIR albedo multiplier of facial features at normalised face coordinates (u, v) ∈ [-1, 1]².
fn face_pattern(u: f64, v: f64) -> f64 {
    let g = |du: f64, dv: f64, su: f64, sv: f64| {
        (-(du * du) / (2.0 * su * su) - dv * dv / (2.0 * sv * sv)).exp()
    };
    let mut p = 1.0;
    for s in [-1.0, 1.0] {
        p *= 1.0 - 0.45 * g(u - s * 0.38, v + 0.33, 0.16, 0.035); // brows
        p *= 1.0 - 0.55 * g(u - s * 0.4, v + 0.2, 0.09, 0.045); // eyes
        p *= 1.0 - 0.5 * g(u - s * 0.1, v - 0.25, 0.035, 0.02); // nostrils
    }
    p *= 1.0 - 0.25 * g(u, v - 0.5, 0.22, 0.04); // lips
    if v < -0.72 {
        p *= 0.45; // hairline
    }
    p
}

fn sheet_hit(o: &Object, rx: f64, ry: f64) -> Option<Hit> {
    let Object::Sheet {
        d,
        cx,
        cy,
        half_w,
        half_h,
        tilt_x,
        tilt_y,
        radius,
        content,
    } = *o
    else {
        return None;
    };
    // Fixed-point iteration on z along the ray; converges fast for the slopes used here.
    let mut z = d;
    let mut slope_x = tilt_x;
    for _ in 0..6 {
        let (x, y) = (rx * z, ry * z);
        let lx = x - cx;
        let bend = match radius {
            Some(r) => {
                let q = (r * r - lx * lx).max(1.0);
                slope_x = lx / q.sqrt();
                r - q.sqrt()
            }
            None => 0.0,
        };
        z = d + bend + tilt_x * lx + tilt_y * (y - cy);
    }
    let (lx, ly) = (rx * z - cx, ry * z - cy);
    if lx.abs() > half_w || ly.abs() > half_h || radius.is_some_and(|r| lx.abs() > 0.95 * r) {
        return None;
    }
    let sx = if radius.is_some() {
        slope_x + tilt_x
    } else {
        tilt_x
    };
    let cos = 1.0 / (1.0 + sx * sx + tilt_y * tilt_y).sqrt();
    let (rho, dropout) = match content {
        Content::Print { rho, ink, a, fy } => {
            let (u, v) = (lx / a, (ly - fy) / (1.3 * a));
            let tone = if u * u + v * v < 1.0 {
                // The photo's own shading (darker towards the outline) times its features.
                face_pattern(u, v) * (0.75 + 0.25 * (1.0 - u * u - v * v).sqrt())
            } else {
                0.55 // printed background
            };
            (rho * (1.0 - ink * (1.0 - tone)), 0.02)
        }
        Content::Screen { glass_hw, glass_hh } => {
            if lx.abs() <= glass_hw && ly.abs() <= glass_hh {
                (0.04, 0.40)
            } else {
                (0.06, 0.10)
            }
        }
    };
    Some(Hit {
        z,
        rho,
        cos,
        dropout,
    })
}

fn hit(o: &Object, rx: f64, ry: f64) -> Option<Hit> {
    match *o {
        Object::Plane {
            z,
            x0,
            x1,
            y0,
            y1,
            rho,
            dropout,
        } => {
            let (x, y) = (rx * z, ry * z);
            (x >= x0 && x <= x1 && y >= y0 && y <= y1).then_some(Hit {
                z,
                rho,
                cos: 1.0,
                dropout,
            })
        }
        Object::Hand {
            z,
            cx,
            cy,
            rx: ax,
            ry: ay,
            rho,
        } => {
            let (x, y) = (rx * z - cx, ry * z - cy);
            let r2 = (x / ax).powi(2) + (y / ay).powi(2);
            (r2 < 1.0).then(|| Hit {
                z: z - 15.0 * (1.0 - r2).sqrt(),
                rho,
                cos: (1.0 - r2).sqrt().max(0.3),
                dropout: 0.02,
            })
        }
        Object::Head(h) => {
            let mut z = h.base - h.c * 0.6;
            let mut inside = false;
            for _ in 0..6 {
                match h.z_at(rx * z, ry * z) {
                    Some(nz) => {
                        z = nz;
                        inside = true;
                    }
                    None => {
                        inside = false;
                        break;
                    }
                }
            }
            if !inside {
                return None;
            }
            let (x, y) = (rx * z, ry * z);
            let e = 1.0;
            let gx = (h.z_at(x + e, y)? - h.z_at(x - e, y)?) / (2.0 * e);
            let gy = (h.z_at(x, y + e)? - h.z_at(x, y - e)?) / (2.0 * e);
            let cos = (1.0 / (1.0 + gx * gx + gy * gy).sqrt()).max(0.05);
            let (u, v) = ((x - h.cx) / h.a, (y - h.cy) / h.b);
            let hair = v < -0.72;
            let dropout = if hair && h.hair_dropout { 0.30 } else { 0.02 };
            Some(Hit {
                z,
                rho: h.rho * face_pattern(u, v),
                cos,
                dropout,
            })
        }
        Object::Sheet { .. } => sheet_hit(o, rx, ry),
    }
}

struct Scene {
    objects: Vec<Object>,
    ambient: f64,
    box_mm: (f64, f64, f64, f64, f64), // x0, y0, x1, y1 at depth z
    truth: SampleTruth,
}

fn background(r: &mut Rng, objects: &mut Vec<Object>) {
    objects.push(Object::Plane {
        z: r.range(1200.0, 3500.0),
        x0: -1e6,
        x1: 1e6,
        y0: -1e6,
        y1: 1e6,
        rho: r.range(0.3, 0.8),
        dropout: 0.02,
    });
}

fn head(r: &mut Rng, rho: f64, hair_dropout: bool) -> (Head, f64) {
    let a = r.range(68.0, 85.0);
    let nose = r.range(16.0, 26.0);
    let c = 0.95 * a;
    let d = r.range(350.0, 800.0);
    let h = Head {
        cx: r.range(-0.08, 0.08) * d,
        cy: r.range(-0.06, 0.06) * d,
        a,
        b: 1.3 * a,
        c,
        nose,
        nose_sx: r.range(7.0, 9.0),
        nose_sy: r.range(16.0, 20.0),
        tilt_x: r.range(-0.25, 0.25),
        tilt_y: r.range(-0.2, 0.2),
        base: d + c + nose,
        rho,
        hair_dropout,
    };
    (h, d)
}

fn person(r: &mut Rng, kind: AttackKind) -> Scene {
    let rho = match kind {
        AttackKind::RigidMask => r.range(0.30, 0.95),
        _ => r.range(0.42, 0.68),
    };
    let (h, d) = head(r, rho, kind == AttackKind::Live);
    let mut objects = Vec::new();
    background(r, &mut objects);
    let cloth = r.range(0.3, 0.7);
    // Neck and torso behind the face.
    objects.push(Object::Plane {
        z: d + h.c + 40.0,
        x0: h.cx - 0.55 * h.a,
        x1: h.cx + 0.55 * h.a,
        y0: h.cy + 0.5 * h.b,
        y1: 1e6,
        rho: r.range(0.42, 0.68),
        dropout: 0.02,
    });
    objects.push(Object::Plane {
        z: d + h.c + 90.0,
        x0: h.cx - 230.0,
        x1: h.cx + 230.0,
        y0: h.cy + 1.35 * h.b,
        y1: 1e6,
        rho: cloth,
        dropout: 0.02,
    });
    objects.push(Object::Head(h));
    let zb = d + 0.35 * h.c;
    Scene {
        objects,
        ambient: r.range(0.01, 0.10),
        box_mm: (
            h.cx - 0.95 * h.a,
            h.cy - 0.75 * h.b,
            h.cx + 0.95 * h.a,
            h.cy + 0.95 * h.b,
            zb,
        ),
        truth: SampleTruth {
            distance_mm: d,
            face_width_mm: 1.9 * h.a,
            nir_albedo: rho,
        },
    }
}

fn medium(r: &mut Rng, kind: AttackKind) -> Scene {
    let mut objects = Vec::new();
    background(r, &mut objects);
    let (d, a, half_w, half_h, content, tilt, radius) = match kind {
        AttackKind::FlatPrint | AttackKind::CurvedPrint => {
            let a = r.range(0.75, 1.1) * 76.0;
            let tall = r.range(150.0, 297.0);
            let content = Content::Print {
                rho: r.range(0.70, 0.88),
                ink: r.range(0.05, 0.7),
                a,
                fy: -0.05 * tall,
            };
            let radius = (kind == AttackKind::CurvedPrint).then(|| r.range(110.0, 250.0));
            (
                r.range(300.0, 700.0),
                a,
                (tall / 1.414 / 2.0).max(1.1 * a),
                tall / 2.0,
                content,
                (r.range(-0.35, 0.35), r.range(-0.3, 0.3)),
                radius,
            )
        }
        AttackKind::HeldClosePhoto => {
            let a = r.range(18.0, 32.0);
            let content = Content::Print {
                rho: r.range(0.70, 0.88),
                ink: r.range(0.05, 0.7),
                a,
                fy: 0.0,
            };
            (
                r.range(150.0, 300.0),
                a,
                45.0_f64.max(1.15 * a),
                65.0_f64.max(1.6 * a),
                content,
                (r.range(-0.2, 0.2), r.range(-0.2, 0.2)),
                None,
            )
        }
        _ => {
            // Screen replay: phone or tablet.
            let (a, d, hw, hh) = if r.unit() < 0.5 {
                (r.range(25.0, 35.0), r.range(200.0, 450.0), 36.0, 75.0)
            } else {
                (r.range(45.0, 75.0), r.range(300.0, 600.0), 85.0, 115.0)
            };
            let content = Content::Screen {
                glass_hw: hw,
                glass_hh: hh,
            };
            (
                d,
                a,
                hw + 6.0,
                hh + 10.0,
                content,
                (r.range(-0.25, 0.25), r.range(-0.25, 0.25)),
                None,
            )
        }
    };
    let (cx, cy) = (r.range(-0.06, 0.06) * d, r.range(-0.05, 0.05) * d);
    let fy = match content {
        Content::Print { fy, .. } => fy,
        Content::Screen { .. } => 0.0,
    };
    objects.push(Object::Sheet {
        d,
        cx,
        cy,
        half_w,
        half_h,
        tilt_x: tilt.0,
        tilt_y: tilt.1,
        radius,
        content,
    });
    // Hands holding the medium (skin), and the attacker's body behind it.
    let skin = r.range(0.42, 0.68);
    let hand_r = 40.0;
    if matches!(content, Content::Screen { .. }) {
        // Phones and tablets are held in one hand, gripping the lower edge.
        objects.push(Object::Hand {
            z: d - 10.0,
            cx,
            cy: cy + half_h + 0.3 * hand_r,
            rx: hand_r,
            ry: 1.2 * hand_r,
            rho: skin,
        });
    } else {
        // Prints are held by their lower corners.
        for side in [-1.0, 1.0] {
            objects.push(Object::Hand {
                z: d - 10.0,
                cx: cx + side * half_w,
                cy: cy + 0.85 * half_h,
                rx: hand_r,
                ry: 1.2 * hand_r,
                rho: skin,
            });
        }
    }
    objects.push(Object::Plane {
        z: d + r.range(250.0, 400.0),
        x0: cx - 260.0,
        x1: cx + 260.0,
        y0: cy - 200.0,
        y1: 1e6,
        rho: r.range(0.3, 0.7),
        dropout: 0.02,
    });
    let rho = match content {
        Content::Print { rho, .. } => rho,
        Content::Screen { .. } => 0.04,
    };
    let b = 1.3 * a;
    Scene {
        objects,
        ambient: r.range(0.01, 0.10),
        box_mm: (
            cx - 0.95 * a,
            cy + fy - 0.75 * b,
            cx + 0.95 * a,
            cy + fy + 0.95 * b,
            d,
        ),
        truth: SampleTruth {
            distance_mm: d,
            face_width_mm: 1.9 * a,
            nir_albedo: rho,
        },
    }
}

fn noisy(r: &mut Rng, v: f64) -> u16 {
    let s = 0.002 + 0.008 * v.max(0.0).sqrt();
    ((v + s * r.normal()).clamp(0.0, 1.0) * 1023.0).round() as u16
}

/// Render one SIMULATED sample of `kind` (deterministic in `seed` and `index`).
pub fn generate(kind: AttackKind, seed: u64, index: usize) -> SyntheticSample {
    let mut r = Rng::new(seed, kind, index);
    let scene = match kind {
        AttackKind::Live | AttackKind::RigidMask => person(&mut r, kind),
        _ => medium(&mut r, kind),
    };
    let k = SyntheticSample::intrinsics();
    let n = (WIDTH * HEIGHT) as usize;
    let (mut z_true, mut rho, mut cos, mut drop) = (
        vec![0.0f64; n],
        vec![0.0f64; n],
        vec![1.0f64; n],
        vec![0.0f64; n],
    );
    for v in 0..HEIGHT {
        for u in 0..WIDTH {
            let (rx, ry) = (
                (u as f64 + 0.5 - k.cx) / k.fx,
                (v as f64 + 0.5 - k.cy) / k.fy,
            );
            let best = scene
                .objects
                .iter()
                .filter_map(|o| hit(o, rx, ry))
                .filter(|h| h.z > 1.0)
                .min_by(|a, b| a.z.total_cmp(&b.z));
            let i = (v * WIDTH + u) as usize;
            if let Some(h) = best {
                // Ray length vs z is ignored in the inverse-square term (≤ 15 % off-axis at the
                // image corner; faces are near the centre).
                z_true[i] = h.z;
                rho[i] = h.rho;
                cos[i] = h.cos;
                drop[i] = h.dropout;
            } else {
                z_true[i] = 1e9;
            }
        }
    }
    let mut on = Vec::with_capacity(n);
    let mut off = Vec::with_capacity(n);
    let mut depth = Vec::with_capacity(n);
    for i in 0..n {
        let z = z_true[i];
        let emit = EMITTER * cos[i] * (REF_MM / z).powi(2);
        on.push(noisy(&mut r, rho[i] * (scene.ambient + emit)));
        off.push(noisy(&mut r, rho[i] * scene.ambient));
        let (x, y) = ((i as u32 % WIDTH) as usize, (i as u32 / WIDTH) as usize);
        let w = WIDTH as usize;
        let edge = [
            (x > 0, i.wrapping_sub(1)),
            (x + 1 < w, i + 1),
            (y > 0, i.wrapping_sub(w)),
            (y + 1 < HEIGHT as usize, i + w),
        ]
        .iter()
        .any(|&(ok, j)| ok && (z_true[j] - z).abs() > 30.0);
        let sigma = 0.8 * (z / REF_MM).powi(2);
        let invalid = !(100.0..=3000.0).contains(&z) || edge || r.unit() < drop[i];
        let meas = z + sigma * r.normal();
        depth.push(if invalid {
            0
        } else {
            meas.round().clamp(1.0, 65535.0) as u16
        });
    }
    let (x0, y0, x1, y1, zb) = scene.box_mm;
    let (u0, v0) = (k.fx * x0 / zb + k.cx, k.fy * y0 / zb + k.cy);
    let (u1, v1) = (k.fx * x1 / zb + k.cx, k.fy * y1 / zb + k.cy);
    SyntheticSample {
        kind,
        index,
        face_box: [u0 as f32, v0 as f32, (u1 - u0) as f32, (v1 - v0) as f32],
        ir_on: GreyFrame::new(WIDTH, HEIGHT, 10, on).expect("valid synthetic geometry"),
        ir_off: GreyFrame::new(WIDTH, HEIGHT, 10, off).expect("valid synthetic geometry"),
        depth: DepthMap::new(WIDTH, HEIGHT, depth).expect("valid synthetic geometry"),
        truth: scene.truth,
    }
}

/// The same sample seen with a dead emitter: the "on" frame is another unlit frame (fresh
/// noise), exactly what a broken LED string produces.
pub fn with_dead_emitter(sample: &SyntheticSample, seed: u64) -> SyntheticSample {
    let mut r = Rng::new(seed ^ 0xDEAD, sample.kind, sample.index);
    let full = sample.ir_off.max_value() as f64;
    let relit: Vec<u16> = sample
        .ir_off
        .samples()
        .iter()
        .map(|&s| noisy(&mut r, s as f64 / full))
        .collect();
    let mut out = sample.clone();
    out.ir_on = GreyFrame::new(WIDTH, HEIGHT, 10, relit).expect("valid synthetic geometry");
    out
}

/// `count` samples of each kind, in [`AttackKind::ALL`] order.
pub fn suite(seed: u64, count: usize) -> Vec<SyntheticSample> {
    AttackKind::ALL
        .iter()
        .flat_map(|&k| (0..count).map(move |i| generate(k, seed, i)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_labelled() {
        let a = generate(AttackKind::Live, 7, 3);
        let b = generate(AttackKind::Live, 7, 3);
        assert_eq!(a.depth, b.depth);
        assert_eq!(a.ir_on, b.ir_on);
        assert_ne!(generate(AttackKind::Live, 8, 3).depth, a.depth);
        assert!(a.face_box[2] > 20.0 && a.face_box[3] > 20.0);
    }

    #[test]
    fn screen_is_dark_in_nir_and_face_is_not() {
        let mean = |s: &SyntheticSample| {
            let b = s.pixel_box();
            let (cx, cy) = (((b.x0 + b.x1) / 2.0) as u32, ((b.y0 + b.y1) / 2.0) as u32);
            s.ir_on.sample(cx, cy) as f64 / 1023.0
        };
        let live = generate(AttackKind::Live, 1, 0);
        let screen = generate(AttackKind::ScreenReplay, 1, 0);
        assert!(mean(&live) > 0.1, "{}", mean(&live));
        assert!(mean(&screen) < 0.05, "{}", mean(&screen));
    }
}
