//! The one RGB frame type every camera backend produces and every vision stage consumes.
//!
//! Cameras deliver many pixel formats (MJPEG, YUYV, grey, ...); the HAL converts all of them into
//! [`Frame`] so the pipeline downstream has exactly one layout to get right: 8-bit RGB, row-major,
//! with an explicit row `stride` (bytes per row, at least `3 * width`) because V4L2 drivers pad rows.
//! Still images (JPEG/PNG fixtures, enrolment photos) decode into the same type through
//! [`Frame::decode`] / [`Frame::open`].

use std::path::Path;

use image::ImageDecoder;

/// Why a frame could not be built or decoded. Carries enough context for an operator to act.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The byte buffer does not hold `stride * height` bytes, or the stride is shorter than a row.
    #[error("frame geometry invalid: {width}x{height}, stride {stride}, {len} bytes ({why})")]
    Geometry {
        /// Claimed width in pixels.
        width: u32,
        /// Claimed height in pixels.
        height: u32,
        /// Claimed bytes per row.
        stride: usize,
        /// Bytes actually supplied.
        len: usize,
        /// Which constraint failed.
        why: &'static str,
    },
    /// The encoded image is corrupt, truncated, or in a format we do not decode.
    #[error("cannot decode image{}: {source}", path.as_deref().map(|p| format!(" {p}")).unwrap_or_default())]
    Decode {
        /// The file, when decoding from disk.
        path: Option<String>,
        /// The decoder's own message.
        #[source]
        source: image::ImageError,
    },
    /// A sample does not fit the declared bit depth (e.g. a value above 1023 in a 10-bit
    /// grey frame): the driver's format and the data disagree.
    #[error("sample value {value} exceeds the declared {bit_depth}-bit depth")]
    SampleRange {
        /// Declared bits per sample.
        bit_depth: u8,
        /// The first offending value.
        value: u16,
    },
    /// The file could not be read at all.
    #[error("cannot read image {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Largest dimension we accept from any decoder: protects a 1-8 GB board from a hostile
/// "decompression bomb" header announcing a 100k x 100k image.
pub const MAX_DIMENSION: u32 = 8192;

/// An 8-bit RGB image with explicit row stride.
///
/// Invariants (checked by every constructor): `width > 0`, `height > 0`,
/// `stride >= 3 * width`, `data.len() == stride * height`.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    width: u32,
    height: u32,
    stride: usize,
    data: Vec<u8>,
}

impl std::fmt::Debug for Frame {
    // Never dump pixel data into logs: a frame is a biometric sample.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("stride", &self.stride)
            .finish_non_exhaustive()
    }
}

impl Frame {
    /// Wrap a buffer produced by a capture backend, validating its geometry so a short or
    /// mis-sized buffer from a driver becomes an error rather than an out-of-bounds read later.
    pub fn new(width: u32, height: u32, stride: usize, data: Vec<u8>) -> Result<Self, FrameError> {
        let bad = |why| FrameError::Geometry {
            width,
            height,
            stride,
            len: data.len(),
            why,
        };
        if width == 0 || height == 0 {
            return Err(bad("empty"));
        }
        if width > MAX_DIMENSION || height > MAX_DIMENSION {
            return Err(bad("larger than MAX_DIMENSION"));
        }
        if stride < 3 * width as usize {
            return Err(bad("stride shorter than a row"));
        }
        if data.len() != stride * height as usize {
            return Err(bad("buffer length is not stride * height"));
        }
        Ok(Self {
            width,
            height,
            stride,
            data,
        })
    }

    /// Tightly packed RGB8 (stride = 3 * width): the common case for decoded images.
    pub fn from_rgb8(width: u32, height: u32, data: Vec<u8>) -> Result<Self, FrameError> {
        Self::new(width, height, 3 * width as usize, data)
    }

    /// Decode a JPEG or PNG held in memory. Grey, grey+alpha, RGBA and 16-bit images are
    /// converted to RGB8 (alpha is dropped: cameras never produce it and the models ignore it).
    pub fn decode(bytes: &[u8]) -> Result<Self, FrameError> {
        Self::decode_inner(bytes, None)
    }

    /// Read and decode an image file; errors name the file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, FrameError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| FrameError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::decode_inner(&bytes, Some(path.display().to_string()))
    }

    fn decode_inner(bytes: &[u8], path: Option<String>) -> Result<Self, FrameError> {
        let err = |source| FrameError::Decode {
            path: path.clone(),
            source,
        };
        if crate::jpeg::is_jpeg(bytes) {
            // libjpeg-turbo, bit-identical with the reference pipeline (see `jpeg`).
            let frame = crate::jpeg::decode_rgb(bytes).map_err(|e| {
                err(image::ImageError::Decoding(
                    image::error::DecodingError::new(
                        image::error::ImageFormatHint::Exact(image::ImageFormat::Jpeg),
                        e.to_string(),
                    ),
                ))
            })?;
            return match crate::jpeg::orientation(bytes) {
                Some(o) => crate::jpeg::apply_orientation(frame, o),
                None => Ok(frame),
            };
        }
        let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| err(image::ImageError::IoError(e)))?;
        let mut limits = image::Limits::default();
        limits.max_image_width = Some(MAX_DIMENSION);
        limits.max_image_height = Some(MAX_DIMENSION);
        limits.max_alloc = Some(512 * 1024 * 1024);
        reader.limits(limits);
        let mut decoder = reader.into_decoder().map_err(err)?;
        let orientation = decoder.orientation().ok();
        let mut img = image::DynamicImage::from_decoder(decoder).map_err(err)?;
        if let Some(o) = orientation {
            img.apply_orientation(o);
        }
        let rgb = img.into_rgb8();
        let (w, h) = rgb.dimensions();
        Self::from_rgb8(w, h, rgb.into_raw()).map_err(|e| match e {
            FrameError::Geometry { .. } => err(image::ImageError::Limits(
                image::error::LimitError::from_kind(image::error::LimitErrorKind::DimensionError),
            )),
            other => other,
        })
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Bytes per row (>= 3 * width).
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// The raw buffer, `stride * height` bytes, including any row padding.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The `3 * width` pixel bytes of row `y` (padding excluded). Panics if `y >= height`,
    /// which is a programming error, never an input error.
    pub fn row(&self, y: u32) -> &[u8] {
        let start = y as usize * self.stride;
        &self.data[start..start + 3 * self.width as usize]
    }

    /// Pixel at (x, y) as `[r, g, b]`. Panics when out of bounds (programming error).
    pub fn pixel(&self, x: u32, y: u32) -> [u8; 3] {
        let i = y as usize * self.stride + 3 * x as usize;
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }

    /// Copy into a tightly packed RGB8 buffer (drops row padding), e.g. for `image` interop.
    pub fn to_packed_rgb8(&self) -> Vec<u8> {
        if self.stride == 3 * self.width as usize {
            return self.data.clone();
        }
        let mut out = Vec::with_capacity(3 * self.width as usize * self.height as usize);
        for y in 0..self.height {
            out.extend_from_slice(self.row(y));
        }
        out
    }

    /// Resize with bilinear interpolation, bit-exact with OpenCV's `cv::resize(INTER_LINEAR)` on
    /// 8-bit images (its 11-bit fixed-point coefficients, pixel-centre grid
    /// `src = (dst + 0.5) * scale - 0.5`, border clamping and vertical rounding). The anti-spoof
    /// models were trained and are validated on OpenCV crops; a one-level difference on a few
    /// pixels moves their logits by up to 0.15, so "close enough" bilinear is not enough.
    pub fn resize_linear(&self, new_width: u32, new_height: u32) -> Result<Frame, FrameError> {
        let (w, h) = (new_width.max(1), new_height.max(1));
        if w > MAX_DIMENSION || h > MAX_DIMENSION {
            return Err(FrameError::Geometry {
                width: w,
                height: h,
                stride: 3 * w as usize,
                len: 0,
                why: "larger than MAX_DIMENSION",
            });
        }
        let xs = linear_taps(w, self.width, true);
        let ys = linear_taps(h, self.height, false);
        let (ow, sw) = (w as usize, self.width as usize);
        // Per destination pixel: byte offsets of its two source pixels and their weights.
        let taps: Vec<(usize, usize, i32, i32)> = xs
            .iter()
            .map(|t| (3 * t.i0, 3 * t.i1.min(sw - 1), t.w0, t.w1))
            .collect();
        // Horizontal pass of one source row into `buf` (3 values per destination pixel).
        let hpass = |y: usize, buf: &mut [i32]| {
            let row = self.row(y as u32);
            for (o, &(a, b, w0, w1)) in buf.chunks_exact_mut(3).zip(&taps) {
                let (pa, pb) = (&row[a..a + 3], &row[b..b + 3]);
                for c in 0..3 {
                    o[c] = i32::from(pa[c]) * w0 + i32::from(pb[c]) * w1;
                }
            }
        };
        let mut out = vec![0u8; 3 * ow * h as usize];
        let (mut r0, mut r1) = (vec![0i32; 3 * ow], vec![0i32; 3 * ow]);
        // Source rows whose horizontal passes r0 and r1 hold; reused like OpenCV's row ring.
        let mut cached = (usize::MAX, usize::MAX);
        for (dy, t) in ys.iter().enumerate() {
            if cached != (t.i0, t.i1) {
                if cached.1 == t.i0 {
                    std::mem::swap(&mut r0, &mut r1);
                } else {
                    hpass(t.i0, &mut r0);
                }
                if t.i1 == t.i0 {
                    r1.copy_from_slice(&r0);
                } else {
                    hpass(t.i1, &mut r1);
                }
                cached = (t.i0, t.i1);
            }
            let dst = &mut out[3 * ow * dy..3 * ow * (dy + 1)];
            for ((d, &s0), &s1) in dst.iter_mut().zip(&r0).zip(&r1) {
                // OpenCV's SIMD vertical step (VResizeLinearVec_32s8u), which is what runs for
                // every pixel on x86 and ARM builds.
                let v = (((t.w0 * (s0 >> 4)) >> 16) + ((t.w1 * (s1 >> 4)) >> 16) + 2) >> 2;
                *d = v.clamp(0, 255) as u8;
            }
        }
        Frame::from_rgb8(w, h, out)
    }
}

/// One output coordinate of OpenCV's linear resize: two source taps and fixed-point weights.
struct Tap {
    i0: usize,
    i1: usize,
    w0: i32,
    w1: i32,
}

/// OpenCV's coefficient table for one axis. Horizontally, out-of-range positions collapse to one
/// tap with weight 1 (OpenCV's `xmin/xmax` handling); vertically the fraction is kept and both
/// rows are clamped, exactly as `resizeGeneric` does.
fn linear_taps(dst_len: u32, src_len: u32, horizontal: bool) -> Vec<Tap> {
    const ONE: i32 = 1 << 11;
    let scale = 1.0 / (dst_len as f64 / src_len as f64);
    let last = src_len as i64 - 1;
    (0..dst_len)
        .map(|d| {
            let f = ((d as f64 + 0.5) * scale - 0.5) as f32;
            let mut s = f.floor() as i64;
            let mut frac = f - s as f32;
            if horizontal {
                if s < 0 {
                    s = 0;
                    frac = 0.0;
                }
                if s >= last {
                    return Tap {
                        i0: last as usize,
                        i1: last as usize,
                        w0: ONE,
                        w1: 0,
                    };
                }
            }
            let w0 = ((1.0 - frac) * ONE as f32).round_ties_even() as i32;
            let w1 = (frac * ONE as f32).round_ties_even() as i32;
            Tap {
                i0: s.clamp(0, last) as usize,
                i1: (s + 1).clamp(0, last) as usize,
                w0,
                w1,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_bytes(img: image::DynamicImage) -> Vec<u8> {
        let mut buf = std::io::Cursor::new(Vec::new());
        img.write_to(&mut buf, image::ImageFormat::Png).unwrap();
        buf.into_inner()
    }

    #[test]
    fn geometry_is_validated() {
        assert!(Frame::new(2, 2, 6, vec![0; 12]).is_ok());
        assert!(Frame::new(2, 2, 8, vec![0; 16]).is_ok());
        assert!(matches!(
            Frame::new(2, 2, 5, vec![0; 10]),
            Err(FrameError::Geometry { .. })
        ));
        assert!(matches!(
            Frame::new(2, 2, 6, vec![0; 11]),
            Err(FrameError::Geometry { .. })
        ));
        assert!(Frame::new(0, 2, 6, vec![]).is_err());
    }

    #[test]
    fn stride_padding_is_respected() {
        // 2x2 frame with 2 padding bytes per row.
        let f = Frame::new(
            2,
            2,
            8,
            vec![1, 2, 3, 4, 5, 6, 99, 99, 7, 8, 9, 10, 11, 12, 99, 99],
        )
        .unwrap();
        assert_eq!(f.row(1), &[7, 8, 9, 10, 11, 12]);
        assert_eq!(f.pixel(1, 1), [10, 11, 12]);
        assert_eq!(
            f.to_packed_rgb8(),
            vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
        );
    }

    #[test]
    fn grey_and_rgba_convert_to_rgb() {
        let grey = image::DynamicImage::ImageLuma8(
            image::GrayImage::from_raw(2, 1, vec![10, 200]).unwrap(),
        );
        let f = Frame::decode(&png_bytes(grey)).unwrap();
        assert_eq!(f.pixel(0, 0), [10, 10, 10]);
        assert_eq!(f.pixel(1, 0), [200, 200, 200]);
        let rgba = image::DynamicImage::ImageRgba8(
            image::RgbaImage::from_raw(1, 1, vec![1, 2, 3, 4]).unwrap(),
        );
        let f = Frame::decode(&png_bytes(rgba)).unwrap();
        assert_eq!(f.pixel(0, 0), [1, 2, 3]);
    }

    #[test]
    fn corrupt_and_truncated_inputs_are_errors() {
        assert!(matches!(
            Frame::decode(b"not an image"),
            Err(FrameError::Decode { .. })
        ));
        let img = image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
            32,
            32,
            image::Rgb([9, 9, 9]),
        ));
        let bytes = png_bytes(img);
        let err = Frame::decode(&bytes[..bytes.len() / 2]).unwrap_err();
        assert!(matches!(err, FrameError::Decode { .. }), "{err}");
        let err = Frame::open("/nonexistent/x.jpg").unwrap_err();
        assert!(err.to_string().contains("/nonexistent/x.jpg"));
    }

    /// The first, straightforward implementation (one horizontal pass per cached row pair,
    /// pushed value by value): the optimised [`Frame::resize_linear`] must equal it byte for
    /// byte, whatever the sizes.
    fn resize_reference(f: &Frame, w: u32, h: u32) -> Vec<u8> {
        let xs = linear_taps(w, f.width, true);
        let ys = linear_taps(h, f.height, false);
        let (ow, sw) = (w as usize, f.width as usize);
        let hpass = |y: usize, buf: &mut Vec<i32>| {
            buf.clear();
            let row = f.row(y as u32);
            for t in &xs {
                for c in 0..3 {
                    let a = row[3 * t.i0 + c] as i32;
                    let b = row[3 * t.i1.min(sw - 1) + c] as i32;
                    buf.push(a * t.w0 + b * t.w1);
                }
            }
        };
        let mut out = vec![0u8; 3 * ow * h as usize];
        let (mut r0, mut r1) = (Vec::new(), Vec::new());
        for (dy, t) in ys.iter().enumerate() {
            hpass(t.i0, &mut r0);
            hpass(t.i1, &mut r1);
            let dst = &mut out[3 * ow * dy..3 * ow * (dy + 1)];
            for ((d, &s0), &s1) in dst.iter_mut().zip(&r0).zip(&r1) {
                let v = (((t.w0 * (s0 >> 4)) >> 16) + ((t.w1 * (s1 >> 4)) >> 16) + 2) >> 2;
                *d = v.clamp(0, 255) as u8;
            }
        }
        out
    }

    #[test]
    fn resize_equals_the_reference_implementation() {
        let mut seed = 0x9e37_79b9_u32;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        for (w, h) in [
            (1u32, 1u32),
            (2, 3),
            (17, 9),
            (64, 48),
            (250, 250),
            (301, 123),
        ] {
            let data: Vec<u8> = (0..3 * w * h).map(|_| next() as u8).collect();
            let f = Frame::from_rgb8(w, h, data).unwrap();
            for (nw, nh) in [
                (1, 1),
                (w, h),
                (w.div_ceil(2), h.div_ceil(2)),
                (w.div_ceil(3).max(1), h.div_ceil(5).max(1)),
                (2 * w + 1, h + 3),
                (w + 7, 3 * h),
                (640.min(4 * w), 5),
            ] {
                assert_eq!(
                    f.resize_linear(nw, nh).unwrap().data(),
                    &resize_reference(&f, nw, nh)[..],
                    "{w}x{h} -> {nw}x{nh}"
                );
            }
        }
    }

    /// Expected bytes produced by OpenCV 4 `cv2.resize(img, (w, h))` (INTER_LINEAR) on the
    /// pattern below: one vertical upscale + horizontal downscale, one the other way round.
    #[test]
    fn resize_is_bit_exact_with_opencv() {
        let (w, h) = (7u32, 5u32);
        let mut data = Vec::new();
        for y in 0..h {
            for x in 0..w {
                for c in 0..3u32 {
                    data.push(((x * 37 + y * 91 + c * 53 + x * x * y) % 256) as u8);
                }
            }
        }
        let f = Frame::from_rgb8(w, h, data).unwrap();
        let up_y: [u8; 81] = [
            24, 78, 131, 111, 164, 217, 197, 165, 47, 55, 108, 161, 144, 112, 165, 152, 148, 87,
            106, 159, 212, 200, 25, 78, 76, 120, 154, 157, 134, 149, 141, 52, 105, 114, 129, 106,
            208, 90, 58, 55, 108, 161, 181, 148, 31, 117, 94, 109, 110, 163, 74, 105, 120, 97, 54,
            107, 160, 166, 191, 16, 58, 101, 154, 105, 158, 211, 221, 104, 71, 124, 120, 173, 135,
            188, 241, 255, 52, 105, 164, 131, 185,
        ];
        assert_eq!(f.resize_linear(3, 9).unwrap().data(), &up_y[..]);
        let up_x: [u8; 132] = [
            11, 64, 117, 28, 81, 134, 52, 105, 155, 76, 129, 158, 100, 141, 174, 123, 145, 197,
            147, 168, 221, 163, 193, 184, 167, 217, 66, 188, 119, 70, 206, 35, 88, 125, 178, 135,
            142, 152, 152, 158, 124, 163, 124, 150, 87, 124, 119, 70, 152, 46, 98, 182, 75, 128,
            169, 106, 132, 99, 137, 103, 117, 117, 127, 141, 98, 151, 79, 132, 89, 97, 106, 107,
            114, 79, 132, 81, 108, 161, 85, 139, 133, 117, 171, 63, 153, 104, 99, 146, 82, 109, 83,
            121, 86, 109, 110, 119, 139, 96, 149, 97, 150, 203, 115, 168, 221, 142, 195, 227, 173,
            226, 116, 206, 178, 77, 242, 72, 92, 141, 92, 133, 93, 123, 176, 119, 169, 222, 166,
            97, 150, 202, 31, 84,
        ];
        assert_eq!(f.resize_linear(11, 4).unwrap().data(), &up_x[..]);
    }
}
