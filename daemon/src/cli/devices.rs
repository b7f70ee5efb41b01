//! `facegate devices`: list the V4L2 video nodes, what they are and which formats they offer,
//! so a technician can pick the RGB, NIR and depth devices for the configuration.
//!
//! JSON contract: `{"devices":[{"path","card","driver","bus","capabilities":[..],"can_capture":bool,
//! "formats":[{"fourcc","description","supported":"YUYV"|null,"sizes":[..]}]}|{"path"?,"error"}]}`.
//! A machine without `/dev/video*` is not an error: the list is empty and the exit code 0.

use facegate::hal::v4l2::{self, DeviceInfo};
use serde_json::{Value, json};

use super::print_json;

/// Arguments of `facegate devices`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

fn device_json(d: &DeviceInfo) -> Value {
    let formats: Vec<Value> = d
        .formats
        .iter()
        .map(|f| {
            json!({
                "fourcc": f.fourcc,
                "description": f.description,
                "supported": f.supported.map(|p| String::from_utf8_lossy(&p.fourcc()).trim_end().to_string()),
                "sizes": f.sizes,
            })
        })
        .collect();
    json!({
        "path": d.path.display().to_string(),
        "card": d.card,
        "driver": d.driver,
        "bus": d.bus,
        "capabilities": d.capabilities,
        "can_capture": d.can_capture(),
        "formats": formats,
    })
}

/// Run `devices`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let devices = v4l2::list_devices();
    if args.json {
        let list: Vec<Value> = devices
            .iter()
            .map(|d| match d {
                Ok(info) => device_json(info),
                Err(e) => json!({"error": e.to_string()}),
            })
            .collect();
        return print_json(&json!({ "devices": list }));
    }
    if devices.is_empty() {
        println!("no V4L2 devices: /dev/video* does not exist on this machine");
        return Ok(());
    }
    for d in devices {
        match d {
            Ok(info) => print!("{info}"),
            Err(e) => println!("{e}"),
        }
    }
    Ok(())
}
