//! Geometric registration of the IR and depth sensors to the RGB camera.
//!
//! Faces are detected in the RGB image, but the IR and depth checks must look at the same face
//! in their own images, taken by sensors a few centimetres away with other lenses. With each
//! sensor's pinhole intrinsics and its rigid transform to the RGB camera (from a stereo
//! calibration), a face box in RGB maps to the right region of the IR and depth images. The
//! parallax depends on distance, so the caller gives either an assumed distance, a range of
//! distances (the box grows to cover them), or the depth map itself (per-pixel depth).
//!
//! Conventions (OpenCV's): camera coordinates in millimetres, x right, y down, z forward along
//! the optical axis; a pixel `(u, v)` sees the ray `((u - cx) / fx, (v - cy) / fy, 1)`. For a
//! sensor S the transform maps S's coordinates into the RGB camera's: `p_rgb = R * p_s + t`,
//! so `t` is the position of S's optical centre as seen from the RGB camera (an IR camera
//! mounted 25 mm to the right of the RGB lens, looking the same way, has `R = I` and
//! `t = [25, 0, 0]`). This is `(R, T)` from `cv::stereoCalibrate` with S as the first camera.
//! Lens distortion is not modelled: undistort upstream if the lenses need it.

use serde::Deserialize;

use crate::DepthMap;

/// Pinhole camera intrinsics in pixels, for the resolution the sensor was calibrated at.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Intrinsics {
    /// Focal length along x, pixels.
    pub fx: f64,
    /// Focal length along y, pixels.
    pub fy: f64,
    /// Principal point x, pixels.
    pub cx: f64,
    /// Principal point y, pixels.
    pub cy: f64,
}

impl Intrinsics {
    /// The 3D point (mm, camera coordinates) seen at pixel `(u, v)` at depth `z_mm`.
    pub fn unproject(&self, u: f64, v: f64, z_mm: f64) -> [f64; 3] {
        [
            (u - self.cx) / self.fx * z_mm,
            (v - self.cy) / self.fy * z_mm,
            z_mm,
        ]
    }

    /// The pixel where a 3D point (mm, camera coordinates) appears; `None` if it is not in
    /// front of the camera.
    pub fn project(&self, p: [f64; 3]) -> Option<(f64, f64)> {
        (p[2] > 0.0).then(|| {
            (
                self.fx * p[0] / p[2] + self.cx,
                self.fy * p[1] / p[2] + self.cy,
            )
        })
    }

    fn validate(&self, what: &str) -> Result<(), RegistrationError> {
        let ok = [self.fx, self.fy].iter().all(|f| f.is_finite() && *f > 0.0)
            && self.cx.is_finite()
            && self.cy.is_finite();
        if ok {
            Ok(())
        } else {
            Err(RegistrationError::Invalid(format!(
                "{what}: focal lengths must be positive and all intrinsics finite"
            )))
        }
    }
}

/// The RGB (reference) camera: image size and intrinsics.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraModel {
    /// Image width the intrinsics are valid for.
    pub width: u32,
    /// Image height the intrinsics are valid for.
    pub height: u32,
    /// Pinhole intrinsics.
    pub intrinsics: Intrinsics,
}

/// An IR or depth sensor: its camera model and its pose relative to the RGB camera.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensorCalibration {
    /// Image width the intrinsics are valid for.
    pub width: u32,
    /// Image height the intrinsics are valid for.
    pub height: u32,
    /// Pinhole intrinsics.
    pub intrinsics: Intrinsics,
    /// Rotation from sensor to RGB coordinates, row-major (default: identity).
    #[serde(default = "identity")]
    pub rotation: [[f64; 3]; 3],
    /// Sensor optical centre in RGB camera coordinates, millimetres.
    #[serde(default)]
    pub translation_mm: [f64; 3],
}

fn identity() -> [[f64; 3]; 3] {
    [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
}

impl SensorCalibration {
    fn sensor_to_rgb(&self, p: [f64; 3]) -> [f64; 3] {
        let r = &self.rotation;
        let t = &self.translation_mm;
        std::array::from_fn(|i| r[i][0] * p[0] + r[i][1] * p[1] + r[i][2] * p[2] + t[i])
    }

    fn rgb_to_sensor(&self, p: [f64; 3]) -> [f64; 3] {
        // Inverse of a rigid transform: R^T (p - t).
        let r = &self.rotation;
        let q = [
            p[0] - self.translation_mm[0],
            p[1] - self.translation_mm[1],
            p[2] - self.translation_mm[2],
        ];
        std::array::from_fn(|i| r[0][i] * q[0] + r[1][i] * q[1] + r[2][i] * q[2])
    }

    fn validate(&self, what: &str) -> Result<(), RegistrationError> {
        self.intrinsics.validate(what)?;
        if self.width == 0 || self.height == 0 {
            return Err(RegistrationError::Invalid(format!(
                "{what}: empty image size"
            )));
        }
        if self.translation_mm.iter().any(|v| !v.is_finite()) {
            return Err(RegistrationError::Invalid(format!(
                "{what}: translation not finite"
            )));
        }
        let r = &self.rotation;
        for i in 0..3 {
            for j in 0..3 {
                let dot: f64 = (0..3).map(|k| r[i][k] * r[j][k]).sum();
                let want = if i == j { 1.0 } else { 0.0 };
                let orthonormal = (dot - want).abs() < 1e-3; // false for NaN too
                if !orthonormal {
                    return Err(RegistrationError::Invalid(format!(
                        "{what}: rotation is not orthonormal (row {i} . row {j} = {dot})"
                    )));
                }
            }
        }
        let det = r[0][0] * (r[1][1] * r[2][2] - r[1][2] * r[2][1])
            - r[0][1] * (r[1][0] * r[2][2] - r[1][2] * r[2][0])
            + r[0][2] * (r[1][0] * r[2][1] - r[1][1] * r[2][0]);
        if det <= 0.0 {
            return Err(RegistrationError::Invalid(format!(
                "{what}: rotation has determinant {det}: a reflection, not a rotation"
            )));
        }
        Ok(())
    }
}

/// Which secondary sensor a box is mapped into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sensor {
    /// The near-infrared camera.
    Ir,
    /// The depth sensor.
    Depth,
}

/// An axis-aligned box in continuous pixel coordinates: `[x0, x1) x [y0, y1)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PixelBox {
    /// Left edge.
    pub x0: f32,
    /// Top edge.
    pub y0: f32,
    /// Right edge (exclusive).
    pub x1: f32,
    /// Bottom edge (exclusive).
    pub y1: f32,
}

impl PixelBox {
    /// Box width (0 if degenerate).
    pub fn width(&self) -> f32 {
        (self.x1 - self.x0).max(0.0)
    }

    /// Box height (0 if degenerate).
    pub fn height(&self) -> f32 {
        (self.y1 - self.y0).max(0.0)
    }
}

/// What distance to assume for the face when mapping a box (parallax depends on it).
#[derive(Debug, Clone, Copy)]
pub enum DepthAssumption<'a> {
    /// The face is at this distance from the RGB camera along its axis, mm.
    Fixed(f64),
    /// Somewhere between these distances (mm): the box covers every position in the range.
    Range {
        /// Nearest plausible distance, mm.
        near_mm: f64,
        /// Farthest plausible distance, mm.
        far_mm: f64,
    },
    /// Use the measured depth: every valid depth pixel whose 3D point projects into the RGB
    /// box belongs to the region. The map must have the depth calibration's size.
    Map(&'a DepthMap),
}

/// Why a box could not be mapped or a calibration was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RegistrationError {
    /// The configuration has no calibration for this sensor.
    #[error("no registration configured for the {0:?} sensor")]
    NotConfigured(Sensor),
    /// The calibration is unusable (message says which field).
    #[error("invalid registration: {0}")]
    Invalid(String),
    /// A non-positive or non-finite assumed depth.
    #[error("assumed depth must be positive and finite (got {0} mm)")]
    BadDepth(f64),
    /// The depth map does not have the depth calibration's size.
    #[error("depth map is {got:?} but the depth calibration is for {want:?}")]
    DepthSize {
        /// (width, height) of the map given.
        got: (u32, u32),
        /// (width, height) of the calibration.
        want: (u32, u32),
    },
    /// No valid depth pixel falls inside the RGB box.
    #[error("no valid depth inside the box")]
    NoDepth,
    /// The mapped region lies entirely outside the sensor's image (or behind it).
    #[error("the box falls outside the {0:?} sensor's field of view")]
    OutOfView(Sensor),
}

/// Raw, unvalidated form of [`Registration`], as written in the configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrationConfig {
    /// The reference RGB camera.
    pub rgb: CameraModel,
    /// The NIR camera, if fitted.
    pub ir: Option<SensorCalibration>,
    /// The depth sensor, if fitted.
    pub depth: Option<SensorCalibration>,
}

/// Validated calibration of all sensors against the RGB camera; maps RGB face boxes into the
/// IR and depth images. Deserialising validates, so a bad config fails at load time.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RegistrationConfig")]
pub struct Registration {
    rgb: CameraModel,
    ir: Option<SensorCalibration>,
    depth: Option<SensorCalibration>,
}

impl TryFrom<RegistrationConfig> for Registration {
    type Error = RegistrationError;

    fn try_from(c: RegistrationConfig) -> Result<Self, Self::Error> {
        Registration::new(c.rgb, c.ir, c.depth)
    }
}

impl Registration {
    /// Validate and assemble a registration (positive focal lengths, finite values, proper
    /// rotation matrices).
    pub fn new(
        rgb: CameraModel,
        ir: Option<SensorCalibration>,
        depth: Option<SensorCalibration>,
    ) -> Result<Self, RegistrationError> {
        rgb.intrinsics.validate("rgb")?;
        if let Some(c) = &ir {
            c.validate("ir")?;
        }
        if let Some(c) = &depth {
            c.validate("depth")?;
        }
        Ok(Self { rgb, ir, depth })
    }

    /// The RGB camera model.
    pub fn rgb(&self) -> &CameraModel {
        &self.rgb
    }

    /// The calibration of `sensor`, if configured.
    pub fn sensor(&self, sensor: Sensor) -> Option<&SensorCalibration> {
        match sensor {
            Sensor::Ir => self.ir.as_ref(),
            Sensor::Depth => self.depth.as_ref(),
        }
    }

    /// Where the RGB pixel `(u, v)`, seeing a point at `z_mm` along the RGB axis, appears in
    /// `sensor`'s image (unclamped; `None` if behind the sensor).
    pub fn map_point_rgb_to(
        &self,
        sensor: Sensor,
        u: f64,
        v: f64,
        z_mm: f64,
    ) -> Result<Option<(f64, f64)>, RegistrationError> {
        let cal = self
            .sensor(sensor)
            .ok_or(RegistrationError::NotConfigured(sensor))?;
        if !(z_mm.is_finite() && z_mm > 0.0) {
            return Err(RegistrationError::BadDepth(z_mm));
        }
        let p = self.rgb.intrinsics.unproject(u, v, z_mm);
        Ok(cal.intrinsics.project(cal.rgb_to_sensor(p)))
    }

    /// Map a face box found in the RGB image to the region of `sensor`'s image showing the
    /// same face, clamped to that image. With [`DepthAssumption::Fixed`]/`Range` the box
    /// corners are mapped and the bounding box of the results returned.
    pub fn map_box_rgb_to(
        &self,
        sensor: Sensor,
        rgb_box: PixelBox,
        depth: DepthAssumption<'_>,
    ) -> Result<PixelBox, RegistrationError> {
        let cal = self
            .sensor(sensor)
            .ok_or(RegistrationError::NotConfigured(sensor))?;
        let mut acc = Bounds::default();
        match depth {
            DepthAssumption::Fixed(z) => self.add_corners(sensor, rgb_box, z, &mut acc)?,
            DepthAssumption::Range { near_mm, far_mm } => {
                self.add_corners(sensor, rgb_box, near_mm, &mut acc)?;
                self.add_corners(sensor, rgb_box, far_mm, &mut acc)?;
            }
            DepthAssumption::Map(map) => {
                self.add_from_depth(sensor, cal, rgb_box, map, &mut acc)?
            }
        }
        acc.clamped(cal.width, cal.height)
            .ok_or(RegistrationError::OutOfView(sensor))
    }

    fn add_corners(
        &self,
        sensor: Sensor,
        b: PixelBox,
        z: f64,
        acc: &mut Bounds,
    ) -> Result<(), RegistrationError> {
        for (u, v) in [(b.x0, b.y0), (b.x1, b.y0), (b.x0, b.y1), (b.x1, b.y1)] {
            match self.map_point_rgb_to(sensor, u as f64, v as f64, z)? {
                Some((x, y)) => acc.add(x, y, x, y),
                None => return Err(RegistrationError::OutOfView(sensor)),
            }
        }
        Ok(())
    }

    fn add_from_depth(
        &self,
        sensor: Sensor,
        target: &SensorCalibration,
        b: PixelBox,
        map: &DepthMap,
        acc: &mut Bounds,
    ) -> Result<(), RegistrationError> {
        let dcal = self
            .depth
            .as_ref()
            .ok_or(RegistrationError::NotConfigured(Sensor::Depth))?;
        if (map.width(), map.height()) != (dcal.width, dcal.height) {
            return Err(RegistrationError::DepthSize {
                got: (map.width(), map.height()),
                want: (dcal.width, dcal.height),
            });
        }
        let (bx0, by0, bx1, by1) = (b.x0 as f64, b.y0 as f64, b.x1 as f64, b.y1 as f64);
        for y in 0..map.height() {
            for (x, &z) in map.row(y).iter().enumerate() {
                if z == 0 {
                    continue;
                }
                // Pixel centre of the depth sample, into RGB.
                let p_d = dcal.intrinsics.unproject(x as f64, y as f64, z as f64);
                let p_rgb = dcal.sensor_to_rgb(p_d);
                let Some((u, v)) = self.rgb.intrinsics.project(p_rgb) else {
                    continue;
                };
                if !(u >= bx0 && u < bx1 && v >= by0 && v < by1) {
                    continue;
                }
                match sensor {
                    // A depth pixel covers [x, x+1).
                    Sensor::Depth => acc.add(x as f64, y as f64, x as f64 + 1.0, y as f64 + 1.0),
                    Sensor::Ir => {
                        if let Some((s, t)) = target.intrinsics.project(target.rgb_to_sensor(p_rgb))
                        {
                            acc.add(s, t, s, t);
                        }
                    }
                }
            }
        }
        if acc.is_empty() {
            return Err(RegistrationError::NoDepth);
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Bounds {
    x0: f64,
    y0: f64,
    x1: f64,
    y1: f64,
}

impl Default for Bounds {
    fn default() -> Self {
        Self {
            x0: f64::INFINITY,
            y0: f64::INFINITY,
            x1: f64::NEG_INFINITY,
            y1: f64::NEG_INFINITY,
        }
    }
}

impl Bounds {
    fn add(&mut self, x0: f64, y0: f64, x1: f64, y1: f64) {
        self.x0 = self.x0.min(x0);
        self.y0 = self.y0.min(y0);
        self.x1 = self.x1.max(x1);
        self.y1 = self.y1.max(y1);
    }

    fn is_empty(&self) -> bool {
        !(self.x0 <= self.x1 && self.y0 <= self.y1)
    }

    fn clamped(&self, w: u32, h: u32) -> Option<PixelBox> {
        let b = PixelBox {
            x0: self.x0.clamp(0.0, w as f64) as f32,
            y0: self.y0.clamp(0.0, h as f64) as f32,
            x1: self.x1.clamp(0.0, w as f64) as f32,
            y1: self.y1.clamp(0.0, h as f64) as f32,
        };
        (!self.is_empty() && b.width() > 0.0 && b.height() > 0.0).then_some(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: Intrinsics = Intrinsics {
        fx: 600.0,
        fy: 600.0,
        cx: 320.0,
        cy: 240.0,
    };

    fn sensor(intrinsics: Intrinsics, translation_mm: [f64; 3]) -> SensorCalibration {
        SensorCalibration {
            width: 640,
            height: 480,
            intrinsics,
            rotation: identity(),
            translation_mm,
        }
    }

    fn rgb() -> CameraModel {
        CameraModel {
            width: 640,
            height: 480,
            intrinsics: K,
        }
    }

    const FACE: PixelBox = PixelBox {
        x0: 250.0,
        y0: 150.0,
        x1: 390.0,
        y1: 330.0,
    };

    fn close(a: PixelBox, b: PixelBox, tol: f32) -> bool {
        (a.x0 - b.x0).abs() <= tol
            && (a.y0 - b.y0).abs() <= tol
            && (a.x1 - b.x1).abs() <= tol
            && (a.y1 - b.y1).abs() <= tol
    }

    #[test]
    fn identity_transform_maps_identically() {
        let reg = Registration::new(rgb(), Some(sensor(K, [0.0; 3])), None).unwrap();
        for z in [300.0, 600.0, 2000.0] {
            let b = reg
                .map_box_rgb_to(Sensor::Ir, FACE, DepthAssumption::Fixed(z))
                .unwrap();
            assert!(close(b, FACE, 1e-3), "{b:?} at {z}");
        }
    }

    #[test]
    fn baseline_shifts_by_fx_t_over_z() {
        // IR camera 50 mm to the right of the RGB lens: a point at 1 m appears
        // fx * t / z = 600 * 50 / 1000 = 30 px further left in the IR image.
        let reg = Registration::new(rgb(), Some(sensor(K, [50.0, 0.0, 0.0])), None).unwrap();
        let b = reg
            .map_box_rgb_to(Sensor::Ir, FACE, DepthAssumption::Fixed(1000.0))
            .unwrap();
        let want = PixelBox {
            x0: 220.0,
            x1: 360.0,
            ..FACE
        };
        assert!(close(b, want, 1e-3), "{b:?}");
        // At 500 mm the shift doubles to 60 px; a range covers both.
        let b = reg
            .map_box_rgb_to(
                Sensor::Ir,
                FACE,
                DepthAssumption::Range {
                    near_mm: 500.0,
                    far_mm: 1000.0,
                },
            )
            .unwrap();
        assert!(
            close(
                b,
                PixelBox {
                    x0: 190.0,
                    x1: 360.0,
                    ..FACE
                },
                1e-3
            ),
            "{b:?}"
        );
    }

    #[test]
    fn different_focal_length_scales_about_principal_point() {
        let half = Intrinsics {
            fx: 300.0,
            fy: 300.0,
            cx: 160.0,
            cy: 120.0,
        };
        let cal = SensorCalibration {
            width: 320,
            height: 240,
            ..sensor(half, [0.0; 3])
        };
        let reg = Registration::new(rgb(), Some(cal), None).unwrap();
        let b = reg
            .map_box_rgb_to(Sensor::Ir, FACE, DepthAssumption::Fixed(700.0))
            .unwrap();
        let want = PixelBox {
            x0: 125.0,
            y0: 75.0,
            x1: 195.0,
            y1: 165.0,
        };
        assert!(close(b, want, 1e-3), "{b:?}");
    }

    #[test]
    fn rotation_uses_the_sensor_to_rgb_convention() {
        // Sensor rolled +90 degrees about the optical axis: p_rgb = R p_s with x_rgb = -y_s,
        // y_rgb = x_s. Inverting by hand: u_s = (v - cy) + cx = v + 80, v_s = -(u - cx) + cy
        // = 560 - u. Box x 100..200, y 50..150 -> x 130..230, y 360..460 (at any depth).
        let cal = SensorCalibration {
            rotation: [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]],
            ..sensor(K, [0.0; 3])
        };
        let reg = Registration::new(rgb(), Some(cal), None).unwrap();
        let b = PixelBox {
            x0: 100.0,
            y0: 50.0,
            x1: 200.0,
            y1: 150.0,
        };
        let got = reg
            .map_box_rgb_to(Sensor::Ir, b, DepthAssumption::Fixed(800.0))
            .unwrap();
        let want = PixelBox {
            x0: 130.0,
            y0: 360.0,
            x1: 230.0,
            y1: 460.0,
        };
        assert!(close(got, want, 1e-3), "{got:?}");
    }

    #[test]
    fn per_pixel_depth_matches_fixed_depth_on_a_flat_scene() {
        // Depth sensor coincident with RGB, IR 50 mm to the right; flat wall at 1 m.
        let reg = Registration::new(
            rgb(),
            Some(sensor(K, [50.0, 0.0, 0.0])),
            Some(sensor(K, [0.0; 3])),
        )
        .unwrap();
        let wall = DepthMap::new(640, 480, vec![1000; 640 * 480]).unwrap();
        let via_map = reg
            .map_box_rgb_to(Sensor::Ir, FACE, DepthAssumption::Map(&wall))
            .unwrap();
        let fixed = reg
            .map_box_rgb_to(Sensor::Ir, FACE, DepthAssumption::Fixed(1000.0))
            .unwrap();
        assert!(close(via_map, fixed, 1.01), "{via_map:?} vs {fixed:?}");
        let d = reg
            .map_box_rgb_to(Sensor::Depth, FACE, DepthAssumption::Map(&wall))
            .unwrap();
        assert!(close(d, FACE, 1.01), "{d:?}");
        // No valid depth in the box: an explicit error, not an empty box.
        let empty = DepthMap::new(640, 480, vec![0; 640 * 480]).unwrap();
        assert_eq!(
            reg.map_box_rgb_to(Sensor::Depth, FACE, DepthAssumption::Map(&empty)),
            Err(RegistrationError::NoDepth)
        );
        let small = DepthMap::new(2, 2, vec![1000; 4]).unwrap();
        assert!(matches!(
            reg.map_box_rgb_to(Sensor::Depth, FACE, DepthAssumption::Map(&small)),
            Err(RegistrationError::DepthSize { .. })
        ));
    }

    #[test]
    fn errors_are_explicit() {
        let reg = Registration::new(rgb(), Some(sensor(K, [0.0; 3])), None).unwrap();
        assert_eq!(
            reg.map_box_rgb_to(Sensor::Depth, FACE, DepthAssumption::Fixed(500.0)),
            Err(RegistrationError::NotConfigured(Sensor::Depth))
        );
        assert!(matches!(
            reg.map_box_rgb_to(Sensor::Ir, FACE, DepthAssumption::Fixed(0.0)),
            Err(RegistrationError::BadDepth(_))
        ));
        let off = PixelBox {
            x0: -500.0,
            y0: 0.0,
            x1: -400.0,
            y1: 10.0,
        };
        assert_eq!(
            reg.map_box_rgb_to(Sensor::Ir, off, DepthAssumption::Fixed(500.0)),
            Err(RegistrationError::OutOfView(Sensor::Ir))
        );
    }

    #[test]
    fn config_deserialises_and_is_validated() {
        let text = r#"
            [rgb]
            width = 640
            height = 480
            intrinsics = { fx = 600, fy = 600, cx = 320, cy = 240 }

            [ir]
            width = 640
            height = 480
            intrinsics = { fx = 600.0, fy = 600.0, cx = 320.0, cy = 240.0 }
            translation_mm = [50.0, 0.0, 0.0]
        "#;
        let reg: Registration = toml::from_str(text).unwrap();
        assert!(reg.sensor(Sensor::Depth).is_none());
        assert_eq!(reg.sensor(Sensor::Ir).unwrap().rotation, identity());
        let bad = text.replace(
            "translation_mm",
            "rotation = [[1, 0, 0], [0, 1, 0], [0, 0, -1]]\ntranslation_mm",
        );
        let err = toml::from_str::<Registration>(&bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains("determinant"), "{err}");
        let bad = text.replace("fx = 600,", "fx = -1,");
        assert!(toml::from_str::<Registration>(&bad).is_err());
    }
}
