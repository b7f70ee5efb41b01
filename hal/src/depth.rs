//! Depth maps in millimetres.
//!
//! ToF and active-stereo sensors (RealSense-class devices expose `Z16` over V4L2) report one
//! distance per pixel. The HAL normalises them to `u16` millimetres along the sensor's optical
//! axis (Z, not ray length), with `0` meaning "no measurement": stereo fails on texture-less
//! or occluded areas, ToF on dark or specular surfaces and beyond range. Liveness code must
//! treat 0 as missing, never as "very close".

use crate::frame::{FrameError, MAX_DIMENSION};

/// A depth image: `width * height` values in millimetres, row-major, `0` = invalid.
#[derive(Clone, PartialEq, Eq)]
pub struct DepthMap {
    width: u32,
    height: u32,
    mm: Vec<u16>,
}

impl std::fmt::Debug for DepthMap {
    // A face depth map is biometric data: never dump it into logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DepthMap")
            .field("width", &self.width)
            .field("height", &self.height)
            .finish_non_exhaustive()
    }
}

impl DepthMap {
    /// Wrap `width * height` millimetre values (0 = invalid), validating the geometry.
    pub fn new(width: u32, height: u32, mm: Vec<u16>) -> Result<Self, FrameError> {
        let bad = |why| FrameError::Geometry {
            width,
            height,
            stride: width as usize,
            len: mm.len(),
            why,
        };
        if width == 0 || height == 0 {
            return Err(bad("empty"));
        }
        if width > MAX_DIMENSION || height > MAX_DIMENSION {
            return Err(bad("larger than MAX_DIMENSION"));
        }
        if mm.len() != width as usize * height as usize {
            return Err(bad("sample count is not width * height"));
        }
        Ok(Self { width, height, mm })
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// All values in millimetres, row-major, 0 = invalid.
    pub fn data(&self) -> &[u16] {
        &self.mm
    }

    /// Row `y` in millimetres. Panics if `y >= height` (programming error).
    pub fn row(&self, y: u32) -> &[u16] {
        let w = self.width as usize;
        &self.mm[y as usize * w..(y as usize + 1) * w]
    }

    /// Depth at (x, y) in millimetres, `None` where the sensor has no measurement or the point
    /// lies outside the map.
    pub fn depth_mm(&self, x: u32, y: u32) -> Option<u16> {
        if x >= self.width || y >= self.height {
            return None;
        }
        match self.mm[y as usize * self.width as usize + x as usize] {
            0 => None,
            v => Some(v),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_is_invalid_and_bounds_are_checked() {
        let d = DepthMap::new(2, 1, vec![0, 450]).unwrap();
        assert_eq!(d.depth_mm(0, 0), None);
        assert_eq!(d.depth_mm(1, 0), Some(450));
        assert_eq!(d.depth_mm(2, 0), None);
        assert!(DepthMap::new(2, 2, vec![1; 3]).is_err());
        assert!(!format!("{d:?}").contains("450"));
    }
}
