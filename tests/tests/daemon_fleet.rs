//! `facegate run` connected to a real Mosquitto (`facegate_tests::mosquitto`: mutual TLS,
//! per-device ACL, an operator identity): the process a terminal runs, driven and observed only
//! from outside — `READY=1` on a notify socket, the retained status, events from the outbox, a
//! signed template bundle published with `facegate bundle publish`, signed remote `open`s and
//! `reload-config` sent with `facegate cmd` — with a SIMULATED replay camera and relay. One more
//! test covers the operator's `facegate bundle create`.
//!
//! Every daemon test starts its own broker and daemon; the waits are for messages (MQTT, the
//! notify socket, lines of the daemon's stderr log), never fixed sleeps. The debug binary
//! analyses a few frames per second, so timeouts are generous; the measured times are printed.

use std::io::BufRead;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use facegate_tests::mosquitto::{Broker, FLEET_IDENTITY, OPERATOR_IDENTITY};
use facegate_tests::{face, facegate_bin, models_dir};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS, TlsConfiguration, Transport};
use serde_json::Value;
use sha2::{Digest, Sha256};

const SITE: &str = "hq";
/// Model loading of the debug binary, possibly next to another test's daemon on 2 cores.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// One MQTT round trip (connect, status, a command's result).
const LINK_TIMEOUT: Duration = Duration::from_secs(30);
/// A decision of the pipeline (a few analysed frames) plus its publication.
const DECISION_TIMEOUT: Duration = Duration::from_secs(60);
/// The SIMULATED relay's pulse for a granted face (`[door] unlock_ms`).
const UNLOCK_MS: u64 = 1000;
/// The door's hard cap on any release (`[door] max_unlock_ms`), whatever asks for more.
const MAX_UNLOCK_MS: u64 = 2500;

/// The fields an event on `.../events` may carry: ids, kind, decision, short machine text,
/// rounded scores, clock and `seq`. Anything else (a vector, an image, a label) is a leak.
const EVENT_FIELDS: [&str; 12] = [
    "event_id",
    "kind",
    "device",
    "person_id",
    "decision",
    "match_score",
    "liveness_score",
    "reason",
    "detail",
    "device_time",
    "device_time_ms",
    "seq",
];

/// One message seen by a [`Watcher`].
#[derive(Debug, Clone)]
struct Msg {
    topic: String,
    json: Value,
    retain: bool,
}

/// A fleet-side MQTT subscriber (the `fleet` identity) collecting everything on its filters.
/// [`Watcher::take`] returns the oldest message not yet taken that matches a predicate, so
/// waits for different things do not consume each other's messages.
struct Watcher {
    _rt: tokio::runtime::Runtime,
    _client: AsyncClient,
    rx: mpsc::Receiver<Msg>,
    seen: Vec<(Msg, bool)>,
}

impl Watcher {
    /// Connect and subscribe; returns once the broker acknowledged the subscription.
    fn new(b: &Broker, client_id: &str, filters: &[String]) -> Watcher {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let c = b.client(FLEET_IDENTITY);
        let tls = facegate::mqtt::tls::client_config(&b.ca, &c.cert, &c.key).unwrap();
        let mut o = MqttOptions::new(client_id, "127.0.0.1", b.port);
        o.set_keep_alive(Duration::from_secs(5))
            .set_clean_session(true)
            .set_max_packet_size(1 << 20, 1 << 20)
            .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                Arc::new(tls),
            )));
        let (client, mut el) = AsyncClient::new(o, 64);
        let (tx, rx) = mpsc::channel();
        let (ack_tx, ack_rx) = mpsc::channel();
        let c = client.clone();
        let filters: Vec<rumqttc::SubscribeFilter> = filters
            .iter()
            .map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce))
            .collect();
        rt.spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                        let _ = c.try_subscribe_many(filters.clone());
                    }
                    Ok(Event::Incoming(Incoming::SubAck(_))) => {
                        let _ = ack_tx.send(());
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        let json = serde_json::from_slice(&p.payload).unwrap_or_else(|_| {
                            Value::String(String::from_utf8_lossy(&p.payload).into_owned())
                        });
                        let m = Msg {
                            topic: p.topic.clone(),
                            json,
                            retain: p.retain,
                        };
                        if tx.send(m).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        ack_rx
            .recv_timeout(LINK_TIMEOUT)
            .unwrap_or_else(|_| panic!("{client_id}: no SUBACK from the broker; {}", b.log()));
        Watcher {
            _rt: rt,
            _client: client,
            rx,
            seen: Vec::new(),
        }
    }

    /// The oldest message not yet taken that satisfies `pred`, waiting up to `timeout`.
    fn take(&mut self, timeout: Duration, pred: impl Fn(&Msg) -> bool) -> Option<Msg> {
        let deadline = Instant::now() + timeout;
        let mut i = 0;
        loop {
            while i < self.seen.len() {
                let (m, taken) = &mut self.seen[i];
                if !*taken && pred(m) {
                    *taken = true;
                    return Some(m.clone());
                }
                i += 1;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(m) => self.seen.push((m, false)),
                Err(_) => return None,
            }
        }
    }

    /// Every message received so far on `topic`, taken or not (receives what is pending).
    fn all_on(&mut self, topic: &str) -> Vec<Value> {
        while let Ok(m) = self.rx.try_recv() {
            self.seen.push((m, false));
        }
        self.seen
            .iter()
            .filter(|(m, _)| m.topic == topic)
            .map(|(m, _)| m.json.clone())
            .collect()
    }

    /// A short listing of what arrived (for failure messages).
    fn summary(&self) -> String {
        self.seen
            .iter()
            .map(|(m, _)| format!("  {} {}", m.topic, m.json))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The retained message on `topic`, as a newly subscribing client receives it.
fn retained(b: &Broker, client_id: &str, topic: &str) -> Msg {
    let mut w = Watcher::new(b, client_id, &[topic.to_string()]);
    w.take(Duration::from_secs(10), |m| m.topic == topic)
        .unwrap_or_else(|| panic!("no retained message on {topic}"))
}

/// Run the CLI (models from the test models directory) and return (exit code, stdout, stderr).
fn cli<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (i32, String, String) {
    let out = Command::new(facegate_bin())
        .args(args)
        .env("FACEGATE_MODELS", models_dir())
        .env_remove("FACEGATE_CONFIG")
        .output()
        .expect("spawn facegate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Run the CLI, require exit 0, return stdout.
fn cli_ok<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[S]) -> String {
    let (code, out, err) = cli(args);
    assert_eq!(code, 0, "facegate {args:?}: {out}\n{err}");
    out
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

/// The daemon's stderr logger colours its output even into a pipe; match on the plain text.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC '[' parameters... final byte in '@'..='~'.
            if chars.next() == Some('[') {
                for f in chars.by_ref() {
                    if ('@'..='~').contains(&f) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Time in seconds with one decimal, for the printed measurements.
fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// The millisecond timestamp of a UUIDv7 in canonical text form, `None` if it is not one.
fn uuid_v7_ms(id: &str) -> Option<u64> {
    let b = id.as_bytes();
    if b.len() != 36 || [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
        return None;
    }
    let hex: String = id.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    // Version nibble 7, RFC 4122 variant (10xx).
    if b[14] != b'7' || !matches!(b[19], b'8' | b'9' | b'a' | b'b' | b'A' | b'B') {
        return None;
    }
    u64::from_str_radix(&hex[..12], 16).ok()
}

/// The event schema: a UUIDv7 id whose time matches the device clock, a `seq`, this device, and
/// nothing but short scalar fields (no vector, image or label can hide in it).
fn check_event(ev: &Value, device: &str) {
    let o = ev
        .as_object()
        .unwrap_or_else(|| panic!("event is not a JSON object: {ev}"));
    for (k, v) in o {
        assert!(
            EVENT_FIELDS.contains(&k.as_str()),
            "unexpected field `{k}` in event {ev}"
        );
        assert!(
            !v.is_array() && !v.is_object(),
            "field `{k}` carries structured data: {ev}"
        );
        if let Some(s) = v.as_str() {
            assert!(s.len() <= 160, "field `{k}` is suspiciously long: {ev}");
        }
    }
    for k in [
        "event_id",
        "kind",
        "device",
        "reason",
        "device_time",
        "device_time_ms",
        "seq",
    ] {
        assert!(o.contains_key(k), "event lacks `{k}`: {ev}");
    }
    assert_eq!(ev["device"], device, "{ev}");
    let id = ev["event_id"].as_str().unwrap();
    let ms = uuid_v7_ms(id).unwrap_or_else(|| panic!("event_id {id} is not a UUIDv7: {ev}"));
    let clock = ev["device_time_ms"].as_u64().expect("device_time_ms");
    assert!(
        ms.abs_diff(clock) < 1000,
        "UUIDv7 time {ms} far from device_time_ms {clock}: {ev}"
    );
    assert!(ev["seq"].as_u64().is_some_and(|s| s >= 1), "seq: {ev}");
}

/// One terminal under test: its broker, keys, store, configuration, the running `facegate run`
/// process with its stderr log and notify socket, and a fleet-side watcher of its topics.
struct Terminal {
    device: String,
    dir: tempfile::TempDir,
    config: PathBuf,
    config_text: String,
    fleet_key: PathBuf,
    site_key: PathBuf,
    topics: facegate::mqtt::Topics,
    notify: UnixDatagram,
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
    watch: Watcher,
    broker: Broker,
}

impl Terminal {
    /// Broker, fleet signing key + site key (operator CLI), an empty store
    /// (`keys init --create-key-file`), the replay folder with `images` and the configuration.
    /// `images`: fixture files, or `None` for one grey frame without a face.
    fn prepare(device: &str, images: Option<&[PathBuf]>, fps: u32) -> Terminal {
        let broker = Broker::start(SITE, &[device]);
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let fleet_key = d.join("fleet.key");
        let site_key = d.join("site.key");
        let out = cli_ok(&["bundle", "keygen", "--json", "--out", &p(&fleet_key)]);
        let key: Value = serde_json::from_str(out.trim()).unwrap();
        let public = key["public_key"].as_str().expect("public key").to_string();
        assert!(public.starts_with("ed25519:"), "{key}");
        let keys_file = d.join("fleet-keys.txt");
        std::fs::write(&keys_file, format!("# fleet keys of {SITE}\n{public}\n")).unwrap();
        cli_ok(&["bundle", "keygen", "--site", "--out", &p(&site_key)]);
        let store = d.join("facegate.redb");
        let store_key = d.join("facegate.key");
        cli_ok(&[
            "keys",
            "init",
            "--create-key-file",
            "--store",
            &p(&store),
            "--key-file",
            &p(&store_key),
        ]);
        let replay = d.join("replay");
        std::fs::create_dir(&replay).unwrap();
        match images {
            Some(imgs) => {
                for (i, img) in imgs.iter().enumerate() {
                    std::fs::copy(img, replay.join(format!("{i:02}.jpg"))).unwrap();
                }
            }
            None => image::RgbImage::from_pixel(640, 480, image::Rgb([128, 128, 128]))
                .save(replay.join("empty.jpg"))
                .unwrap(),
        }
        let c = broker.client(device);
        let config_text = format!(
            r#"# written by tests/tests/daemon_fleet.rs
[device]
site = "{SITE}"
id = "{device}"

[paths]
models = "{models}"
store = "{store}"
key_file = "{store_key}"

[camera]
source = "replay"
replay_dir = "{replay}"
fps = {fps}

[door]
lock = "simulated"
unlock_ms = {UNLOCK_MS}
exit_unlock_ms = {UNLOCK_MS}
max_unlock_ms = {MAX_UNLOCK_MS}

[throttle]
max_denials = 1000

[pipeline]
decision_hold_ms = 1500

[mqtt]
host = "127.0.0.1"
port = {port}
ca_file = "{ca}"
cert_file = "{cert}"
key_file = "{key}"
keep_alive_secs = 5
backoff_initial_ms = 100
backoff_max_ms = 2000

[fleet]
keys_file = "{keys_file}"
site_key_file = "{site_key}"
"#,
            models = p(&models_dir()),
            store = p(&store),
            store_key = p(&store_key),
            replay = p(&replay),
            port = broker.port,
            ca = p(&broker.ca),
            cert = p(&c.cert),
            key = p(&c.key),
            keys_file = p(&keys_file),
            site_key = p(&site_key),
        );
        let config = d.join("facegate.toml");
        std::fs::write(&config, &config_text).unwrap();
        let topics = facegate::mqtt::Topics::new(SITE, device);
        let watch = Watcher::new(
            &broker,
            &format!("fleet-{device}"),
            &[
                topics.status(),
                topics.events(),
                topics.bundle_result(),
                format!("facegate/v1/{SITE}/{device}/cmd/+/result"),
            ],
        );
        let notify = UnixDatagram::bind(d.join("notify.sock")).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        Terminal {
            device: device.into(),
            dir,
            config,
            config_text,
            fleet_key,
            site_key,
            topics,
            notify,
            child: None,
            log: Arc::default(),
            reader: None,
            watch,
            broker,
        }
    }

    /// Start `facegate run --config` as systemd would (notify socket, stderr logging) and wait
    /// for `READY=1`; returns the time it took.
    fn start(&mut self) -> Duration {
        let t0 = Instant::now();
        let mut child = Command::new(facegate_bin())
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .env("NOTIFY_SOCKET", self.dir.path().join("notify.sock"))
            .env("FACEGATE_LOG_TARGET", "stderr")
            .env("FACEGATE_LOG", "info")
            .env_remove("WATCHDOG_USEC")
            .env_remove("CREDENTIALS_DIRECTORY")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn facegate run");
        // Drain stderr continuously (a full pipe would block the daemon's logging).
        let stderr = child.stderr.take().unwrap();
        let log = self.log.clone();
        self.reader = Some(std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut l = log.lock().unwrap();
                l.push_str(&strip_ansi(&line));
                l.push('\n');
            }
        }));
        self.child = Some(child);
        let mut buf = [0u8; 4096];
        let mut got = Vec::new();
        while t0.elapsed() < READY_TIMEOUT {
            if let Ok(n) = self.notify.recv(&mut buf) {
                let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                if m.starts_with("READY=1") {
                    return t0.elapsed();
                }
                got.push(m);
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                if let Some(r) = self.reader.take() {
                    let _ = r.join();
                }
                panic!(
                    "facegate run exited ({st}) before READY=1; notifications {got:?}\n{}",
                    self.log()
                );
            }
        }
        panic!(
            "no READY=1 within {}; notifications {got:?}\n{}",
            secs(READY_TIMEOUT),
            self.log_tail()
        );
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn log_tail(&self) -> String {
        let l = self.log();
        let start = l.len().saturating_sub(6000);
        let start = (start..l.len())
            .find(|&i| l.is_char_boundary(i))
            .unwrap_or(l.len());
        format!("--- daemon stderr (tail) ---\n{}", &l[start..])
    }

    /// The first daemon log line containing every one of `parts`, waiting up to `timeout`.
    fn wait_log(&self, parts: &[&str], timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self
                .log()
                .lines()
                .find(|l| parts.iter().all(|p| l.contains(p)))
            {
                return l.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no daemon log line with {parts:?} within {}\n{}",
                secs(timeout),
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The next message (not yet taken) on this device's `topic` satisfying `pred`.
    fn expect(
        &mut self,
        what: &str,
        topic: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let t = topic.to_string();
        match self.watch.take(timeout, |m| m.topic == t && pred(&m.json)) {
            Some(m) => m.json,
            None => panic!(
                "{what}: nothing on {topic} within {}\n--- messages seen ---\n{}\n{}",
                secs(timeout),
                self.watch.summary(),
                self.log_tail()
            ),
        }
    }

    /// The next event of `kind` satisfying `pred`, checked against the event schema.
    fn expect_event(
        &mut self,
        kind: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let topic = self.topics.events();
        let ev = self.expect(&format!("event {kind}"), &topic, timeout, |v| {
            v["kind"] == kind && pred(v)
        });
        check_event(&ev, &self.device);
        ev
    }

    /// Every event payload received so far, as text (for absence checks).
    fn all_events_text(&mut self) -> String {
        let topic = self.topics.events();
        self.watch
            .all_on(&topic)
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Broker flags of the operator identity for `facegate bundle publish` / `cmd send`.
    fn operator_args(&self) -> Vec<String> {
        let c = self.broker.client(OPERATOR_IDENTITY);
        vec![
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            self.broker.port.to_string(),
            "--ca".into(),
            p(&self.broker.ca),
            "--cert".into(),
            p(&c.cert),
            "--key".into(),
            p(&c.key),
            "--timeout".into(),
            "30".into(),
        ]
    }

    /// `facegate cmd send NAME [--payload FILE] --json` as the operator: (exit code, result).
    fn send_cmd(&self, name: &str, payload: Option<&Path>) -> (i32, Value, String) {
        let mut args: Vec<String> = vec![
            "cmd".into(),
            "send".into(),
            name.into(),
            "--site".into(),
            SITE.into(),
            "--device".into(),
            self.device.clone(),
            "--json".into(),
        ];
        if let Some(f) = payload {
            args.push("--payload".into());
            args.push(p(f));
        }
        args.extend(self.operator_args());
        let (code, out, err) = cli(&args);
        let v = serde_json::from_str(out.trim()).unwrap_or_else(|e| {
            panic!(
                "cmd send {name}: exit {code}, stdout not JSON ({e}): {out}\n{err}\n{}",
                self.log_tail()
            )
        });
        (code, v, err)
    }

    /// `facegate cmd sign-open` with `key` for this device: the payload file.
    fn sign_open(&self, key: &Path, request_id: &str, duration_ms: u64) -> PathBuf {
        let out = self.dir.path().join(format!("{request_id}.json"));
        cli_ok(&[
            "cmd",
            "sign-open",
            "--signing-key",
            &p(key),
            "--site",
            SITE,
            "--device",
            &self.device,
            "--duration-ms",
            &duration_ms.to_string(),
            "--valid-secs",
            "30",
            "--request-id",
            request_id,
            "--out",
            &p(&out),
        ]);
        out
    }

    /// SIGTERM; returns the exit status, whether `STOPPING=1` was notified, and the full log.
    fn stop(&mut self) -> (ExitStatus, bool, String) {
        let mut child = self.child.take().expect("daemon running");
        // SAFETY: kill(2) on the pid of our own child, not yet reaped.
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut stopping = false;
        let mut buf = [0u8; 4096];
        let status = loop {
            if let Ok(n) = self.notify.recv(&mut buf) {
                stopping |= &buf[..n] == b"STOPPING=1";
            }
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "facegate run did not exit within 30 s of SIGTERM\n{}",
                    self.log_tail()
                );
            }
        };
        while let Ok(n) = self.notify.recv(&mut buf) {
            stopping |= &buf[..n] == b"STOPPING=1";
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        (status, stopping, self.log())
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// READY=1, the retained `online` status (template count, outbox depth), a denied `access`
/// event for an unenrolled face, then SIGTERM: retained `offline` (shutdown) and exit 0.
#[test]
fn run_reports_online_publishes_a_denied_access_and_goes_offline_on_sigterm() {
    let t_test = Instant::now();
    let mut t = Terminal::prepare(
        "door-status",
        Some(&[face("dev/anthony_hopkins/hopkins_1.jpg")]),
        5,
    );
    let ready = t.start();
    let t_ready = Instant::now();
    let status_topic = t.topics.status();
    let online = t.expect("online status", &status_topic, LINK_TIMEOUT, |v| {
        v["state"] == "online"
    });
    println!(
        "[status] READY=1 after {}, online status {} after READY: {online}",
        secs(ready),
        secs(t_ready.elapsed())
    );
    assert_eq!(online["device"], "door-status", "{online}");
    assert_eq!(online["template_count"], 0, "{online}");
    assert!(online["outbox_depth"].is_u64(), "{online}");
    assert_eq!(online["faults"], serde_json::json!([]), "{online}");
    assert!(
        online["version"].as_str().is_some_and(|v| !v.is_empty()),
        "{online}"
    );
    let models = online["model_ids"].as_array().expect("model_ids");
    assert!(
        ["sface@", "yunet_640@", "minifasnet_v2@"]
            .iter()
            .all(|p| models
                .iter()
                .any(|m| m.as_str().is_some_and(|m| m.starts_with(p)))),
        "{online}"
    );
    // Retained: a client subscribing now gets it from the broker.
    let r = retained(&t.broker, "fleet-late-1", &status_topic);
    assert!(r.retain, "status must be retained: {:?}", r);
    assert_eq!(r.json["state"], "online", "{}", r.json);

    // The camera shows an unenrolled face: a denial is committed and published.
    let denied = t.expect_event("access", DECISION_TIMEOUT, |v| v["decision"] == "denied");
    println!(
        "[status] denied access {} after READY: {denied}",
        secs(t_ready.elapsed())
    );
    assert_eq!(denied["person_id"], "unknown", "{denied}");
    // Empty store: the matcher has nothing to compare with (a live face) — or, should the
    // passive check fail on this photo, liveness. Never anything else.
    let reason = denied["reason"].as_str().unwrap();
    assert!(
        ["empty_gallery", "below_threshold", "liveness"].contains(&reason),
        "{denied}"
    );
    t.wait_log(&["access denied"], Duration::from_secs(5));
    assert!(
        !t.all_events_text().contains("granted"),
        "nothing may be granted with an empty store"
    );

    let t_stop = Instant::now();
    let (status, stopping, log) = t.stop();
    println!(
        "[status] SIGTERM → exit code {:?} in {}",
        status.code(),
        secs(t_stop.elapsed())
    );
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(stopping, "STOPPING=1 not notified\n{log}");
    assert!(log.contains("door locked, store closed"), "{log}");
    let offline = t.expect("offline status", &status_topic, LINK_TIMEOUT, |v| {
        v["state"] == "offline"
    });
    assert_eq!(offline["reason"], "shutdown", "{offline}");
    assert_eq!(offline["device"], "door-status", "{offline}");
    let r = retained(&t.broker, "fleet-late-2", &status_topic);
    assert!(r.retain, "{:?}", r);
    assert_eq!(
        (r.json["state"].as_str(), r.json["reason"].as_str()),
        (Some("offline"), Some("shutdown")),
        "the retained status after a clean stop: {}",
        r.json
    );
    println!("[status] test took {}", secs(t_test.elapsed()));
}

/// A bundle exported from a scratch enrolment store (`facegate enroll` obama_1/obama_2, then what
/// `bundle create --from-store` does) and published with `facegate bundle publish --wait-result`
/// as the operator, while the camera shows obama_3: the running daemon answers `applied`, reloads
/// its matcher, and the person — denied before — is granted, followed by the door's unlock and
/// relock events and a status counting the new templates.
#[test]
fn bundle_published_by_the_operator_is_applied_and_the_person_is_then_granted() {
    let t_test = Instant::now();
    let dev = "door-bundle";
    let mut t = Terminal::prepare(dev, Some(&[face("dev/obama/obama_3.jpg")]), 5);

    // Operator side: enrol obama_1/obama_2 in a scratch store, export it as a signed bundle.
    let d = t.dir.path().to_path_buf();
    let (scratch, scratch_key) = scratch_store_with_obama(&d);
    // `facegate bundle create` cannot run in the test (debug) build — see
    // `bundle_create_cli_signs_a_bundle_from_an_enrolment_store` — so the bundle is built with
    // the library, exporting the scratch store exactly as `bundle create --from-store` does.
    let bundle_file = d.join("obama.bundle");
    std::fs::write(
        &bundle_file,
        bundle_from_store(&scratch, &scratch_key, &t.fleet_key, &t.site_key, dev, 1),
    )
    .unwrap();
    let (code, out, err) = cli(&[
        "bundle",
        "inspect",
        "--json",
        &p(&bundle_file),
        "--fleet-keys",
        &p(&t.dir.path().join("fleet-keys.txt")),
    ]);
    assert_eq!(code, 0, "{out} {err}");
    let summary: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(summary["upsert"], serde_json::json!(["obama"]), "{summary}");
    assert!(summary["verified_by"].is_string(), "{summary}");
    let sha = hex::encode(Sha256::digest(std::fs::read(&bundle_file).unwrap()));

    let ready = t.start();
    let t_ready = Instant::now();
    let status_topic = t.topics.status();
    let online = t.expect("online status", &status_topic, LINK_TIMEOUT, |v| {
        v["state"] == "online"
    });
    assert_eq!(online["template_count"], 0, "{online}");
    // Before the bundle the face on camera is unknown.
    let before = t.expect_event("access", DECISION_TIMEOUT, |_| true);
    assert_eq!(
        (before["decision"].as_str(), before["person_id"].as_str()),
        (Some("denied"), Some("unknown")),
        "{before}"
    );
    println!(
        "[bundle] READY after {}, first (denied) access {} after READY",
        secs(ready),
        secs(t_ready.elapsed())
    );

    // Publish it as the operator and wait for the device's verdict.
    let t_pub = Instant::now();
    let mut args: Vec<String> = vec![
        "bundle".into(),
        "publish".into(),
        p(&bundle_file),
        "--wait-result".into(),
        dev.into(),
        "--json".into(),
    ];
    args.extend(t.operator_args());
    let (code, out, err) = cli(&args);
    let publish_took = t_pub.elapsed();
    assert_eq!(code, 0, "bundle publish: {out}\n{err}\n{}", t.log_tail());
    let result: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (result["ok"].as_bool(), result["code"].as_str()),
        (Some(true), Some("applied")),
        "{result}"
    );
    assert_eq!(result["bundle_sha256"], sha.as_str(), "{result}");
    assert_eq!(result["report"]["version"], 1, "{result}");
    assert_eq!(result["report"]["upserted"], 1, "{result}");
    let on_topic = t.expect(
        "bundle result",
        &t.topics.bundle_result(),
        LINK_TIMEOUT,
        |v| v["bundle_sha256"] == sha.as_str(),
    );
    assert_eq!(on_topic["code"], "applied", "{on_topic}");

    // The daemon notices the store changed and rebuilds its matcher.
    let reload = t.wait_log(
        &["templates reloaded", "matcher_reloaded"],
        Duration::from_secs(15),
    );
    let reload_took = t_pub.elapsed();
    assert!(reload.contains("templates=2"), "{reload}");
    assert!(
        !reload.contains("Obama"),
        "labels stay out of the log: {reload}"
    );

    // The person on camera is now granted, and the door pulses.
    let granted = t.expect_event("access", DECISION_TIMEOUT, |v| v["decision"] == "granted");
    let grant_took = t_pub.elapsed();
    assert_eq!(granted["person_id"], "obama", "{granted}");
    assert_eq!(granted["reason"], "match", "{granted}");
    let score = granted["match_score"].as_f64().expect("match_score");
    assert!(score >= 0.363, "{granted}");
    let opened = t.expect_event("door_opened", LINK_TIMEOUT, |v| {
        v["seq"].as_u64() > granted["seq"].as_u64()
    });
    assert_eq!(opened["reason"], "unlocked", "{opened}");
    assert_eq!(opened["person_id"], "obama", "{opened}");
    assert!(
        opened["detail"]
            .as_str()
            .is_some_and(|s| s.starts_with("face:obama for ")),
        "{opened}"
    );
    let closed = t.expect_event("door_closed", LINK_TIMEOUT, |v| {
        v["seq"].as_u64() > opened["seq"].as_u64()
    });
    assert_eq!(closed["reason"], "relocked", "{closed}");
    let pulse =
        closed["device_time_ms"].as_u64().unwrap() - opened["device_time_ms"].as_u64().unwrap();
    assert!(
        (UNLOCK_MS - 50..UNLOCK_MS + 2000).contains(&pulse),
        "relay pulse {pulse} ms for unlock_ms = {UNLOCK_MS}"
    );
    t.wait_log(&["access granted: obama"], Duration::from_secs(5));
    println!(
        "[bundle] from `bundle publish` start: applied result {} (CLI round trip), \
         matcher reloaded {}, granted {} (score {score}); relay pulse {pulse} ms",
        secs(publish_took),
        secs(reload_took),
        secs(grant_took)
    );

    // The status the operator asks for now counts the templates and the bundle version.
    let (code, r, err) = t.send_cmd("status", None);
    assert_eq!((code, r["code"].as_str()), (0, Some("ok")), "{r} {err}");
    let st = t.expect(
        "status after the bundle",
        &status_topic,
        LINK_TIMEOUT,
        |v| v["state"] == "online" && v["template_count"] == 2,
    );
    assert_eq!(st["bundle_version"], 1, "{st}");

    // Everything published so far: schema-checked, unique ids, seq strictly increasing.
    let events = t.watch.all_on(&t.topics.events());
    let mut ids = std::collections::HashSet::new();
    for w in events.windows(2) {
        assert!(w[0]["seq"].as_u64() < w[1]["seq"].as_u64(), "{w:?}");
    }
    for e in &events {
        check_event(e, dev);
        assert!(ids.insert(e["event_id"].to_string()), "duplicate {e}");
    }
    assert!(!events.iter().any(|e| e.to_string().contains("Obama")));

    let (status, _, log) = t.stop();
    assert_eq!(status.code(), Some(0), "{log}");
    println!(
        "[bundle] {} events checked; test took {}",
        events.len(),
        secs(t_test.elapsed())
    );
}

/// What `facegate bundle create --from-store` builds: every person of an enrolment store with
/// their anchor templates, sealed to the site key and signed with the fleet key.
fn bundle_from_store(
    store: &Path,
    store_key: &Path,
    signing_key: &Path,
    site_key: &Path,
    target: &str,
    version: u64,
) -> Vec<u8> {
    use facegate::bundle::{self, BundleDraft, Operation, SiteKey};
    use facegate::store::{Kek, NewPerson, NewTemplate, Store, TemplateKind, now_unix};
    let s = Store::open(store, &Kek::from_key_file(store_key).unwrap()).unwrap();
    let mut templates = s.load_all_templates().unwrap();
    let ops: Vec<Operation> = s
        .list_people()
        .unwrap()
        .into_iter()
        .map(|p| Operation::Upsert {
            templates: templates
                .iter_mut()
                .filter(|t| t.person_id == p.person.id && t.meta.kind == TemplateKind::Anchor)
                .map(|t| NewTemplate {
                    kind: TemplateKind::Anchor,
                    vector: std::mem::take(&mut t.vector),
                    model_id: t.meta.model_id.clone(),
                    model_version: t.meta.model_version.clone(),
                    quality: t.meta.quality.clone(),
                })
                .collect(),
            person: NewPerson {
                id: p.person.id,
                label: p.person.label,
                external_id: p.person.external_id,
            },
        })
        .collect();
    let now = now_unix();
    let draft = BundleDraft {
        site: SITE.into(),
        target: target.into(),
        version,
        created_at: now,
        expires_at: now + 3600,
        ops,
    };
    bundle::build_bundle(
        &draft,
        &bundle::load_signing_key(signing_key).unwrap(),
        &SiteKey::from_file(site_key).unwrap(),
    )
    .unwrap()
}

/// Enrol a person in a scratch store with `facegate enroll`; returns (store, key file).
fn scratch_store_with_obama(dir: &Path) -> (PathBuf, PathBuf) {
    let (scratch, scratch_key) = (dir.join("scratch.redb"), dir.join("scratch.key"));
    cli_ok(&[
        "keys",
        "init",
        "--create-key-file",
        "--store",
        &p(&scratch),
        "--key-file",
        &p(&scratch_key),
    ]);
    let out = cli_ok(&[
        "enroll",
        "--id",
        "obama",
        "--label",
        "Barack Obama",
        "--json",
        "--store",
        &p(&scratch),
        "--key-file",
        &p(&scratch_key),
        &p(&face("dev/obama/obama_1.jpg")),
        &p(&face("dev/obama/obama_2.jpg")),
    ]);
    let enrolled: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(enrolled["templates"], 2, "{enrolled}");
    (scratch, scratch_key)
}

/// The operator's `facegate bundle create --from-store` (README: bundle keygen|create|...) on
/// the build the tests run: it must produce a bundle signed by the fleet key. The daemon-side
/// path of such a bundle is covered by the test above.
#[test]
fn bundle_create_cli_signs_a_bundle_from_an_enrolment_store() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (scratch, scratch_key) = scratch_store_with_obama(d);
    let (fleet_key, site_key) = (d.join("fleet.key"), d.join("site.key"));
    cli_ok(&["bundle", "keygen", "--out", &p(&fleet_key)]);
    cli_ok(&["bundle", "keygen", "--site", "--out", &p(&site_key)]);
    let out_file = d.join("cli.bundle");
    let (code, out, err) = cli(&[
        "bundle",
        "create",
        "--from-store",
        "--store",
        &p(&scratch),
        "--key-file",
        &p(&scratch_key),
        "--signing-key",
        &p(&fleet_key),
        "--site-key",
        &p(&site_key),
        "--site",
        SITE,
        "--target",
        "door-bundle",
        "--version",
        "1",
        "--out",
        &p(&out_file),
        "--json",
    ]);
    assert_eq!(
        code,
        0,
        "facegate bundle create failed (exit {code}):\n{}\n{}",
        out,
        err.lines().take(3).collect::<Vec<_>>().join("\n")
    );
    let summary: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(summary["upsert"], serde_json::json!(["obama"]), "{summary}");
    assert_eq!(summary["header"]["version"], 1, "{summary}");
    let (code, out, err) = cli(&[
        "bundle",
        "inspect",
        &p(&out_file),
        "--fleet-keys",
        &format!("{}.pub", p(&fleet_key)),
    ]);
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.contains("signature:   valid"), "{out}");
}

/// Signed `open` through the running daemon: opened, `remote_open` event and relock; an `open`
/// signed by a key outside the fleet keys file is refused (`bad_signature`) and never reaches
/// the door. `reload-config`: valid → `valid_restart_required`; after the file is overwritten
/// with `[door] unlock_ms = 1` → `invalid_config` naming `door.unlock_ms`.
#[test]
fn signed_open_and_reload_config_are_handled_by_the_running_daemon() {
    let t_test = Instant::now();
    let dev = "door-cmd";
    // A grey frame without a face keeps the pipeline (and the CPU) quiet.
    let mut t = Terminal::prepare(dev, None, 2);
    let rogue = t.dir.path().join("rogue.key");
    cli_ok(&["bundle", "keygen", "--out", &p(&rogue)]);
    let ready = t.start();
    let status_topic = t.topics.status();
    t.expect("online status", &status_topic, LINK_TIMEOUT, |v| {
        v["state"] == "online"
    });
    println!("[cmd] READY after {}", secs(ready));
    let open_result = t.topics.cmd_result("open");

    // Forged: signed by a key the terminal does not trust.
    let forged = t.sign_open(&rogue, "open-rogue-1", 1500);
    let (code, r, err) = t.send_cmd("open", Some(&forged));
    println!("[cmd] forged open: exit {code}: {r}");
    assert_eq!(code, 2, "{r} {err}");
    assert_eq!(
        (
            r["ok"].as_bool(),
            r["code"].as_str(),
            r["request_id"].as_str()
        ),
        (Some(false), Some("bad_signature"), Some("open-rogue-1")),
        "{r}"
    );
    t.wait_log(
        &["command_refused", "bad_signature"],
        Duration::from_secs(5),
    );

    // Genuine: signed by the fleet key.
    let genuine = t.sign_open(&t.fleet_key, "open-good-1", 1200);
    let t_open = Instant::now();
    let (code, r, err) = t.send_cmd("open", Some(&genuine));
    let open_took = t_open.elapsed();
    println!(
        "[cmd] genuine open: exit {code} in {}: {r}",
        secs(open_took)
    );
    assert_eq!(code, 0, "{r} {err}\n{}", t.log_tail());
    assert_eq!(
        (
            r["ok"].as_bool(),
            r["code"].as_str(),
            r["request_id"].as_str()
        ),
        (Some(true), Some("opened"), Some("open-good-1")),
        "{r}"
    );
    let ev = t.expect_event("remote_open", LINK_TIMEOUT, |_| true);
    assert_eq!(ev["reason"], "unlocked", "{ev}");
    assert!(
        ev["detail"]
            .as_str()
            .is_some_and(|s| s.starts_with("remote:open-good-1 for 1200 ms")),
        "{ev}"
    );
    assert!(ev.get("person_id").is_none(), "{ev}");
    let closed = t.expect_event("door_closed", LINK_TIMEOUT, |v| {
        v["seq"].as_u64() > ev["seq"].as_u64()
    });
    assert_eq!(closed["reason"], "relocked", "{closed}");
    let pulse = closed["device_time_ms"].as_u64().unwrap() - ev["device_time_ms"].as_u64().unwrap();
    assert!((1150..3200).contains(&pulse), "remote pulse {pulse} ms");

    // The same signed payload again: a request id is used once.
    let (code, r, err) = t.send_cmd("open", Some(&genuine));
    println!("[cmd] replayed open: exit {code}: {r}");
    assert_eq!(code, 2, "{r} {err}");
    assert_eq!(
        (r["code"].as_str(), r["request_id"].as_str()),
        (Some("replay"), Some("open-good-1")),
        "{r}"
    );

    // An open asking for more than the door allows: released, but only up to max_unlock_ms.
    let long = t.sign_open(&t.fleet_key, "open-long-1", 20_000);
    let (code, r, err) = t.send_cmd("open", Some(&long));
    assert_eq!((code, r["code"].as_str()), (0, Some("opened")), "{r} {err}");
    let ev_long = t.expect_event("remote_open", LINK_TIMEOUT, |v| {
        v["detail"]
            .as_str()
            .is_some_and(|s| s.starts_with("remote:open-long-1 "))
    });
    assert_eq!(
        ev_long["detail"],
        format!("remote:open-long-1 for {MAX_UNLOCK_MS} ms"),
        "{ev_long}"
    );
    let capped = t.expect_event("door_closed", LINK_TIMEOUT, |v| {
        v["seq"].as_u64() > ev_long["seq"].as_u64()
    });
    assert_eq!(capped["reason"], "relocked_cap", "{capped}");
    let capped_pulse =
        capped["device_time_ms"].as_u64().unwrap() - ev_long["device_time_ms"].as_u64().unwrap();
    assert!(
        (MAX_UNLOCK_MS - 50..MAX_UNLOCK_MS + 1500).contains(&capped_pulse),
        "a 20 s open held the door {capped_pulse} ms (max_unlock_ms = {MAX_UNLOCK_MS})"
    );

    // Events are published in outbox order; the forged and the replayed open were sent before
    // the long one, so had either reached the door its event would be here by now.
    let events = t.all_events_text();
    assert!(!events.contains("open-rogue-1"), "{events}");
    assert_eq!(
        events.matches("\"remote_open\"").count(),
        2,
        "one remote_open per accepted open, none for the forged or replayed one:\n{events}"
    );
    // Every result reached the fleet on the result topic too.
    let results = t.watch.all_on(&open_result);
    let codes: Vec<(String, String)> = results
        .iter()
        .map(|v| {
            (
                v["request_id"].as_str().unwrap_or("").to_string(),
                v["code"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let expect: Vec<(String, String)> = [
        ("open-rogue-1", "bad_signature"),
        ("open-good-1", "opened"),
        ("open-good-1", "replay"),
        ("open-long-1", "opened"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(codes, expect, "{results:?}");
    println!(
        "[cmd] results on {open_result}: {codes:?}; remote pulse {pulse} ms, \
         20 s open capped after {capped_pulse} ms"
    );

    // reload-config: the file as written is valid …
    let (code, r, err) = t.send_cmd("reload-config", None);
    println!("[cmd] reload-config (valid): exit {code}: {r}");
    assert_eq!(code, 0, "{r} {err}");
    assert_eq!(
        (r["ok"].as_bool(), r["code"].as_str()),
        (Some(true), Some("valid_restart_required")),
        "{r}"
    );
    // … and after an edit that breaks it, the daemon says which key is wrong.
    let bad = t
        .config_text
        .replace(&format!("unlock_ms = {UNLOCK_MS}"), "unlock_ms = 1");
    assert_ne!(bad, t.config_text);
    std::fs::write(&t.config, bad).unwrap();
    let (code, r, err) = t.send_cmd("reload-config", None);
    println!("[cmd] reload-config (unlock_ms = 1): exit {code}: {r}");
    assert_eq!(code, 2, "{r} {err}");
    assert_eq!(
        (r["ok"].as_bool(), r["code"].as_str()),
        (Some(false), Some("invalid_config")),
        "{r}"
    );
    let msg = r["message"].as_str().unwrap_or("");
    assert!(msg.contains("door.unlock_ms"), "{r}");
    t.wait_log(&["reload-config", "door.unlock_ms"], Duration::from_secs(5));
    // Nothing was applied: the daemon keeps running with its settings and still answers.
    let (code, r, err) = t.send_cmd("status", None);
    assert_eq!(code, 0, "{r} {err}");
    let (status, _, log) = t.stop();
    assert_eq!(status.code(), Some(0), "{log}");
    println!("[cmd] test took {}", secs(t_test.elapsed()));
}
