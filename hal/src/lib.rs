//! facegate's hardware abstraction layer.
//!
//! Everything that touches a physical device lives behind the small traits of this crate, so the
//! daemon runs unchanged on a board with an RGB camera only, with an RGB + near-infrared pair, with a
//! depth sensor, or fully simulated in tests. This file is the index; one module per concept.
//!
//! Modelled on `embedded-hal`: each trait ([`FrameSource`], [`IrSource`], [`IrEmitter`],
//! [`DepthSource`], [`LockOutput`], [`DoorSensor`], [`ExitButton`], [`Indicator`]) does one thing
//! and has an associated `Error` type classified by [`Error::kind`] into a common [`ErrorKind`].
//! All traits are synchronous and blocking: the daemon calls them from dedicated blocking
//! threads. Backends: [`v4l2`] (Linux cameras), `gpio` (Raspberry Pi pins, cargo feature
//! `gpio-rppal`), and [`sim`] (SIMULATED devices for tests and demos).

#![forbid(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod camera;
pub mod convert;
pub mod debounce;
pub mod depth;
pub mod door;
pub mod error;
pub mod frame;
#[cfg(feature = "gpio-rppal")]
pub mod gpio;
pub mod grey;
pub mod indicator;
pub mod jpeg;
pub mod registration;
pub mod sim;
pub mod v4l2;

pub use camera::{Captured, DepthSource, FrameSource, IrEmitter, IrSource};
pub use depth::DepthMap;
pub use door::{DoorSensor, DoorState, ExitButton, LockOutput, LockState, StrikeType};
pub use error::{Error, ErrorKind};
pub use frame::{Frame, FrameError};
pub use grey::GreyFrame;
pub use indicator::{Indicator, IndicatorState};
pub use registration::{DepthAssumption, Intrinsics, PixelBox, Registration, Sensor};
