//! Smoke test of the V4L2 backend against a real driver (run inside the vivid VM by
//! `tests/v4l2-vm/run.sh`, or on a board with a camera).
//!
//! Lists every V4L2 node, then opens the device (default `/dev/video0`) at 640x480 YUYV with
//! mmap streaming, captures N frames and checks their size, that they are not blank, that
//! sequence numbers increase and timestamps do not go backwards. It also checks that asking for
//! a format the device lacks gives the "unsupported format" error listing what it offers, and,
//! if the device offers GREY or Z16, captures through the IR / depth sources too. Ends with one
//! line `V4L2-PROBE: PASS ...` or `V4L2-PROBE: FAIL ...`, exit status 0 or 1.
//!
//! Usage: `v4l2_probe [DEVICE] [FRAMES]`

use std::process::ExitCode;

use facegate_hal::v4l2::{self, PixelFormat, V4l2Camera, V4l2Config, V4l2Depth, V4l2Error, V4l2Ir};
use facegate_hal::{DepthSource, Error, ErrorKind, FrameSource, Intrinsics, IrSource};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let device = args.next().unwrap_or_else(|| "/dev/video0".into());
    let frames: u32 = args.next().and_then(|n| n.parse().ok()).unwrap_or(10);
    match run(&device, frames) {
        Ok(summary) => {
            println!("V4L2-PROBE: PASS {summary}");
            ExitCode::SUCCESS
        }
        Err(why) => {
            println!("V4L2-PROBE: FAIL {why}");
            ExitCode::FAILURE
        }
    }
}

fn run(device: &str, frames: u32) -> Result<String, String> {
    let listing = v4l2::list_devices();
    println!("{} V4L2 node(s):", listing.len());
    let mut offered = Vec::new();
    for entry in &listing {
        match entry {
            Ok(info) => {
                print!("{info}");
                if info.path.as_os_str() == device {
                    offered = info.formats.iter().filter_map(|f| f.supported).collect();
                }
            }
            Err(e) => println!("  {e}"),
        }
    }
    if offered.is_empty() {
        return Err(format!("{device} not listed or offers no supported format"));
    }

    let mut cfg = V4l2Config::new(device, PixelFormat::Yuyv, 640, 480);
    cfg.fps = Some(30);
    let mut cam = V4l2Camera::open(&cfg).map_err(|e| e.to_string())?;
    let n = cam.negotiated().clone();
    println!("negotiated: {n:?}");
    if (n.width, n.height) != (640, 480) {
        return Err(format!(
            "driver granted {}x{}, expected 640x480",
            n.width, n.height
        ));
    }
    let mut last: Option<(u64, std::time::Instant)> = None;
    let t0 = std::time::Instant::now();
    for i in 0..frames {
        let c = cam.next_frame().map_err(|e| format!("frame {i}: {e}"))?;
        let f = &c.frame;
        if (f.width(), f.height()) != (640, 480) {
            return Err(format!("frame {i} is {}x{}", f.width(), f.height()));
        }
        if f.data().iter().all(|&b| b == 0) {
            return Err(format!("frame {i} is all zero"));
        }
        // vivid's default pattern is colour bars: a middle row must hold several colours.
        let mut colours: Vec<[u8; 3]> = (0..640).step_by(8).map(|x| f.pixel(x, 240)).collect();
        colours.sort();
        colours.dedup();
        if colours.len() < 4 {
            return Err(format!(
                "frame {i}: only {} distinct colours in row 240",
                colours.len()
            ));
        }
        if let Some((seq, ts)) = last {
            if c.sequence <= seq {
                return Err(format!("frame {i}: sequence {} after {seq}", c.sequence));
            }
            if c.timestamp < ts {
                return Err(format!("frame {i}: timestamp went backwards"));
            }
        }
        println!(
            "frame {i}: seq {} {}x{} {} colours in row 240, age {:?}",
            c.sequence,
            f.width(),
            f.height(),
            colours.len(),
            c.timestamp.elapsed()
        );
        last = Some((c.sequence, c.timestamp));
    }
    let rate = frames as f64 / t0.elapsed().as_secs_f64();
    drop(cam);

    // The unsupported-format error must name what the device offers.
    let mut extra = Vec::new();
    if !offered.contains(&PixelFormat::Mjpeg) {
        let err =
            V4l2Camera::open(&V4l2Config::new(device, PixelFormat::Mjpeg, 640, 480)).unwrap_err();
        println!("expected error: {err}");
        if err.kind() != ErrorKind::Format
            || !matches!(&err, V4l2Error::UnsupportedFormat { offered, .. } if offered.iter().any(|o| o.starts_with("YUYV")))
        {
            return Err(format!("unsupported-format error is wrong: {err}"));
        }
        extra.push("unsupported-format error ok");
    }
    for (format, label, depth) in [
        (PixelFormat::Grey, "GREY as IR ok", 8),
        (PixelFormat::Y10, "Y10 as IR ok", 10),
        (PixelFormat::Y16, "Y16 as IR ok", 16),
    ] {
        if !offered.contains(&format) {
            continue;
        }
        let mut ir =
            V4l2Ir::open(&V4l2Config::new(device, format, 640, 480)).map_err(|e| e.to_string())?;
        for _ in 0..3 {
            let g = ir.next_ir().map_err(|e| format!("{format:?}: {e}"))?;
            let f = &g.frame;
            if (f.width(), f.height(), f.bit_depth()) != (640, 480, depth) {
                return Err(format!(
                    "{format:?} frame is {}x{} at {} bits",
                    f.width(),
                    f.height(),
                    f.bit_depth()
                ));
            }
            if f.samples().iter().all(|&s| s == 0) {
                return Err(format!("{format:?} frame is all zero"));
            }
        }
        extra.push(label);
    }
    if offered.contains(&PixelFormat::Z16) {
        let k = Intrinsics {
            fx: 600.0,
            fy: 600.0,
            cx: 320.0,
            cy: 240.0,
        };
        let mut d = V4l2Depth::open(&V4l2Config::new(device, PixelFormat::Z16, 640, 480), k)
            .map_err(|e| e.to_string())?;
        for _ in 0..3 {
            d.next_depth().map_err(|e| format!("Z16: {e}"))?;
        }
        extra.push("Z16 as depth ok");
    }
    Ok(format!(
        "captured {frames} frames 640x480 YUYV via mmap streaming ({rate:.1} fps); {}",
        extra.join("; ")
    ))
}
