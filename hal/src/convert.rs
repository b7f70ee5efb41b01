//! Pure conversions from camera pixel formats to the HAL's frame types.
//!
//! Kept free of any device code so every format is unit-tested on hand-computed values and so the
//! V4L2 backend, file replay and tests share one implementation. Inputs come straight from a
//! driver's buffer: every function checks the stride (`bytesperline`, which may include row
//! padding) and the buffer length before reading, and reports a short or malformed buffer as
//! a [`ConvertError`] (kind [`ErrorKind::Format`]) instead of panicking.

use crate::error::{Error, ErrorKind};
use crate::frame::{Frame, FrameError, MAX_DIMENSION};
use crate::{DepthMap, GreyFrame};

/// Why a buffer could not be converted. Always [`ErrorKind::Format`]: the data is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// The buffer ends before the last row does.
    #[error("short buffer: {got} bytes, need {need} for {width}x{height} with stride {stride}")]
    ShortBuffer {
        /// Bytes supplied.
        got: usize,
        /// Bytes needed.
        need: usize,
        /// Frame width.
        width: u32,
        /// Frame height.
        height: u32,
        /// Bytes per row.
        stride: usize,
    },
    /// The stride is shorter than one row of pixels, or the size is empty or absurd.
    #[error("bad geometry {width}x{height}, stride {stride}: {why}")]
    Geometry {
        /// Frame width.
        width: u32,
        /// Frame height.
        height: u32,
        /// Bytes per row.
        stride: usize,
        /// Which constraint failed.
        why: &'static str,
    },
    /// The JPEG is corrupt, truncated or unsupported.
    #[error("corrupt MJPEG frame: {0}")]
    Mjpeg(#[source] crate::jpeg::JpegError),
    /// The decoded JPEG does not have the negotiated size.
    #[error("MJPEG frame is {got:?}, expected {want:?}")]
    SizeMismatch {
        /// Decoded (width, height).
        got: (u32, u32),
        /// Negotiated (width, height).
        want: (u32, u32),
    },
    /// The frame types rejected the result (e.g. a sample above the bit depth).
    #[error(transparent)]
    Frame(#[from] FrameError),
}

impl Error for ConvertError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Format
    }
}

/// Check that `data` holds `height` rows of `row_bytes` spaced `stride` apart. The last row
/// need not be padded (some drivers report `sizeimage` without the final padding).
fn check(
    data: &[u8],
    width: u32,
    height: u32,
    stride: usize,
    row_bytes: usize,
) -> Result<(), ConvertError> {
    let geometry = |why| ConvertError::Geometry {
        width,
        height,
        stride,
        why,
    };
    if width == 0 || height == 0 {
        return Err(geometry("empty"));
    }
    if width > MAX_DIMENSION || height > MAX_DIMENSION {
        return Err(geometry("larger than MAX_DIMENSION"));
    }
    if stride < row_bytes {
        return Err(geometry("stride shorter than a row"));
    }
    let need = stride * (height as usize - 1) + row_bytes;
    if data.len() < need {
        return Err(ConvertError::ShortBuffer {
            got: data.len(),
            need,
            width,
            height,
            stride,
        });
    }
    Ok(())
}

fn rows(data: &[u8], height: u32, stride: usize, row_bytes: usize) -> impl Iterator<Item = &[u8]> {
    (0..height as usize).map(move |y| &data[y * stride..y * stride + row_bytes])
}

// BT.601 limited-range YCbCr -> RGB in 20-bit fixed point, the constants and rounding of
// OpenCV's `COLOR_YUV2RGB_YUYV` (and of libv4lconvert up to rounding):
//   R = 1.164 (Y-16) + 1.596 (V-128)
//   G = 1.164 (Y-16) - 0.813 (V-128) - 0.391 (U-128)
//   B = 1.164 (Y-16) + 2.018 (U-128)
const CY: i32 = 1_220_542;
const CUB: i32 = 2_116_026;
const CUG: i32 = -409_993;
const CVG: i32 = -852_492;
const CVR: i32 = 1_673_527;
const SHIFT: u32 = 20;
const HALF: i32 = 1 << (SHIFT - 1);

#[inline]
fn yuv_to_rgb(y: u8, u: i32, v: i32) -> [u8; 3] {
    let y = (y as i32 - 16).max(0) * CY;
    let c = |x: i32| ((y + x) >> SHIFT).clamp(0, 255) as u8;
    [
        c(HALF + CVR * v),
        c(HALF + CVG * v + CUG * u),
        c(HALF + CUB * u),
    ]
}

/// YUYV 4:2:2 (`YUYV`/`YUY2`: bytes Y0 U Y1 V per pixel pair) to RGB8, BT.601 limited range.
/// The width must be even (a chroma sample spans two pixels).
pub fn yuyv_to_rgb(
    data: &[u8],
    width: u32,
    height: u32,
    stride: usize,
) -> Result<Frame, ConvertError> {
    if !width.is_multiple_of(2) {
        return Err(ConvertError::Geometry {
            width,
            height,
            stride,
            why: "YUYV needs an even width",
        });
    }
    let row_bytes = 2 * width as usize;
    check(data, width, height, stride, row_bytes)?;
    let mut out = Vec::with_capacity(3 * width as usize * height as usize);
    for row in rows(data, height, stride, row_bytes) {
        for px in row.chunks_exact(4) {
            let (u, v) = (px[1] as i32 - 128, px[3] as i32 - 128);
            out.extend_from_slice(&yuv_to_rgb(px[0], u, v));
            out.extend_from_slice(&yuv_to_rgb(px[2], u, v));
        }
    }
    Ok(Frame::from_rgb8(width, height, out)?)
}

/// Motion-JPEG (one baseline JPEG per buffer) to RGB8, checked against the negotiated size.
/// Corrupt or truncated data is an error, never a panic. `bytesused` of the driver's buffer
/// must already have been applied (trailing garbage after EOI is tolerated).
pub fn mjpeg_to_rgb(data: &[u8], width: u32, height: u32) -> Result<Frame, ConvertError> {
    let frame = crate::jpeg::decode_rgb(data).map_err(ConvertError::Mjpeg)?;
    let got = (frame.width(), frame.height());
    if got != (width, height) {
        return Err(ConvertError::SizeMismatch {
            got,
            want: (width, height),
        });
    }
    Ok(frame)
}

/// 8-bit grey (`GREY`/`Y8`) replicated into RGB8, for a mono camera used as the main camera.
pub fn grey_to_frame(
    data: &[u8],
    width: u32,
    height: u32,
    stride: usize,
) -> Result<Frame, ConvertError> {
    check(data, width, height, stride, width as usize)?;
    let out = rows(data, height, stride, width as usize)
        .flat_map(|r| r.iter().flat_map(|&g| [g, g, g]))
        .collect();
    Ok(Frame::from_rgb8(width, height, out)?)
}

/// 8-bit grey (`GREY`/`Y8`) to an 8-bit [`GreyFrame`] (a NIR camera).
pub fn grey_to_grey(
    data: &[u8],
    width: u32,
    height: u32,
    stride: usize,
) -> Result<GreyFrame, ConvertError> {
    check(data, width, height, stride, width as usize)?;
    let samples = rows(data, height, stride, width as usize)
        .flat_map(|r| r.iter().map(|&g| g as u16))
        .collect();
    Ok(GreyFrame::new(width, height, 8, samples)?)
}

fn le16_rows(
    data: &[u8],
    width: u32,
    height: u32,
    stride: usize,
) -> Result<Vec<u16>, ConvertError> {
    let row_bytes = 2 * width as usize;
    check(data, width, height, stride, row_bytes)?;
    Ok(rows(data, height, stride, row_bytes)
        .flat_map(|r| r.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])))
        .collect())
}

/// 16-bit little-endian grey to a [`GreyFrame`] of `bit_depth` significant bits.
///
/// Use `bit_depth = 16` for V4L2 `Y16` (MSB-aligned: a 10-bit sensor's values are shifted up)
/// and `bit_depth = 10` for `Y10` (LSB-aligned, upper 6 bits zero). A sample that does not fit
/// `bit_depth` is a format error: the declared format and the data disagree.
pub fn y16_to_grey(
    data: &[u8],
    width: u32,
    height: u32,
    stride: usize,
    bit_depth: u8,
) -> Result<GreyFrame, ConvertError> {
    let samples = le16_rows(data, width, height, stride)?;
    Ok(GreyFrame::new(width, height, bit_depth, samples)?)
}

/// `Z16` depth (16-bit little-endian, `unit_um` micrometres per count, 0 = invalid) to a
/// millimetre [`DepthMap`], rounded to the nearest millimetre.
///
/// RealSense D4xx use 1000 µm (1 mm) per count by default. A value that would exceed 65535 mm
/// after scaling, or that rounds to 0 mm, becomes invalid (0) rather than wrapping.
pub fn z16_to_depth(
    data: &[u8],
    width: u32,
    height: u32,
    stride: usize,
    unit_um: u32,
) -> Result<DepthMap, ConvertError> {
    if unit_um == 0 {
        return Err(ConvertError::Geometry {
            width,
            height,
            stride,
            why: "depth unit must be at least 1 micrometre",
        });
    }
    let raw = le16_rows(data, width, height, stride)?;
    let mm = if unit_um == 1000 {
        raw
    } else {
        raw.into_iter()
            .map(|v| {
                let mm = (v as u64 * unit_um as u64 + 500) / 1000;
                if mm > u16::MAX as u64 { 0 } else { mm as u16 }
            })
            .collect()
    };
    Ok(DepthMap::new(width, height, mm)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yuyv_hand_computed_values() {
        // Each pair: Y0 U Y1 V. Values worked through the fixed-point formula by hand:
        //  Y=235,U=V=128: 219*1220542 + 2^19 = 267_822_986 >> 20 = 255 (white)
        //  Y=16 -> 0 (black); Y=126: 110*1220542 + 2^19 = 134_783_908 >> 20 = 128 (grey)
        //  Y=81,U=90,V=240 (BT.601 red): R = (65*1220542 + 2^19 + 112*1673527) >> 20
        //    = 267_294_542 >> 20 = 254; G = (79_335_230 + 2^19 - 112*852492 + 38*409993) >> 20
        //    = (79_335_230 + 524_288 - 95_479_104 + 15_579_734) >> 20 = -39_852 >> 20 -> 0;
        //    B = (79_335_230 + 524_288 - 38*2116026) >> 20 = -552_470 >> 20 -> 0.
        let data = [235, 128, 16, 128, 126, 128, 81, 128, 81, 90, 81, 240];
        let f = yuyv_to_rgb(&data, 6, 1, 12).unwrap();
        assert_eq!(f.pixel(0, 0), [255, 255, 255]);
        assert_eq!(f.pixel(1, 0), [0, 0, 0]);
        assert_eq!(f.pixel(2, 0), [128, 128, 128]);
        assert_eq!(f.pixel(3, 0), [76, 76, 76]);
        assert_eq!(f.pixel(4, 0), [254, 0, 0]);
        assert_eq!(f.pixel(5, 0), [254, 0, 0]);
    }

    #[test]
    fn yuyv_stride_and_short_buffers() {
        // 2x2 with 4 bytes of padding per row (stride 8); last row unpadded is accepted.
        let data = [16, 128, 16, 128, 9, 9, 9, 9, 235, 128, 235, 128];
        let f = yuyv_to_rgb(&data, 2, 2, 8).unwrap();
        assert_eq!(f.pixel(1, 0), [0, 0, 0]);
        assert_eq!(f.pixel(0, 1), [255, 255, 255]);
        assert!(matches!(
            yuyv_to_rgb(&data[..11], 2, 2, 8),
            Err(ConvertError::ShortBuffer {
                got: 11,
                need: 12,
                ..
            })
        ));
        assert!(matches!(
            yuyv_to_rgb(&data, 2, 2, 3),
            Err(ConvertError::Geometry { .. })
        ));
        assert!(matches!(
            yuyv_to_rgb(&data, 3, 1, 8),
            Err(ConvertError::Geometry { .. })
        ));
        assert!(matches!(
            yuyv_to_rgb(&[], 0, 0, 0),
            Err(ConvertError::Geometry { .. })
        ));
        assert_eq!(
            yuyv_to_rgb(&[], 2, 2, 4).unwrap_err().kind(),
            ErrorKind::Format
        );
    }

    fn jpeg(w: u32, h: u32, rgb: [u8; 3]) -> Vec<u8> {
        let img = image::RgbImage::from_pixel(w, h, image::Rgb(rgb));
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 100)
            .encode_image(&img)
            .unwrap();
        out
    }

    #[test]
    fn mjpeg_decodes_and_rejects_corruption() {
        let bytes = jpeg(16, 8, [200, 40, 90]);
        let f = mjpeg_to_rgb(&bytes, 16, 8).unwrap();
        let p = f.pixel(5, 5);
        // Quality-100 JPEG of a flat colour: within a couple of levels of the original.
        for (got, want) in p.iter().zip([200u8, 40, 90]) {
            assert!((*got as i32 - want as i32).abs() <= 3, "{p:?}");
        }
        assert!(matches!(
            mjpeg_to_rgb(&bytes, 32, 8),
            Err(ConvertError::SizeMismatch { got: (16, 8), .. })
        ));
        // Truncated, garbage, and empty buffers: errors, never panics.
        for bad in [
            &bytes[..bytes.len() / 3],
            b"\xff\xd8\xff\xe0garbage".as_slice(),
            &[],
        ] {
            let err = mjpeg_to_rgb(bad, 16, 8).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Format, "{err}");
        }
        // Corrupt entropy-coded data in the middle must not panic either.
        let mut flipped = bytes.clone();
        let n = flipped.len();
        for b in &mut flipped[n / 2..n / 2 + 16] {
            *b ^= 0x5a;
        }
        let _ = mjpeg_to_rgb(&flipped, 16, 8);
    }

    #[test]
    fn grey_formats() {
        // 3x2 with one padding byte per row.
        let data = [10, 20, 30, 0, 40, 50, 60];
        let f = grey_to_frame(&data, 3, 2, 4).unwrap();
        assert_eq!(f.pixel(2, 0), [30, 30, 30]);
        assert_eq!(f.pixel(0, 1), [40, 40, 40]);
        let g = grey_to_grey(&data, 3, 2, 4).unwrap();
        assert_eq!(g.bit_depth(), 8);
        assert_eq!(g.samples(), &[10, 20, 30, 40, 50, 60]);
        assert!(matches!(
            grey_to_grey(&data[..6], 3, 2, 4),
            Err(ConvertError::ShortBuffer { .. })
        ));
    }

    #[test]
    fn y16_and_y10() {
        // Little-endian: [0x34, 0x12] = 0x1234 = 4660; [0xff, 0x03] = 1023; [0x00, 0x04] = 1024.
        let data = [0x34, 0x12, 0xff, 0x03, 0x00, 0x04, 0xff, 0xff];
        let g = y16_to_grey(&data, 4, 1, 8, 16).unwrap();
        assert_eq!(g.samples(), &[4660, 1023, 1024, 65535]);
        // Y10: 1023 fits, 1024 does not -> format error naming the value.
        let g = y16_to_grey(&data[2..4], 1, 1, 2, 10).unwrap();
        assert_eq!(g.samples(), &[1023]);
        let err = y16_to_grey(&data, 4, 1, 8, 10).unwrap_err();
        assert!(err.to_string().contains("4660"), "{err}");
        // Stride 6 for 2 pixels: two padding bytes between rows.
        let padded = [1, 0, 2, 0, 0xee, 0xee, 3, 0, 4, 0];
        let g = y16_to_grey(&padded, 2, 2, 6, 16).unwrap();
        assert_eq!(g.samples(), &[1, 2, 3, 4]);
        assert!(y16_to_grey(&padded[..9], 2, 2, 6, 16).is_err());
    }

    #[test]
    fn z16_units() {
        // Raw counts 0 (invalid), 600, 1500, 65535.
        let data = [0, 0, 0x58, 0x02, 0xdc, 0x05, 0xff, 0xff];
        let d = z16_to_depth(&data, 4, 1, 8, 1000).unwrap();
        assert_eq!(d.data(), &[0, 600, 1500, 65535]);
        assert_eq!(d.depth_mm(0, 0), None);
        // 100 um per count: 600 -> 60 mm, 1500 -> 150 mm, 65535 -> 6553.5 -> 6554 mm.
        let d = z16_to_depth(&data, 4, 1, 8, 100).unwrap();
        assert_eq!(d.data(), &[0, 60, 150, 6554]);
        // 2 mm per count: 65535 -> 131070 mm overflows u16 -> invalid, not wrapped.
        let d = z16_to_depth(&data, 4, 1, 8, 2000).unwrap();
        assert_eq!(d.data(), &[0, 1200, 3000, 0]);
        assert!(z16_to_depth(&data, 4, 1, 8, 0).is_err());
        assert!(matches!(
            z16_to_depth(&data[..7], 4, 1, 8, 1000),
            Err(ConvertError::ShortBuffer { .. })
        ));
    }
}
