//! On-disk depth maps for `facegate liveness --depth FILE` and for fixtures.
//!
//! Two formats, chosen by content (not by extension):
//!
//! - **16-bit greyscale PNG**: each sample is the depth in millimetres, 0 = invalid (what
//!   `rs-save-to-disk`, OpenCV `imwrite` of a `CV_16U` Z image and most RGB-D tools write).
//!   Carries no intrinsics: give them on the command line or accept the default.
//! - **FGDEPTH1 raw**: a 32-byte little-endian header, then the samples:
//!
//!   | offset | size | field |
//!   |---|---|---|
//!   | 0 | 8 | magic `FGDEPTH1` |
//!   | 8 | 4 | width (u32) |
//!   | 12 | 4 | height (u32) |
//!   | 16 | 16 | fx, fy, cx, cy (f32 each; all zero = unknown) |
//!   | 32 | 2·w·h | depth, u16 mm, row-major, 0 = invalid |
//!
//! 8-bit PNGs and JPEGs are refused: they cannot hold millimetres, and silently reading one as
//! depth would make the check meaningless.

use std::path::Path;

use facegate_hal::{DepthMap, Intrinsics};

const MAGIC: &[u8; 8] = b"FGDEPTH1";
const HEADER: usize = 32;

/// A depth map read from disk, with intrinsics if the file carries them.
#[derive(Debug, Clone)]
pub struct DepthFile {
    /// The depth samples, mm.
    pub map: DepthMap,
    /// Intrinsics from an FGDEPTH1 header (None for PNG or an all-zero header).
    pub intrinsics: Option<Intrinsics>,
}

/// Why a depth file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DepthFileError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The content is not a depth map in a supported format.
    #[error("{path}: {why}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
}

fn format_err(path: &Path, why: impl Into<String>) -> DepthFileError {
    DepthFileError::Format {
        path: path.display().to_string(),
        why: why.into(),
    }
}

/// Read a depth map (16-bit PNG or FGDEPTH1).
pub fn read(path: &Path) -> Result<DepthFile, DepthFileError> {
    let bytes = std::fs::read(path).map_err(|source| DepthFileError::Io {
        path: path.display().to_string(),
        source,
    })?;
    if bytes.starts_with(MAGIC) {
        return parse_raw(path, &bytes);
    }
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        let img = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)
            .map_err(|e| format_err(path, e.to_string()))?;
        let image::DynamicImage::ImageLuma16(g) = img else {
            return Err(format_err(
                path,
                format!(
                    "a depth PNG must be 16-bit greyscale (millimetres); this one is {:?}",
                    img.color()
                ),
            ));
        };
        let (w, h) = g.dimensions();
        let map = DepthMap::new(w, h, g.into_raw()).map_err(|e| format_err(path, e.to_string()))?;
        return Ok(DepthFile {
            map,
            intrinsics: None,
        });
    }
    Err(format_err(
        path,
        "not a depth map: expected a 16-bit greyscale PNG or an FGDEPTH1 file",
    ))
}

fn parse_raw(path: &Path, b: &[u8]) -> Result<DepthFile, DepthFileError> {
    if b.len() < HEADER {
        return Err(format_err(path, "FGDEPTH1 header truncated"));
    }
    let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let f32_at = |o: usize| f32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]) as f64;
    let (w, h) = (u32_at(8), u32_at(12));
    let need = (w as u64) * (h as u64) * 2;
    if (b.len() - HEADER) as u64 != need {
        return Err(format_err(
            path,
            format!(
                "FGDEPTH1 {w}x{h} needs {need} sample bytes, file has {}",
                b.len() - HEADER
            ),
        ));
    }
    let mm: Vec<u16> = b[HEADER..]
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    let map = DepthMap::new(w, h, mm).map_err(|e| format_err(path, e.to_string()))?;
    let k = [f32_at(16), f32_at(20), f32_at(24), f32_at(28)];
    let intrinsics = if k.iter().all(|&v| v == 0.0) {
        None
    } else if k.iter().all(|v| v.is_finite()) && k[0] > 0.0 && k[1] > 0.0 {
        Some(Intrinsics {
            fx: k[0],
            fy: k[1],
            cx: k[2],
            cy: k[3],
        })
    } else {
        return Err(format_err(
            path,
            "FGDEPTH1 intrinsics must be finite with positive focal lengths",
        ));
    };
    Ok(DepthFile { map, intrinsics })
}

/// Encode a depth map as FGDEPTH1 (for fixtures, simulation and tests).
pub fn encode_raw(map: &DepthMap, intrinsics: Option<Intrinsics>) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + 2 * map.data().len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&map.width().to_le_bytes());
    out.extend_from_slice(&map.height().to_le_bytes());
    let k = intrinsics.map_or([0.0; 4], |k| [k.fx, k.fy, k.cx, k.cy]);
    for v in k {
        out.extend_from_slice(&(v as f32).to_le_bytes());
    }
    for &z in map.data() {
        out.extend_from_slice(&z.to_le_bytes());
    }
    out
}

/// Write a depth map as a 16-bit greyscale PNG (mm).
pub fn write_png(path: &Path, map: &DepthMap) -> Result<(), DepthFileError> {
    let img = image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_raw(
        map.width(),
        map.height(),
        map.data().to_vec(),
    )
    .ok_or_else(|| format_err(path, "buffer size mismatch"))?;
    img.save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| format_err(path, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_and_png_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let map = DepthMap::new(3, 2, vec![0, 500, 501, 65535, 1, 2]).unwrap();
        let k = Intrinsics {
            fx: 300.0,
            fy: 301.0,
            cx: 1.5,
            cy: 1.0,
        };
        let raw = dir.path().join("d.fgd");
        std::fs::write(&raw, encode_raw(&map, Some(k))).unwrap();
        let back = read(&raw).unwrap();
        assert_eq!(back.map, map);
        assert_eq!(back.intrinsics, Some(k));
        let png = dir.path().join("d.png");
        write_png(&png, &map).unwrap();
        let back = read(&png).unwrap();
        assert_eq!(back.map, map);
        assert!(back.intrinsics.is_none());
        // Truncated file and an 8-bit PNG are refused.
        std::fs::write(&raw, &encode_raw(&map, None)[..40]).unwrap();
        assert!(read(&raw).is_err());
        image::GrayImage::new(2, 2).save(&png).unwrap();
        assert!(read(&png).unwrap_err().to_string().contains("16-bit"));
    }
}
