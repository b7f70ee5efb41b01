//! The daemon as a product: `facegate demo` end to end (its scenario lines, exit code and the
//! journal fields it leaves in a real systemd-journald), and `facegate run` under a simulated
//! systemd (READY/STATUS/WATCHDOG over a notify socket, SIGTERM → relock, exit 0).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use facegate_tests::{face, facegate_bin, models_dir, repo_root, shared_dir};
use serde_json::Value;

fn journal_entries(path: &Path) -> Vec<BTreeMap<String, Value>> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The demo through the real service wiring, logging into its own journald and publishing its
/// events to a real Mosquitto (mutual TLS); then the fields a technician filters on are read
/// back with `journalctl -D ... -o json`.
#[test]
fn demo_scenarios_journal_fields_and_broker() {
    let _ = models_dir();
    let out = tempfile::tempdir().unwrap();
    let broker = facegate_tests::mosquitto::Broker::start("demo-site", &["door-7"]);
    let client = broker.client("door-7");
    let broker_cfg = out.path().join("broker.toml");
    std::fs::write(
        &broker_cfg,
        format!(
            "[device]\nsite = \"demo-site\"\nid = \"door-7\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = {}\nca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}\n",
            broker.port, broker.ca, client.cert, client.key
        ),
    )
    .unwrap();
    let status = Command::new("bash")
        .arg(repo_root().join("tests/journald/run.sh"))
        .arg(out.path())
        .arg("--")
        .arg(facegate_bin())
        .arg("demo")
        .arg("--fixtures")
        .arg(shared_dir().join("faces"))
        .arg("--models")
        .arg(models_dir())
        .arg("--broker")
        .arg(&broker_cfg)
        .status()
        .unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "journald harness failed (needs root for `unshare -m` and Debian's systemd-journald)"
    );
    let stdout = std::fs::read_to_string(out.path().join("stdout")).unwrap();
    let stderr = std::fs::read_to_string(out.path().join("stderr")).unwrap();
    println!("{stdout}");
    let rc: i32 = std::fs::read_to_string(out.path().join("rc"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(rc, 0, "demo failed:\n{stdout}\n{stderr}");
    for (name, outcome) in [
        ("enrolled-person", "GRANTED (match)"),
        ("unknown-person", "DENIED"),
        ("printed-photo", "DENIED (liveness)"),
        ("screen-replay", "DENIED (liveness)"),
    ] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("scenario {name}:")))
            .unwrap_or_else(|| panic!("no scenario line for {name}:\n{stdout}"));
        assert!(
            line.starts_with(&format!("scenario {name}: {outcome}")),
            "{line}"
        );
        assert!(!line.contains("UNEXPECTED"), "{line}");
    }
    let unknown = stdout
        .lines()
        .find(|l| l.starts_with("scenario unknown-person:"))
        .unwrap();
    assert!(
        unknown.contains("(below_threshold)") || unknown.contains("(ambiguous_margin)"),
        "the unknown person must be denied by the matcher, not by liveness: {unknown}"
    );

    // Every committed event was acknowledged by the broker (the outbox drained on PUBACKs).
    let committed: usize = stdout
        .lines()
        .find_map(|l| l.strip_prefix("outbox: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no outbox line:\n{stdout}"));
    assert!(committed >= 6, "{stdout}");
    assert!(
        stdout.contains(&format!(
            "{committed} published and acknowledged by the broker"
        )),
        "{stdout}"
    );
    assert!(broker.log().contains("door-7"), "{}", broker.log());

    let entries = journal_entries(&out.path().join("journal.json"));
    let ours: Vec<_> = entries
        .iter()
        .filter(|e| e.get("SYSLOG_IDENTIFIER").and_then(Value::as_str) == Some("facegate"))
        .collect();
    let access: Vec<_> = ours
        .iter()
        .filter(|e| e.get("FACEGATE_EVENT").and_then(Value::as_str) == Some("access"))
        .collect();
    assert_eq!(
        access.len(),
        4,
        "one access entry per scenario: {access:#?}"
    );
    let get = |e: &BTreeMap<String, Value>, k: &str| {
        e.get(k)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("journal entry lacks {k}: {e:#?}"))
            .to_string()
    };
    let granted: Vec<_> = access
        .iter()
        .filter(|e| get(e, "DECISION") == "granted")
        .collect();
    assert_eq!(granted.len(), 1);
    assert_eq!(get(granted[0], "REASON"), "match");
    assert_eq!(get(granted[0], "PERSON_ID"), "obama");
    // Labels are off by default: the name never reaches the journal.
    assert_eq!(get(granted[0], "PERSON_LABEL"), "");
    for e in &access {
        for k in [
            "LATENCY_DETECT_MS",
            "LATENCY_LIVENESS_MS",
            "LATENCY_TOTAL_MS",
            "OUTBOX_SEQ",
        ] {
            let v: f64 = get(e, k).parse().unwrap();
            assert!(v >= 0.0, "{k}");
        }
    }
    let denied_liveness = access
        .iter()
        .filter(|e| get(e, "DECISION") == "denied" && get(e, "REASON") == "liveness")
        .count();
    assert_eq!(denied_liveness, 2);
    // Door: unlocked and relocked once, recorded with the person's id as the cause.
    let kinds: Vec<String> = ours
        .iter()
        .filter_map(|e| e.get("FACEGATE_EVENT").and_then(Value::as_str))
        .map(String::from)
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| *k == "door_unlocked").count(),
        1,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| *k == "door_relocked").count(),
        1,
        "{kinds:?}"
    );
    // Nothing biometric: no field carries a long list of numbers, no field is named like one.
    for e in &ours {
        for (k, v) in e.iter() {
            assert!(
                !k.contains("EMBEDDING") && !k.contains("VECTOR") && !k.contains("IMAGE"),
                "{k}"
            );
            if let Some(s) = v.as_str() {
                let numbers = s
                    .split(|c: char| c == ',' || c.is_whitespace())
                    .filter(|t| t.parse::<f32>().is_ok())
                    .count();
                assert!(numbers < 16, "{k} looks like a vector: {s}");
            }
        }
    }
}

/// A config for a SIMULATED terminal in `dir`, with its store and key created (`keys init`,
/// the store path taken from the config: the `--config` fallback of the store commands).
fn write_config(dir: &Path, replay: &Path) -> std::path::PathBuf {
    let cfg = format!(
        r#"
[device]
site = "test-site"
id = "door-9"
[paths]
models = "{models}"
store = "{store}"
key_file = "{key}"
[camera]
source = "replay"
replay_dir = "{replay}"
fps = 8
[door]
lock = "simulated"
[pipeline]
stall_ms = 3000
"#,
        models = models_dir().display(),
        store = dir.join("facegate.redb").display(),
        key = dir.join("facegate.key").display(),
        replay = replay.display(),
    );
    let p = dir.join("facegate.toml");
    std::fs::write(&p, cfg).unwrap();
    let st = Command::new(facegate_bin())
        .args(["keys", "init", "--create-key-file", "--config"])
        .arg(&p)
        .arg("--key-file")
        .arg(dir.join("facegate.key"))
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    p
}

/// `facegate run` as systemd would start it: READY=1 after start-up, STATUS lines, watchdog pings
/// while frames are analysed, and on SIGTERM a clean exit 0 after STOPPING=1.
#[test]
fn run_notifies_systemd_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let replay = dir.path().join("replay");
    std::fs::create_dir(&replay).unwrap();
    std::fs::copy(face("dev/obama/obama_1.jpg"), replay.join("a.jpg")).unwrap();
    let cfg = write_config(dir.path(), &replay);

    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let child = Command::new(facegate_bin())
        .arg("run")
        .arg("--config")
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "2000000")
        .env("FACEGATE_LOG_TARGET", "stderr")
        .env("FACEGATE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut msgs = Vec::new();
    let mut buf = [0u8; 4096];
    let t0 = Instant::now();
    let mut pings = 0;
    while t0.elapsed() < Duration::from_secs(90) && pings < 3 {
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e) => panic!("no notification: {e}; got {msgs:?}"),
        };
        let m = String::from_utf8_lossy(&buf[..n]).to_string();
        if m == "WATCHDOG=1" {
            pings += 1;
        }
        msgs.push(m);
    }
    assert!(msgs[0].starts_with("READY=1\nSTATUS=ready in"), "{msgs:?}");
    assert!(pings >= 3, "watchdog pings while frames flow: {msgs:?}");
    // SIGTERM: drain, relock, exit 0.
    // SAFETY: kill(2) on the child's pid, which we own and have not waited for yet.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let mut stopping = false;
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    while let Ok(n) = sock.recv(&mut buf) {
        if &buf[..n] == b"STOPPING=1" {
            stopping = true;
            break;
        }
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stopping, "STOPPING=1 not sent: {stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("door locked, store closed"), "{stderr}");
    assert!(stderr.contains("SIMULATED relay"), "{stderr}");
    // The unknown face (empty store) was denied and recorded before exit.
    assert!(stderr.contains("access denied"), "{stderr}");
}

/// A stuck camera stops the watchdog pings (so systemd restarts the service).
#[test]
fn a_stalled_camera_stops_the_watchdog() {
    let dir = tempfile::tempdir().unwrap();
    let replay = dir.path().join("replay");
    std::fs::create_dir(&replay).unwrap();
    // A corrupt "image": every frame fails to decode, so nothing is ever analysed.
    std::fs::File::create(replay.join("broken.jpg"))
        .unwrap()
        .write_all(b"\xff\xd8 not a jpeg")
        .unwrap();
    let cfg = write_config(dir.path(), &replay);
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let child = Command::new(facegate_bin())
        .arg("run")
        .arg("--config")
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "1000000")
        .env("FACEGATE_LOG_TARGET", "stderr")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 4096];
    let t0 = Instant::now();
    let mut ready_at = None;
    let mut pings_after_stall = 0;
    while t0.elapsed() < Duration::from_secs(60) {
        if let Ok(n) = sock.recv(&mut buf) {
            let m = String::from_utf8_lossy(&buf[..n]).to_string();
            if m.starts_with("READY=1") {
                ready_at = Some(Instant::now());
            }
            // stall_ms = 3000: after 4 s without an analysed frame no ping may come.
            if m == "WATCHDOG=1" && ready_at.is_some_and(|r| r.elapsed() > Duration::from_secs(4)) {
                pings_after_stall += 1;
            }
        }
        if ready_at.is_some_and(|r| r.elapsed() > Duration::from_secs(7)) {
            break;
        }
    }
    assert!(ready_at.is_some(), "service never became ready");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        pings_after_stall, 0,
        "watchdog kept pinging a stalled pipeline: {stderr}"
    );
    assert!(stderr.contains("watchdog pings stopped"), "{stderr}");
    assert!(stderr.contains("camera fault"), "{stderr}");
}

/// Invalid configuration: exit code 2 and a message that names the key and the range.
#[test]
fn invalid_config_is_refused_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(&p, "[door]\nunlock_ms = 60000\n").unwrap();
    let out = Command::new(facegate_bin())
        .arg("run")
        .arg("--config")
        .arg(&p)
        .env("FACEGATE_LOG_TARGET", "stderr")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("door.unlock_ms = 60000 must be in [200, 10000]"),
        "{stderr}"
    );
    let out = Command::new(facegate_bin())
        .arg("doctor")
        .arg("--config")
        .arg(&p)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("✖ config") && stdout.contains("door.unlock_ms"),
        "{stdout}"
    );
}

/// `doctor` on a healthy SIMULATED configuration passes; with a tampered model it fails and
/// names the fix.
#[test]
fn doctor_reports_each_check_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let replay = dir.path().join("replay");
    std::fs::create_dir(&replay).unwrap();
    let cfg = write_config(dir.path(), &replay);
    let out = Command::new(facegate_bin())
        .args(["doctor", "--json", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for n in [
        "config", "models", "clock", "store", "disk", "camera", "gpio", "broker",
    ] {
        assert!(names.contains(&n), "{n} missing: {names:?}");
    }
    assert_eq!(v["ok"], true, "{v:#}");
    assert_eq!(out.status.code(), Some(0));

    // Tampered model directory: a copy with one model truncated.
    let bad_models = dir.path().join("models");
    std::fs::create_dir(&bad_models).unwrap();
    for e in std::fs::read_dir(models_dir()).unwrap().flatten() {
        std::fs::copy(e.path(), bad_models.join(e.file_name())).unwrap();
    }
    let victim = std::fs::read_dir(&bad_models)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().contains("yunet"))
        .unwrap()
        .path();
    let bytes = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &bytes[..bytes.len() / 2]).unwrap();
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &models_dir().display().to_string(),
        &bad_models.display().to_string(),
    );
    std::fs::write(&cfg, text).unwrap();
    let out = Command::new(facegate_bin())
        .args(["doctor", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("✖ models"), "{stdout}");
    assert!(
        stdout.contains("fix: reinstall verified copies"),
        "{stdout}"
    );
}
