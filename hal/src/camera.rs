//! Image-sensor traits: RGB camera, near-infrared camera (+ its emitter), depth sensor.
//!
//! All traits are synchronous and blocking on purpose: the daemon drives each sensor from its
//! own blocking thread, and a blocking `next_*` call maps one-to-one onto the V4L2 "dequeue the
//! next filled buffer" model. A call blocks until the sensor has finished exposing and
//! delivering a frame, or until the backend's own timeout expires ([`ErrorKind::Timeout`]).
//! Nothing here buffers frames beyond what the driver does: a slow consumer sees the newest
//! frames the driver still holds, and the gaps show up in [`Captured::sequence`].
//!
//! [`ErrorKind::Timeout`]: crate::ErrorKind::Timeout

use std::time::Instant;

use crate::{DepthMap, Frame, GreyFrame, Intrinsics, error::Error};

/// A frame plus when it was captured and its position in the stream.
///
/// The timestamp is what lets the daemon pair an RGB frame with the IR/depth frame taken at
/// the same moment, and reject stale frames; the sequence number reveals dropped frames.
#[derive(Debug, Clone)]
pub struct Captured<T> {
    /// The image itself.
    pub frame: T,
    /// When the sensor captured it, on the monotonic clock ([`Instant`]). For V4L2 this is
    /// the driver's buffer timestamp (usually end of exposure / start of readout) translated
    /// to `Instant`; backends without one use the time the frame was received.
    pub timestamp: Instant,
    /// Position in this source's stream. Strictly increasing; a jump of more than one means
    /// the driver or the source dropped frames in between.
    pub sequence: u64,
}

impl<T> Captured<T> {
    /// Apply `f` to the frame, keeping timestamp and sequence (e.g. after a format conversion).
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Captured<U> {
        Captured {
            frame: f(self.frame),
            timestamp: self.timestamp,
            sequence: self.sequence,
        }
    }
}

/// A colour camera delivering RGB frames: the input of face detection and RGB anti-spoofing.
pub trait FrameSource {
    /// Backend-specific failure, classified by [`Error::kind`].
    type Error: Error;

    /// Block until the next frame is available and return it converted to RGB8.
    ///
    /// A camera free-runs at its frame rate, so frames are produced whether or not anybody
    /// calls this; the call returns the oldest frame not yet returned that the driver still
    /// holds. Errors of kind `Timeout` and `Format` (one corrupt frame) are transient;
    /// `Disconnected` is not (reopen the device); `EndOfStream` only comes from finite
    /// (replayed) sources.
    fn next_frame(&mut self) -> Result<Captured<Frame>, Self::Error>;
}

/// A near-infrared camera: the face must be present in NIR, with skin-like reflectance, for
/// the IR liveness check (a phone or tablet screen emits no NIR).
pub trait IrSource {
    /// Backend-specific failure, classified by [`Error::kind`].
    type Error: Error;

    /// Block until the next NIR frame is available. Same blocking and error semantics as
    /// [`FrameSource::next_frame`].
    fn next_ir(&mut self) -> Result<Captured<GreyFrame>, Self::Error>;
}

/// The NIR illuminator (850/940 nm LEDs or VCSEL) paired with an [`IrSource`].
///
/// Switching it and comparing an on and an off frame shows the reflectance rise of a real
/// surface at face distance, and doubles as a self-test of the emitter itself. Electrical
/// truth: the sensor keeps exposing while the emitter switches, and rolling-shutter sensors
/// expose rows at different times, so the first frame(s) after a switch can be partly lit.
/// Discard [`IrEmitter::settle_frames`] frames after every switch before comparing.
pub trait IrEmitter {
    /// Backend-specific failure, classified by [`Error::kind`].
    type Error: Error;

    /// Command the emitter on or off. Returning `Ok` means the command was issued, not that
    /// light is being emitted: a dead LED string is only visible in the images.
    fn set_emitter(&mut self, on: bool) -> Result<(), Self::Error>;

    /// The last commanded state (not a measurement).
    fn emitter_on(&self) -> bool;

    /// Frames to discard after switching before a frame is guaranteed fully lit or unlit.
    /// The default (1) suits a rolling-shutter sensor whose switch lands mid-exposure.
    fn settle_frames(&self) -> u32 {
        1
    }
}

/// A depth sensor (ToF, active stereo, structured light): the depth liveness check needs the
/// 3D relief of the face and its metric size, which a flat photo or a screen cannot fake.
pub trait DepthSource {
    /// Backend-specific failure, classified by [`Error::kind`].
    type Error: Error;

    /// Block until the next depth map is available (millimetres, 0 = invalid). Same blocking
    /// and error semantics as [`FrameSource::next_frame`].
    fn next_depth(&mut self) -> Result<Captured<DepthMap>, Self::Error>;

    /// Pinhole intrinsics of the depth image, needed to turn pixels into millimetres (metric
    /// face width). For V4L2 devices these come from calibration/configuration: V4L2 does not
    /// report them.
    fn intrinsics(&self) -> Intrinsics;
}
