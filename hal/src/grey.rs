//! Single-channel near-infrared (NIR) frames.
//!
//! NIR sensors deliver 8-bit (`GREY`), 10-bit (`Y10`, one sample per 16-bit word) or 16-bit
//! (`Y16`) grey. Keeping the samples as `u16` with an explicit bit depth lets the IR liveness
//! checks work in one unit (fraction of full scale, [`GreyFrame::normalized`]) whatever the sensor,
//! without losing the extra precision a 10/16-bit sensor gives in dark skin regions.

use crate::frame::{Frame, FrameError, MAX_DIMENSION};

/// A grey image: `width * height` samples, row-major, tightly packed, each `< 2^bit_depth`.
///
/// Invariants (checked by [`GreyFrame::new`]): non-empty, at most [`MAX_DIMENSION`] per side,
/// `1 <= bit_depth <= 16`, `samples.len() == width * height`, every sample fits `bit_depth`.
#[derive(Clone, PartialEq, Eq)]
pub struct GreyFrame {
    width: u32,
    height: u32,
    bit_depth: u8,
    samples: Vec<u16>,
}

impl std::fmt::Debug for GreyFrame {
    // Never dump pixel data into logs: a NIR frame of a face is a biometric sample.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GreyFrame")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("bit_depth", &self.bit_depth)
            .finish_non_exhaustive()
    }
}

impl GreyFrame {
    /// Build a frame, validating geometry and that every sample fits the bit depth (a value out
    /// of range means the driver's declared format and its data disagree).
    pub fn new(
        width: u32,
        height: u32,
        bit_depth: u8,
        samples: Vec<u16>,
    ) -> Result<Self, FrameError> {
        let bad = |why| FrameError::Geometry {
            width,
            height,
            stride: width as usize,
            len: samples.len(),
            why,
        };
        if width == 0 || height == 0 {
            return Err(bad("empty"));
        }
        if width > MAX_DIMENSION || height > MAX_DIMENSION {
            return Err(bad("larger than MAX_DIMENSION"));
        }
        if !(1..=16).contains(&bit_depth) {
            return Err(bad("bit depth must be 1..=16"));
        }
        if samples.len() != width as usize * height as usize {
            return Err(bad("sample count is not width * height"));
        }
        let max = max_for(bit_depth);
        if let Some(&value) = samples.iter().find(|&&v| v > max) {
            return Err(FrameError::SampleRange { bit_depth, value });
        }
        Ok(Self {
            width,
            height,
            bit_depth,
            samples,
        })
    }

    /// An 8-bit frame from bytes (e.g. a greyscale fixture image).
    pub fn from_luma8(width: u32, height: u32, data: &[u8]) -> Result<Self, FrameError> {
        Self::new(width, height, 8, data.iter().map(|&v| v as u16).collect())
    }

    /// Decode a JPEG/PNG file as an 8-bit NIR frame (colour images are converted to luma), for
    /// fixtures and simulation.
    pub fn open(path: impl AsRef<std::path::Path>) -> Result<Self, FrameError> {
        let rgb = Frame::open(path)?;
        let luma: Vec<u8> = (0..rgb.height())
            .flat_map(|y| {
                rgb.row(y)
                    .chunks_exact(3)
                    .map(|p| {
                        // BT.601 luma, rounded: matches `image`'s and OpenCV's RGB->GRAY.
                        ((299 * p[0] as u32 + 587 * p[1] as u32 + 114 * p[2] as u32 + 500) / 1000)
                            as u8
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        Self::from_luma8(rgb.width(), rgb.height(), &luma)
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Significant bits per sample (8, 10, 16, ...).
    pub fn bit_depth(&self) -> u8 {
        self.bit_depth
    }

    /// Largest representable sample, `2^bit_depth - 1`: the sensor's full scale.
    pub fn max_value(&self) -> u16 {
        max_for(self.bit_depth)
    }

    /// All samples, row-major.
    pub fn samples(&self) -> &[u16] {
        &self.samples
    }

    /// The samples of row `y`. Panics if `y >= height` (programming error, not input error).
    pub fn row(&self, y: u32) -> &[u16] {
        let w = self.width as usize;
        &self.samples[y as usize * w..(y as usize + 1) * w]
    }

    /// Sample at (x, y). Panics when out of bounds (programming error).
    pub fn sample(&self, x: u32, y: u32) -> u16 {
        assert!(x < self.width, "x {x} out of bounds");
        self.samples[y as usize * self.width as usize + x as usize]
    }

    /// Sample at (x, y) as a fraction of full scale in `[0, 1]`, comparable across bit depths.
    pub fn normalized(&self, x: u32, y: u32) -> f32 {
        self.sample(x, y) as f32 / self.max_value() as f32
    }

    /// Scale to 8 bits and replicate into RGB, for display, debugging and RGB-only models.
    pub fn to_frame(&self) -> Frame {
        let shift = self.bit_depth.saturating_sub(8);
        let data: Vec<u8> = self
            .samples
            .iter()
            .flat_map(|&v| {
                let b = if self.bit_depth >= 8 {
                    (v >> shift) as u8
                } else {
                    // Stretch a shallow depth to full 8-bit range.
                    ((v as u32 * 255) / self.max_value() as u32) as u8
                };
                [b, b, b]
            })
            .collect();
        Frame::from_rgb8(self.width, self.height, data).expect("geometry already validated")
    }
}

fn max_for(bit_depth: u8) -> u16 {
    ((1u32 << bit_depth) - 1) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_geometry_and_range() {
        assert!(GreyFrame::new(2, 1, 10, vec![0, 1023]).is_ok());
        assert!(matches!(
            GreyFrame::new(2, 1, 10, vec![0, 1024]),
            Err(FrameError::SampleRange {
                bit_depth: 10,
                value: 1024
            })
        ));
        assert!(GreyFrame::new(2, 2, 8, vec![0; 3]).is_err());
        assert!(GreyFrame::new(1, 1, 17, vec![0]).is_err());
        assert!(GreyFrame::new(0, 1, 8, vec![]).is_err());
        assert!(GreyFrame::new(1, 1, 16, vec![u16::MAX]).is_ok());
    }

    #[test]
    fn normalisation_and_display() {
        let g = GreyFrame::new(3, 1, 10, vec![0, 512, 1023]).unwrap();
        assert_eq!(g.max_value(), 1023);
        assert_eq!(g.normalized(2, 0), 1.0);
        // 10-bit -> 8-bit drops the two low bits: 512 >> 2 = 128, 1023 >> 2 = 255.
        let f = g.to_frame();
        assert_eq!(f.pixel(1, 0), [128, 128, 128]);
        assert_eq!(f.pixel(2, 0), [255, 255, 255]);
        assert_eq!(g.row(0), &[0, 512, 1023]);
        assert!(!format!("{g:?}").contains("512"));
    }
}
