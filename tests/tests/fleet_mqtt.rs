//! Fleet sync against a real Mosquitto (see `facegate_tests::mosquitto`): mutual TLS and ACL,
//! broker outages, daemon crashes, the bounded outbox and its overflow summary, bundles over
//! MQTT (and `facegate bundle publish`), signed remote `open` and other commands, status and
//! Last Will. Log lines the daemon must write (refusals, alarms) are captured and asserted.
//!
//! Every test starts its own broker on a free loopback port and is bounded in time.

use std::collections::{BTreeMap, HashSet};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use facegate::bundle::{
    self, BundleDraft, BundlePolicy, FleetKeys, Operation, SiteKey, TARGET_ALL, Verifier,
};
use facegate::mqtt::commands::{OpenRequest, sign_open};
use facegate::mqtt::{
    AccessEvent, CommandOutcome, Decision, EventKind, FleetLink, MqttConfig, RemoteCommand,
    StatusSource, record_event, tls,
};
use facegate::store::{
    EMBEDDING_DIM, Kek, KekSource, NewPerson, NewTemplate, OutboxLimits, SecretKey, Store, now_unix,
};
use facegate_tests::mosquitto::{Broker, FLEET_IDENTITY, OPERATOR_IDENTITY};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS, TlsConfiguration, Transport};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

const SITE: &str = "hq";

/// Everything the daemon logs in this test process (fmt lines, no ANSI), for asserting that
/// refusals and alarms are logged. Installed once, by the first test that asks.
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: std::sync::OnceLock<Arc<Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let w = buf.clone();
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing_subscriber::filter::LevelFilter::INFO)
            .with_writer(move || LogWriter(w.clone()))
            .init();
        buf
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captured log lines containing every one of `parts`.
fn log_lines(parts: &[&str]) -> Vec<String> {
    let buf = logs();
    let text = String::from_utf8_lossy(&buf.lock().unwrap()).into_owned();
    text.lines()
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .map(str::to_string)
        .collect()
}

/// Default outbox limits (the bounded tests set their own).
fn limits() -> OutboxLimits {
    OutboxLimits::default()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn options(b: &Broker, client_id: &str, identity: &str) -> MqttOptions {
    let c = b.client(identity);
    let tls = tls::client_config(&b.ca, &c.cert, &c.key).unwrap();
    let mut o = MqttOptions::new(client_id, "127.0.0.1", b.port);
    o.set_keep_alive(Duration::from_secs(5))
        .set_clean_session(false)
        .set_max_packet_size(64 << 20, 64 << 20)
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls),
        )));
    o
}

type Msgs = mpsc::UnboundedReceiver<(String, Vec<u8>)>;

/// A fleet-side subscriber with a persistent session that reconnects forever.
fn subscribe(b: &Broker, client_id: &str, filters: &[String]) -> (AsyncClient, Msgs) {
    let (client, mut el) = AsyncClient::new(options(b, client_id, FLEET_IDENTITY), 256);
    let (tx, rx) = mpsc::unbounded_channel();
    let filters = filters.to_vec();
    let c = client.clone();
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                    for f in &filters {
                        let _ = c.try_subscribe(f.clone(), QoS::AtLeastOnce);
                    }
                }
                Ok(Event::Incoming(Incoming::SubAck(_))) => {
                    let _ = tx.send(("$suback".into(), Vec::new()));
                }
                Ok(Event::Incoming(Incoming::Publish(p))) => {
                    if tx.send((p.topic.clone(), p.payload.to_vec())).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    (client, rx)
}

async fn wait_suback(rx: &mut Msgs) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some((t, _)) = rx.recv().await {
            if t == "$suback" {
                return;
            }
        }
    })
    .await
    .expect("subscriber did not get its SUBACK");
}

fn signer() -> SigningKey {
    SigningKey::from_bytes(&[11u8; 32])
}

fn site_key() -> SiteKey {
    SiteKey::from_secret(SecretKey::from_bytes([12u8; 32]))
}

fn device_cfg(b: &Broker, device: &str) -> MqttConfig {
    let c = b.client(device);
    let mut cfg = MqttConfig::new("127.0.0.1", b.port, SITE, device);
    cfg.ca_file = Some(b.ca.clone());
    cfg.cert_file = Some(c.cert);
    cfg.key_file = Some(c.key);
    cfg.backoff_initial_ms = 50;
    cfg.backoff_max_ms = 500;
    cfg.keep_alive_secs = 5;
    cfg.max_bundle_bytes = 64 << 10;
    cfg
}

fn verifier(device: &str, max_bytes: usize) -> Verifier {
    Verifier {
        fleet: FleetKeys::new([
            SigningKey::from_bytes(&[13u8; 32]).verifying_key(),
            signer().verifying_key(),
        ]),
        site_key: site_key(),
        policy: BundlePolicy {
            max_bytes,
            ..BundlePolicy::new(SITE, device)
        },
    }
}

type LinkTask = tokio::task::JoinHandle<facegate::mqtt::Result<()>>;

fn start_link(
    b: &Broker,
    store: Arc<Store>,
    device: &str,
) -> (facegate::mqtt::FleetHandle, LinkTask) {
    start_link_with(b, store, device, |_| {}, None)
}

/// Start a link for `device` with fleet keys, a tweaked config and optionally a command channel.
fn start_link_with(
    b: &Broker,
    store: Arc<Store>,
    device: &str,
    tweak: impl FnOnce(&mut MqttConfig),
    commands: Option<mpsc::Sender<RemoteCommand>>,
) -> (facegate::mqtt::FleetHandle, LinkTask) {
    let mut cfg = device_cfg(b, device);
    tweak(&mut cfg);
    let tls = tls::from_config(&cfg).unwrap();
    let v = verifier(device, cfg.max_bundle_bytes);
    let (mut link, handle) = FleetLink::new(
        store,
        cfg,
        tls,
        Some(v),
        StatusSource::new(vec!["sface@2021dec".into()]),
    )
    .unwrap();
    if let Some(tx) = commands {
        link = link.with_commands(tx);
    }
    (handle, tokio::spawn(link.run()))
}

fn memory_store(dir: &Path) -> Arc<Store> {
    let kek = Kek::from_secret(SecretKey::random().unwrap(), KekSource::Memory);
    Arc::new(Store::create(&dir.join("s.redb"), &kek, "test").unwrap())
}

/// Event `i` of a test stream: mostly access decisions, every fifth a door state change.
fn event(i: usize) -> AccessEvent {
    match i % 5 {
        4 => AccessEvent::door(
            [
                EventKind::DoorOpened,
                EventKind::DoorClosed,
                EventKind::DoorForced,
            ][i % 3],
            "contact",
        )
        .with_detail(format!("i={i}")),
        _ if i.is_multiple_of(3) => {
            AccessEvent::access(Decision::Denied, None, Some(0.2), Some(0.97), "no_match")
        }
        _ => AccessEvent::access(
            Decision::Granted,
            Some(format!("p-{}", i % 7)),
            Some(0.5 + (i % 10) as f32 / 100.0),
            Some(0.97),
            "match",
        ),
    }
}

fn event_id(payload: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    v.get("event_id")?.as_str().map(str::to_string)
}

#[test]
fn mtls_and_acl_refuse_strangers_and_other_devices() {
    let b = Broker::start(SITE, &["door-1", "door-2"]);
    rt().block_on(async {
        // 1. No client certificate: the TLS handshake is refused, no ConnAck ever arrives.
        let mut roots = rustls::RootCertStore::empty();
        for c in
            <rustls::pki_types::CertificateDer as rustls::pki_types::pem::PemObject>::pem_file_iter(
                &b.ca,
            )
            .unwrap()
        {
            roots.add(c.unwrap()).unwrap();
        }
        let bare = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut o = MqttOptions::new("door-1", "127.0.0.1", b.port);
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(bare),
        )));
        let (_c, mut el) = AsyncClient::new(o, 10);
        let mut errors = Vec::new();
        for _ in 0..3 {
            match tokio::time::timeout(Duration::from_secs(5), el.poll()).await {
                Ok(Ok(Event::Incoming(Incoming::ConnAck(_)))) => {
                    panic!("broker accepted a client without certificate")
                }
                Ok(Err(e)) => errors.push(e.to_string()),
                Ok(Ok(_)) => {}
                Err(_) => errors.push("timeout".into()),
            }
        }
        println!("no-certificate client refused: {errors:?}");
        assert_eq!(errors.len(), 3);

        // 2. door-2's certificate used on door-1's topics: nothing of door-1's reaches it, and
        //    what it publishes there is dropped. (Mosquitto 2.0 may still SUBACK a denied
        //    subscription for MQTT 3.1.1; the ACL is enforced at delivery, which is what counts.)
        let (fleet, mut seen) = subscribe(&b, "fleet-acl", &["facegate/v1/hq/+/events".into()]);
        wait_suback(&mut seen).await;
        let (c2, mut el2) = AsyncClient::new(options(&b, "door-2", "door-2"), 10);
        let mut codes = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while codes.is_empty() {
            let ev = tokio::time::timeout_at(deadline, el2.poll())
                .await
                .expect("door-2 got no SUBACK")
                .expect("door-2 connects with its own cert");
            match ev {
                Event::Incoming(Incoming::ConnAck(_)) => {
                    c2.try_subscribe_many([
                        rumqttc::SubscribeFilter::new(
                            "facegate/v1/hq/door-1/cmd/+".into(),
                            QoS::AtLeastOnce,
                        ),
                        rumqttc::SubscribeFilter::new(
                            "facegate/v1/hq/door-2/cmd/+".into(),
                            QoS::AtLeastOnce,
                        ),
                    ])
                    .unwrap();
                    c2.try_publish(
                        "facegate/v1/hq/door-1/events",
                        QoS::AtLeastOnce,
                        false,
                        b"{\"event_id\":\"forged\"}".to_vec(),
                    )
                    .unwrap();
                    c2.try_publish(
                        "facegate/v1/hq/door-2/events",
                        QoS::AtLeastOnce,
                        false,
                        b"{\"event_id\":\"own\"}".to_vec(),
                    )
                    .unwrap();
                }
                Event::Incoming(Incoming::SubAck(a)) => codes = a.return_codes,
                _ => {}
            }
        }
        println!("door-2 SUBACK for [door-1 cmd, door-2 cmd]: {codes:?}");
        fleet
            .publish(
                "facegate/v1/hq/door-1/cmd/open",
                QoS::AtLeastOnce,
                false,
                b"{}".to_vec(),
            )
            .await
            .unwrap();
        fleet
            .publish(
                "facegate/v1/hq/door-2/cmd/status",
                QoS::AtLeastOnce,
                false,
                b"{}".to_vec(),
            )
            .await
            .unwrap();
        let mut door2_got = Vec::new();
        let until = tokio::time::Instant::now() + Duration::from_secs(3);
        while let Ok(ev) = tokio::time::timeout_at(until, el2.poll()).await {
            if let Ok(Event::Incoming(Incoming::Publish(p))) = ev {
                door2_got.push(p.topic.clone());
            }
        }
        println!("door-2 received: {door2_got:?}");
        assert!(
            door2_got.contains(&"facegate/v1/hq/door-2/cmd/status".to_string()),
            "own commands arrive"
        );
        assert!(
            !door2_got.iter().any(|t| t.contains("/door-1/")),
            "another device's commands must never reach door-2"
        );
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some((t, p)) = seen.recv().await {
                got.push((t, event_id(&p).unwrap_or_default()));
            }
        })
        .await;
        println!("fleet saw: {got:?}");
        assert!(
            got.contains(&("facegate/v1/hq/door-2/events".into(), "own".into())),
            "the device's own topic works"
        );
        assert!(
            !got.iter().any(|(_, id)| id == "forged"),
            "a publication on another device's topic must be dropped by the ACL"
        );
    });
}

#[test]
fn broker_outages_lose_no_event() {
    const N: usize = 1000;
    let mut b = Broker::start(SITE, &["door-1"]);
    let dir = tempfile::tempdir().unwrap();
    let store = memory_store(dir.path());
    let rt = rt();
    let (mut seen, handle, link) = rt.block_on(async {
        let (_c, mut seen) =
            subscribe(&b, "fleet-outage", &["facegate/v1/hq/door-1/events".into()]);
        wait_suback(&mut seen).await;
        let (handle, link) = start_link(&b, store.clone(), "door-1");
        (seen, handle, link)
    });
    let producer = {
        let store = store.clone();
        let handle = handle.clone();
        std::thread::spawn(move || {
            let mut ids = Vec::with_capacity(N);
            for i in 0..N {
                ids.push(
                    record_event(&store, "door-1", &event(i), &limits())
                        .unwrap()
                        .event_id
                        .to_string(),
                );
                handle.notify_new_event();
                std::thread::sleep(Duration::from_millis(3));
            }
            ids
        })
    };
    let t0 = Instant::now();
    let mut outages = 0;
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(600));
        b.stop();
        std::thread::sleep(Duration::from_millis(400));
        b.restart();
        outages += 1;
    }
    let ids = producer.join().unwrap();
    let expected: HashSet<String> = ids.iter().cloned().collect();
    assert_eq!(expected.len(), N);
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    rt.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
        while expected.iter().any(|id| !counts.contains_key(id)) {
            match tokio::time::timeout_at(deadline, seen.recv()).await {
                Ok(Some((_, p))) => {
                    if let Some(id) = event_id(&p) {
                        *counts.entry(id).or_default() += 1;
                    }
                }
                _ => break,
            }
        }
    });
    let missing = expected
        .iter()
        .filter(|id| !counts.contains_key(*id))
        .count();
    let total: usize = counts.values().sum();
    let dups = total - counts.len();
    println!(
        "outage test: {N} events, {outages} broker restarts, {total} deliveries, {} unique, {dups} duplicates, {missing} missing, {:.1} s; link stats: connects {} errors {} published {} acked {}",
        counts.len(),
        t0.elapsed().as_secs_f32(),
        handle
            .stats
            .connects
            .load(std::sync::atomic::Ordering::Relaxed),
        handle
            .stats
            .errors
            .load(std::sync::atomic::Ordering::Relaxed),
        handle
            .stats
            .published
            .load(std::sync::atomic::Ordering::Relaxed),
        handle
            .stats
            .acked
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    assert_eq!(
        missing,
        0,
        "events lost across broker outages; broker log:\n{}",
        b.log()
    );
    assert!(
        handle
            .stats
            .connects
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2
    );
    // Every acknowledged event leaves the outbox.
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.outbox_len().unwrap() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(store.outbox_len().unwrap(), 0);
    handle.shutdown();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), link)
            .await
            .unwrap()
            .unwrap()
            .unwrap()
    });
}

/// Child half of [`daemon_crash_loses_no_committed_event`]: runs only when started by it.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var("FG_CRASH_CHILD") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let port: u16 = std::env::var("FG_PORT").unwrap().parse().unwrap();
    let events: usize = std::env::var("FG_EVENTS").unwrap().parse().unwrap();
    let kek = Kek::from_key_file(&dir.join("store.key")).unwrap();
    let store = Arc::new(Store::open(&dir.join("s.redb"), &kek).unwrap());
    let broker_dir = PathBuf::from(std::env::var("FG_BROKER_DIR").unwrap());
    let mut cfg = MqttConfig::new("127.0.0.1", port, SITE, "door-1");
    cfg.ca_file = Some(broker_dir.join("ca.pem"));
    cfg.cert_file = Some(broker_dir.join("door-1.pem"));
    cfg.key_file = Some(broker_dir.join("door-1.key"));
    cfg.backoff_initial_ms = 50;
    cfg.backoff_max_ms = 300;
    let tls = tls::from_config(&cfg).unwrap();
    let (link, handle) =
        FleetLink::new(store.clone(), cfg, tls, None, StatusSource::new(Vec::new())).unwrap();
    let rt = rt();
    rt.spawn(link.run());
    use std::io::Write;
    let mut out = std::io::stdout();
    for i in 0..events {
        let id = record_event(&store, "door-1", &event(i), &limits())
            .unwrap()
            .event_id;
        writeln!(out, "COMMITTED {id}").unwrap();
        out.flush().unwrap();
        handle.notify_new_event();
        std::thread::sleep(Duration::from_millis(2));
    }
    loop {
        if store.outbox_len().unwrap() == 0 {
            writeln!(out, "DRAINED").unwrap();
            out.flush().unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct ChildRun {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

fn spawn_child(
    dir: &Path,
    b: &Broker,
    events: usize,
    committed: &Arc<Mutex<Vec<String>>>,
) -> ChildRun {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env("FG_CRASH_CHILD", dir)
        .env("FG_PORT", b.port.to_string())
        .env("FG_EVENTS", events.to_string())
        .env("FG_BROKER_DIR", &b.dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let committed = committed.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(id) = line.strip_prefix("COMMITTED ") {
                committed.lock().unwrap().push(id.to_string());
            } else if tx.send(line).is_err() {
                return;
            }
        }
    });
    ChildRun { child, lines: rx }
}

fn sigkill(c: &mut Child) {
    // SAFETY: kill(2) on a child we spawned and have not reaped yet.
    unsafe {
        libc::kill(c.id() as i32, libc::SIGKILL);
    }
    let _ = c.wait();
}

#[test]
fn daemon_crash_loses_no_committed_event() {
    const ROUNDS: usize = 8;
    let b = Broker::start(SITE, &["door-1"]);
    let dir = tempfile::tempdir().unwrap();
    let kek = Kek::generate_key_file(&dir.path().join("store.key")).unwrap();
    drop(Store::create(&dir.path().join("s.redb"), &kek, "test").unwrap());
    let committed = Arc::new(Mutex::new(Vec::new()));
    let rt = rt();
    let (_c, mut seen) = rt.block_on(async {
        let (c, mut seen) = subscribe(
            &b,
            "fleet-crash",
            &[
                "facegate/v1/hq/door-1/events".into(),
                "facegate/v1/hq/door-1/status".into(),
            ],
        );
        wait_suback(&mut seen).await;
        (c, seen)
    });
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        | 1;
    println!("crash test seed {seed}");
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let t0 = Instant::now();
    for _ in 0..ROUNDS {
        let mut run = spawn_child(dir.path(), &b, 150, &committed);
        std::thread::sleep(Duration::from_millis(150 + next() % 500));
        sigkill(&mut run.child);
    }
    let n_committed = committed.lock().unwrap().len();
    // Final run: no new events; it must drain everything left.
    let mut run = spawn_child(dir.path(), &b, 0, &committed);
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut drained = false;
    while !drained && Instant::now() < deadline {
        if let Ok(l) = run.lines.recv_timeout(Duration::from_millis(200)) {
            drained = l == "DRAINED";
        }
    }
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut states = Vec::new();
    let expected: HashSet<String> = committed.lock().unwrap().iter().cloned().collect();
    rt.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let all = expected.iter().all(|id| counts.contains_key(id));
            let wait = if all {
                Duration::from_millis(300)
            } else {
                deadline.saturating_duration_since(tokio::time::Instant::now())
            };
            match tokio::time::timeout(wait, seen.recv()).await {
                Ok(Some((t, p))) if t.ends_with("/status") => {
                    let v: serde_json::Value = serde_json::from_slice(&p).unwrap_or_default();
                    states.push(format!(
                        "{}:{}",
                        v["state"].as_str().unwrap_or("?"),
                        v["reason"].as_str().unwrap_or("")
                    ));
                }
                Ok(Some((_, p))) => {
                    if let Some(id) = event_id(&p) {
                        *counts.entry(id).or_default() += 1;
                    }
                }
                _ => break,
            }
        }
    });
    sigkill(&mut run.child);
    let missing = expected
        .iter()
        .filter(|id| !counts.contains_key(*id))
        .count();
    let total: usize = counts.values().sum();
    println!(
        "crash test: {ROUNDS} SIGKILLs, {n_committed} committed events, {} received unique ({} committed but unreported before a kill), {} duplicates, {missing} missing, drained={drained}, {:.1} s",
        counts.len(),
        counts.len().saturating_sub(expected.len()),
        total - counts.len(),
        t0.elapsed().as_secs_f32()
    );
    let offline = states
        .iter()
        .filter(|s| s.as_str() == "offline:last_will")
        .count();
    let online = states.iter().filter(|s| s.starts_with("online")).count();
    println!("status transitions seen: {online} online, {offline} offline (last will)");
    assert!(n_committed > 0);
    assert_eq!(missing, 0, "committed events lost across SIGKILLs");
    assert!(drained, "the restarted daemon did not drain the outbox");
    let kek = Kek::from_key_file(&dir.path().join("store.key")).unwrap();
    let store = Store::open(&dir.path().join("s.redb"), &kek).unwrap();
    assert_eq!(store.outbox_len().unwrap(), 0, "outbox must end empty");
    assert!(
        offline >= 1,
        "the Last Will must announce offline when the daemon dies: {states:?}"
    );
    assert!(
        online >= 2,
        "online must be announced on every (re)connect: {states:?}"
    );
}

fn draft(version: u64, target: &str) -> BundleDraft {
    let mut v = vec![0.03f32; EMBEDDING_DIM];
    v[2] = 0.8;
    let now = now_unix();
    BundleDraft {
        site: SITE.into(),
        target: target.into(),
        version,
        created_at: now,
        expires_at: now + 600,
        ops: vec![Operation::Upsert {
            person: NewPerson {
                id: format!("p-{version}"),
                label: "Grace".into(),
                external_id: None,
            },
            templates: vec![NewTemplate::anchor(v, "sface", "2021dec")],
        }],
    }
}

async fn next_on(rx: &mut Msgs, topic: &str) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (t, p) = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no message on {topic} within 10 s"))
            .expect("subscriber ended");
        if t == topic {
            return serde_json::from_slice(&p).unwrap();
        }
    }
}

fn file_hash(p: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(p).unwrap()))
}

#[test]
fn bundles_over_mqtt_rejected_or_applied_atomically_with_status_and_last_will() {
    let b = Broker::start(SITE, &["door-1"]);
    let dir = tempfile::tempdir().unwrap();
    let store = memory_store(dir.path());
    let path = dir.path().join("s.redb");
    rt().block_on(async {
        let topics = facegate::mqtt::Topics::new(SITE, "door-1");
        let (fleet, mut seen) = subscribe(
            &b,
            "fleet-bundles",
            &[topics.bundle_result(), topics.status()],
        );
        wait_suback(&mut seen).await;
        let (handle, link) = start_link(&b, store.clone(), "door-1");
        let online = next_on(&mut seen, &topics.status()).await;
        assert_eq!(online["state"], "online");
        assert_eq!(online["outbox_depth"], 0);

        let sk = site_key();
        let first = bundle::build_bundle(&draft(5, "door-1"), &signer(), &sk).unwrap();
        fleet
            .publish(topics.bundles(), QoS::AtLeastOnce, false, first)
            .await
            .unwrap();
        let r = next_on(&mut seen, &topics.bundle_result()).await;
        assert_eq!(r["code"], "applied", "{r}");
        assert!(store.person_exists("p-5").unwrap());

        let before = file_hash(&path);
        let good = bundle::build_bundle(&draft(6, TARGET_ALL), &signer(), &sk).unwrap();
        let mut expired = draft(6, "door-1");
        expired.created_at -= 7200;
        expired.expires_at = expired.created_at + 60;
        let mut oversized = good.clone();
        oversized.resize(10 * (64 << 10), 0);
        let mut random = vec![0u8; 4096];
        for (i, x) in random.iter_mut().enumerate() {
            *x = (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0];
        }
        let bad: Vec<(&str, Vec<u8>)> = vec![
            (
                "bad_signature",
                bundle::build_bundle(
                    &draft(6, "door-1"),
                    &SigningKey::from_bytes(&[99u8; 32]),
                    &sk,
                )
                .unwrap(),
            ),
            (
                "wrong_target",
                bundle::build_bundle(&draft(6, "door-2"), &signer(), &sk).unwrap(),
            ),
            (
                "replay",
                bundle::build_bundle(&draft(5, "door-1"), &signer(), &sk).unwrap(),
            ),
            (
                "replay",
                bundle::build_bundle(&draft(3, "door-1"), &signer(), &sk).unwrap(),
            ),
            (
                "expired",
                bundle::build_bundle(&expired, &signer(), &sk).unwrap(),
            ),
            ("truncated", good[..good.len() - 10].to_vec()),
            ("oversized", oversized),
            ("bad_magic", random),
        ];
        logs();
        let wrong_key = bundle::key_id(&SigningKey::from_bytes(&[99u8; 32]).verifying_key());
        let our_key = bundle::key_id(&signer().verifying_key());
        // (code, claimed version, claimed key id): what the result and the audit line must say.
        let claims: [(Option<u64>, Option<&str>); 8] = [
            (Some(6), Some(&wrong_key)),
            (Some(6), Some(&our_key)),
            (Some(5), Some(&our_key)),
            (Some(3), Some(&our_key)),
            (Some(6), Some(&our_key)),
            (None, None),
            (None, None),
            (None, None),
        ];
        for ((code, bytes), (version, key)) in bad.into_iter().zip(claims) {
            let sha = hex::encode(Sha256::digest(&bytes));
            let size = bytes.len();
            fleet
                .publish(topics.bundles(), QoS::AtLeastOnce, false, bytes)
                .await
                .unwrap();
            let r = next_on(&mut seen, &topics.bundle_result()).await;
            println!("refused as expected: {r}");
            assert_eq!(r["ok"], false);
            assert_eq!(r["code"], code, "{r}");
            assert!(!r["message"].as_str().unwrap_or("").is_empty());
            assert_eq!(r["bundle_sha256"], sha.as_str(), "{r}");
            assert_eq!(r["size"], size, "{r}");
            assert_eq!(r["version"].as_u64(), version, "{r}");
            assert_eq!(r["key_id"].as_str(), key, "{r}");
            // The audit record of a refusal is a structured log line, not a store write.
            let lines = log_lines(&[
                "FACEGATE_EVENT=\"bundle_refused\"",
                "device=door-1",
                &format!("code=\"{code}\""),
                &format!("bundle_sha256={sha}"),
                &format!("size={size}"),
            ]);
            assert_eq!(lines.len(), 1, "one audit line per refusal: {lines:?}");
            if let Some(v) = version {
                assert!(lines[0].contains(&format!("version={v}")), "{}", lines[0]);
            }
        }
        assert_eq!(
            before,
            file_hash(&path),
            "a refused bundle must leave the store byte-for-byte unchanged"
        );

        fleet
            .publish(topics.all_bundles(), QoS::AtLeastOnce, false, good)
            .await
            .unwrap();
        let r = next_on(&mut seen, &topics.bundle_result()).await;
        assert_eq!(r["code"], "applied", "{r}");
        assert_eq!(r["report"]["version"], 6);
        assert!(store.person_exists("p-6").unwrap() && store.person_exists("p-5").unwrap());
        assert_eq!(store.applied_bundle_version().unwrap(), Some(6));

        // Commands answer on their result topic with the request id.
        let (cmd_client, mut cmd_seen) = subscribe(&b, "fleet-cmd", &[topics.cmd_result("status")]);
        wait_suback(&mut cmd_seen).await;
        cmd_client
            .publish(
                topics.cmd("status"),
                QoS::AtLeastOnce,
                false,
                br#"{"request_id":"r-1"}"#.to_vec(),
            )
            .await
            .unwrap();
        let (_, p) = tokio::time::timeout(Duration::from_secs(10), cmd_seen.recv())
            .await
            .unwrap()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
        assert_eq!(
            (v["request_id"].as_str(), v["ok"].as_bool()),
            (Some("r-1"), Some(true))
        );

        // Device dies without DISCONNECT (task aborted, socket dropped): Last Will says offline.
        link.abort();
        drop(handle);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (t, p) = tokio::time::timeout_at(deadline, seen.recv())
                .await
                .expect("no last will")
                .unwrap();
            if t == topics.status() {
                let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
                if v["state"] == "offline" {
                    assert_eq!(v["reason"], "last_will");
                    break;
                }
            }
        }
    });
}

/// Collect messages on `topic` until `done` says so (or 20 s pass).
async fn collect_until(
    rx: &mut Msgs,
    topic: &str,
    mut done: impl FnMut(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done(&got) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((t, p))) if t == topic => got.push(serde_json::from_slice(&p).unwrap()),
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    got
}

fn decision_counts(events: &[AccessEvent]) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for e in events {
        let d = match e.decision {
            Some(Decision::Granted) => "granted",
            Some(Decision::Denied) => "denied",
            None => "none",
        };
        *m.entry(d.to_string()).or_default() += 1;
    }
    m
}

/// Record `n` events with the outbox bounded to 50 rows, then let a link deliver them: the
/// subscriber must get every retained event plus one summary counting exactly the rest.
#[allow(clippy::type_complexity)]
fn overflow_round(
    b: &Broker,
    rt: &tokio::runtime::Runtime,
    store: &Arc<Store>,
    seen: &mut Msgs,
    n: usize,
) -> (
    serde_json::Value,
    serde_json::Value,
    Vec<serde_json::Value>,
    Vec<String>,
    u64,
) {
    const DEV: &str = "door-o";
    let bounded = OutboxLimits {
        max_events: 50,
        max_bytes: 64 << 20,
    };
    let topics = facegate::mqtt::Topics::new(SITE, DEV);
    let mut ids = Vec::new();
    let mut evs = Vec::new();
    let mut rolled = 0;
    for i in 0..n {
        let ev = event(i);
        let r = record_event(store, DEV, &ev, &bounded).unwrap();
        rolled += r.rolled_up;
        ids.push(r.event_id.to_string());
        evs.push(ev);
    }
    assert_eq!(
        store.outbox_len().unwrap(),
        50,
        "bound holds, summary included"
    );
    let expected_rolled = (n - 49) as u64;
    assert_eq!(rolled, expected_rolled);
    let (status, summary, events) = rt.block_on(async {
        let (handle, link) = start_link(b, store.clone(), DEV);
        // Skip the previous round's `offline` (shutdown) if it is still queued.
        let status = collect_until(seen, &topics.status(), |g| {
            g.last().is_some_and(|v| v["state"] == "online")
        })
        .await
        .pop()
        .expect("no online status");
        let got = collect_until(seen, &topics.events(), |g| {
            let unique: HashSet<&str> = g.iter().filter_map(|v| v["event_id"].as_str()).collect();
            unique.len() >= 50
        })
        .await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.outbox_len().unwrap() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        handle.shutdown();
        tokio::time::timeout(Duration::from_secs(5), link)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let (summaries, events): (Vec<_>, Vec<_>) = got
            .into_iter()
            .partition(|v| v["kind"] == "outbox_overflow");
        assert_eq!(summaries.len(), 1, "exactly one summary: {summaries:?}");
        (status, summaries[0].clone(), events)
    });
    // Counted exactly, over exactly the oldest events, without naming anyone.
    assert_eq!(summary["rolled_up"], expected_rolled, "{summary}");
    let by_decision: BTreeMap<String, u64> =
        serde_json::from_value(summary["by_decision"].clone()).unwrap();
    assert_eq!(
        by_decision,
        decision_counts(&evs[..expected_rolled as usize])
    );
    let by_kind: BTreeMap<String, u64> =
        serde_json::from_value(summary["by_kind"].clone()).unwrap();
    assert_eq!(by_kind.values().sum::<u64>(), expected_rolled);
    assert!(by_kind["door_forced"] > 0, "{by_kind:?}");
    assert_eq!(summary["unreadable"], 0);
    assert!(summary.get("person_id").is_none());
    assert!(!summary.to_string().contains("\"p-"), "{summary}");
    let received: Vec<String> = events
        .iter()
        .map(|v| v["event_id"].as_str().unwrap().to_string())
        .collect();
    let unique: HashSet<&String> = received.iter().collect();
    let kept: HashSet<&String> = ids[expected_rolled as usize..].iter().collect();
    assert_eq!(unique, kept, "every retained event, and only those");
    let seq_range = summary["first_seq"].as_u64().unwrap()..=summary["last_seq"].as_u64().unwrap();
    for v in &events {
        assert!(!seq_range.contains(&v["seq"].as_u64().unwrap()));
    }
    assert_eq!(
        summary["rolled_up"].as_u64().unwrap() + unique.len() as u64,
        n as u64
    );
    (status, summary, events, ids, expected_rolled)
}

#[test]
fn bounded_outbox_rolls_overflow_into_one_counted_summary_with_alarm() {
    logs();
    let b = Broker::start(SITE, &["door-o"]);
    let dir = tempfile::tempdir().unwrap();
    let store = memory_store(dir.path());
    let rt = rt();
    let topics = facegate::mqtt::Topics::new(SITE, "door-o");
    let (_c, mut seen) = rt.block_on(async {
        let (c, mut seen) = subscribe(&b, "fleet-overflow", &[topics.events(), topics.status()]);
        wait_suback(&mut seen).await;
        (c, seen)
    });
    // Round 1: 500 events into 50 rows while no link runs.
    let (status, s1, events, _, rolled) = overflow_round(&b, &rt, &store, &mut seen, 500);
    println!(
        "overflow round 1: 500 recorded, {} retained events received, summary rolled_up {} (first_seq {}, last_seq {}), by_kind {}, by_decision {}",
        events.len(),
        s1["rolled_up"],
        s1["first_seq"],
        s1["last_seq"],
        s1["by_kind"],
        s1["by_decision"]
    );
    assert_eq!(rolled, 451);
    assert_eq!(
        (s1["first_seq"].as_u64(), s1["last_seq"].as_u64()),
        (Some(1), Some(451))
    );
    // The alarm: in the retained status published on connect...
    assert_eq!(status["outbox_overflow"]["pending"], 451, "{status}");
    assert_eq!(status["outbox_overflow"]["total"], 451, "{status}");
    assert_eq!(status["outbox_depth"], 50);
    assert!(
        status["faults"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f.as_str().unwrap().starts_with("outbox_overflow: 451 ")),
        "{status}"
    );
    // ...and in the log, once as an error when the summary started.
    let alarm = log_lines(&[
        "ERROR",
        "FACEGATE_EVENT=\"outbox_overflow\"",
        "device=door-o",
    ]);
    assert_eq!(alarm.len(), 1, "{alarm:?}");
    assert!(alarm[0].contains("max_events=50"), "{}", alarm[0]);
    assert_eq!(
        store.outbox_len().unwrap(),
        0,
        "summary and events delivered and deleted"
    );
    assert_eq!(store.outbox_overflow().unwrap().pending, 0);

    // Round 2, after the first summary was delivered: a new summary (new id), its own count.
    let (status2, s2, _, _, rolled2) = overflow_round(&b, &rt, &store, &mut seen, 120);
    println!(
        "overflow round 2: 120 recorded, summary rolled_up {} (new summary id: {})",
        s2["rolled_up"],
        s2["summary_id"] != s1["summary_id"]
    );
    assert_eq!(rolled2, 71);
    assert_ne!(s2["summary_id"], s1["summary_id"]);
    assert_eq!(status2["outbox_overflow"]["pending"], 71, "{status2}");
    assert_eq!(status2["outbox_overflow"]["total"], 451 + 71, "{status2}");
    assert_eq!(store.outbox_overflow().unwrap().total, 522);
}

fn open_req(device: &str, id: &str) -> OpenRequest {
    let now = now_unix();
    OpenRequest {
        site: SITE.into(),
        target: device.into(),
        request_id: id.into(),
        duration_ms: 5000,
        not_before: now,
        not_after: now + 30,
    }
}

fn signed(req: &OpenRequest, key: &SigningKey) -> Vec<u8> {
    serde_json::to_vec(&sign_open(req, key)).unwrap()
}

/// The result of command `name` with request id `id` from `dev`.
async fn result_for(rx: &mut Msgs, name: &str, dev: &str, id: &str) -> serde_json::Value {
    let topic = facegate::mqtt::Topics::new(SITE, dev).cmd_result(name);
    let got = collect_until(rx, &topic, |g| g.iter().any(|v| v["request_id"] == id)).await;
    got.into_iter()
        .find(|v| v["request_id"] == id)
        .unwrap_or_else(|| panic!("no result for {id} on {topic}"))
}

#[test]
fn signed_open_reaches_the_daemon_and_every_bad_one_is_refused() {
    logs();
    const DEV: &str = "door-c";
    let b = Broker::start(SITE, &[DEV, "door-u"]);
    let dir = tempfile::tempdir().unwrap();
    let store = memory_store(dir.path());
    let rt = rt();
    rt.block_on(async {
        let topics = facegate::mqtt::Topics::new(SITE, DEV);
        let (fleet, mut seen) = subscribe(
            &b,
            "fleet-cmd",
            &[
                "facegate/v1/hq/+/cmd/+/result".into(),
                "facegate/v1/hq/+/status".into(),
            ],
        );
        wait_suback(&mut seen).await;
        // The test plays the daemon: it records what reaches it and answers.
        let (tx, mut rx) = mpsc::channel::<RemoteCommand>(4);
        let received: Arc<Mutex<Vec<(String, String, Duration)>>> = Arc::default();
        let rec = received.clone();
        tokio::spawn(async move {
            let mut parked = Vec::new();
            while let Some(cmd) = rx.recv().await {
                match cmd {
                    RemoteCommand::Open {
                        request_id,
                        duration,
                        reply,
                    } => {
                        rec.lock()
                            .unwrap()
                            .push(("open".into(), request_id.clone(), duration));
                        let _ = reply.send(CommandOutcome::ok(
                            "opened",
                            format!("released for {} ms", duration.as_millis()),
                        ));
                    }
                    RemoteCommand::ReloadConfig { request_id, reply } => {
                        rec.lock().unwrap().push((
                            "reload-config".into(),
                            request_id.clone(),
                            Duration::ZERO,
                        ));
                        if request_id == "slow" {
                            parked.push(reply); // never answered: the link must time out
                        } else {
                            let _ = reply
                                .send(CommandOutcome::ok("reloaded", "configuration reloaded"));
                        }
                    }
                }
            }
        });
        let (handle, link) = start_link_with(
            &b,
            store.clone(),
            DEV,
            |c| c.command_timeout_ms = 1500,
            Some(tx),
        );
        let (handle_u, link_u) = start_link(&b, store.clone(), "door-u");
        // Both links are subscribed once they announce `online` (published after SUBSCRIBE).
        for dev in [DEV, "door-u"] {
            let t = facegate::mqtt::Topics::new(SITE, dev).status();
            collect_until(&mut seen, &t, |g| g.iter().any(|v| v["state"] == "online")).await;
        }
        let send = |name: &str, dev: &str, payload: Vec<u8>| {
            let fleet = fleet.clone();
            let topic = facegate::mqtt::Topics::new(SITE, dev).cmd(name);
            async move {
                fleet
                    .publish(topic, QoS::AtLeastOnce, false, payload)
                    .await
                    .unwrap()
            }
        };

        // 1. A valid signed open reaches the daemon and its answer is published.
        let good = signed(&open_req(DEV, "open-1"), &signer());
        send("open", DEV, good.clone()).await;
        let r = result_for(&mut seen, "open", DEV, "open-1").await;
        println!("valid open: {r}");
        assert_eq!(
            (r["ok"].as_bool(), r["code"].as_str()),
            (Some(true), Some("opened")),
            "{r}"
        );

        // 2. Every bad one is refused with its own code and never reaches the daemon.
        let mut unsigned: serde_json::Value =
            serde_json::from_slice(&signed(&open_req(DEV, "open-2"), &signer())).unwrap();
        unsigned.as_object_mut().unwrap().remove("signature");
        let mut expired = open_req(DEV, "open-4");
        expired.not_before -= 120;
        expired.not_after = expired.not_before + 60;
        let mut long_open = open_req(DEV, "open-7");
        long_open.duration_ms = 30_001;
        let mut long_window = open_req(DEV, "open-8");
        long_window.not_after = long_window.not_before + 61;
        let cases: Vec<(&str, &str, Vec<u8>)> = vec![
            ("open-2", "unsigned", serde_json::to_vec(&unsigned).unwrap()),
            (
                "open-3",
                "bad_signature",
                signed(
                    &open_req(DEV, "open-3"),
                    &SigningKey::from_bytes(&[99u8; 32]),
                ),
            ),
            ("open-4", "expired", signed(&expired, &signer())),
            (
                "open-5",
                "wrong_target",
                signed(&open_req("door-u", "open-5"), &signer()),
            ),
            ("open-1", "replay", good.clone()),
            ("open-7", "duration_too_long", signed(&long_open, &signer())),
            ("open-8", "window_too_long", signed(&long_window, &signer())),
        ];
        for (id, code, payload) in cases {
            send("open", DEV, payload).await;
            let r = result_for(&mut seen, "open", DEV, id).await;
            println!("refused as expected: {r}");
            assert_eq!(
                (r["ok"].as_bool(), r["code"].as_str()),
                (Some(false), Some(code)),
                "{r}"
            );
            assert!(!r["message"].as_str().unwrap().is_empty());
            let lines = log_lines(&[
                "FACEGATE_EVENT=\"command_refused\"",
                "device=door-c",
                "command=\"open\"",
                &format!("code=\"{code}\""),
                &format!("request_id=\"{id}\""),
            ]);
            assert!(!lines.is_empty(), "no structured log line for {code}");
        }
        let opens: Vec<_> = received
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.0 == "open")
            .cloned()
            .collect();
        assert_eq!(
            opens,
            vec![(
                "open".to_string(),
                "open-1".to_string(),
                Duration::from_millis(5000)
            )],
            "only the valid open reaches the door"
        );

        // 3. reload-config is forwarded; an unanswered one times out; a terminal without a
        //    command channel answers `unavailable` (here for a valid open).
        send(
            "reload-config",
            DEV,
            br#"{"request_id":"reload-1"}"#.to_vec(),
        )
        .await;
        let r = result_for(&mut seen, "reload-config", DEV, "reload-1").await;
        assert_eq!(
            (r["ok"].as_bool(), r["code"].as_str()),
            (Some(true), Some("reloaded")),
            "{r}"
        );
        let t0 = Instant::now();
        send("reload-config", DEV, br#"{"request_id":"slow"}"#.to_vec()).await;
        let r = result_for(&mut seen, "reload-config", DEV, "slow").await;
        println!(
            "unanswered reload-config: {r} after {:.1} s",
            t0.elapsed().as_secs_f32()
        );
        assert_eq!(r["code"], "timeout", "{r}");
        assert!(t0.elapsed() >= Duration::from_millis(1400));
        send("reload-config", DEV, br#"{"no_id":true}"#.to_vec()).await;
        send(
            "open",
            "door-u",
            signed(&open_req("door-u", "open-u"), &signer()),
        )
        .await;
        let r = result_for(&mut seen, "open", "door-u", "open-u").await;
        assert_eq!(
            (r["ok"].as_bool(), r["code"].as_str()),
            (Some(false), Some("unavailable")),
            "{r}"
        );
        send("frobnicate", DEV, br#"{"request_id":"f-1"}"#.to_vec()).await;
        let r = result_for(&mut seen, "frobnicate", DEV, "f-1").await;
        assert_eq!(r["code"], "unsupported", "{r}");
        let all: Vec<_> = received
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.1.clone())
            .collect();
        assert_eq!(
            all,
            ["open-1", "reload-1", "slow"],
            "what reached the daemon"
        );
        assert_eq!(topics.cmd("open"), "facegate/v1/hq/door-c/cmd/open");
        for (h, l) in [(handle, link), (handle_u, link_u)] {
            h.shutdown();
            tokio::time::timeout(Duration::from_secs(5), l)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
        }
    });
}

/// Run the CLI with `args` and return (exit code, stdout, stderr).
fn cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(facegate_tests::facegate_bin())
        .args(args)
        .output()
        .expect("spawn facegate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bundle_publish_and_cmd_send_cli_against_the_broker() {
    const DEV: &str = "door-p";
    let b = Broker::start(SITE, &[DEV, "door-x"]);
    let dir = tempfile::tempdir().unwrap();
    let store = memory_store(dir.path());
    let rt = rt();
    let (handle, link) = rt.block_on(async {
        let topics = facegate::mqtt::Topics::new(SITE, DEV);
        let (_c, mut seen) = subscribe(&b, "fleet-cli", &[topics.status()]);
        wait_suback(&mut seen).await;
        let hl = start_link(&b, store.clone(), DEV);
        next_on(&mut seen, &topics.status()).await;
        hl
    });
    let port = b.port.to_string();
    let broker_args = |identity: &str| -> Vec<String> {
        let c = b.client(identity);
        vec![
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            port.clone(),
            "--ca".into(),
            b.ca.display().to_string(),
            "--cert".into(),
            c.cert.display().to_string(),
            "--key".into(),
            c.key.display().to_string(),
        ]
    };
    let write = |name: &str, bytes: Vec<u8>| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p.display().to_string()
    };
    let run = |file: &str, identity: &str, extra: &[&str]| {
        let mut args: Vec<String> = vec!["bundle".into(), "publish".into(), file.into()];
        args.extend(broker_args(identity));
        args.extend(extra.iter().map(|s| s.to_string()));
        cli(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let sk = site_key();
    // Applied: exit 0, the device's result printed.
    let good = write(
        "v5.bundle",
        bundle::build_bundle(&draft(5, DEV), &signer(), &sk).unwrap(),
    );
    let (code, out, err) = run(
        &good,
        OPERATOR_IDENTITY,
        &["--wait-result", DEV, "--json", "--timeout", "20"],
    );
    println!("publish v5: exit {code}: {out} {err}");
    assert_eq!(code, 0, "{err}");
    let r: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (r["code"].as_str(), r["report"]["version"].as_u64()),
        (Some("applied"), Some(5))
    );
    assert!(store.person_exists("p-5").unwrap());
    // Refused by the device: exit 2, its result printed.
    let forged = write(
        "forged.bundle",
        bundle::build_bundle(&draft(6, DEV), &SigningKey::from_bytes(&[99u8; 32]), &sk).unwrap(),
    );
    let (code, out, err) = run(
        &forged,
        OPERATOR_IDENTITY,
        &["--wait-result", DEV, "--json", "--timeout", "20"],
    );
    println!("publish forged: exit {code}: {out} {err}");
    assert_eq!(code, 2);
    assert!(
        out.contains("\"bad_signature\"") && err.contains("refused"),
        "{out} {err}"
    );
    // Site-wide bundle without waiting: exit 0 once the broker acknowledged; the device applies it.
    let site_wide = write(
        "v7.bundle",
        bundle::build_bundle(&draft(7, TARGET_ALL), &signer(), &sk).unwrap(),
    );
    let (code, out, err) = run(&site_wide, OPERATOR_IDENTITY, &["--timeout", "20"]);
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.contains("facegate/v1/hq/all/bundles"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !store.person_exists("p-7").unwrap() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(store.person_exists("p-7").unwrap());
    // Arguments contradicting the bundle: exit 2 before connecting.
    let v8 = write(
        "v8.bundle",
        bundle::build_bundle(&draft(8, DEV), &signer(), &sk).unwrap(),
    );
    let (code, _, err) = run(&v8, OPERATOR_IDENTITY, &["--target", "door-x"]);
    assert_eq!(code, 2, "{err}");
    // An identity the ACL does not allow to publish there: the broker drops it silently, so no
    // result arrives — exit 1, never 0 — and the store is untouched.
    let (code, _, err) = run(&v8, "door-x", &["--wait-result", DEV, "--timeout", "3"]);
    println!("publish as door-x: exit {code}: {err}");
    assert_eq!(code, 1, "{err}");
    assert_eq!(store.applied_bundle_version().unwrap(), Some(7));
    // `cmd sign-open` makes a payload the device verifies: with no command handler running
    // here the verified open is answered `unavailable` (a bad signature would say so).
    let key_file = dir.path().join("fleet.key");
    std::fs::write(&key_file, hex::encode([11u8; 32])).unwrap();
    std::fs::set_permissions(
        &key_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let payload = dir.path().join("open.json");
    let (code, _, err) = cli(&[
        "cmd",
        "sign-open",
        "--signing-key",
        &key_file.display().to_string(),
        "--site",
        SITE,
        "--device",
        DEV,
        "--duration-ms",
        "3000",
        "--request-id",
        "cli-open-1",
        "--out",
        &payload.display().to_string(),
    ]);
    assert_eq!(code, 0, "{err}");
    let mut args: Vec<String> = [
        "cmd",
        "send",
        "open",
        "--site",
        SITE,
        "--device",
        DEV,
        "--json",
        "--timeout",
        "20",
        "--payload",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(payload.display().to_string());
    args.extend(broker_args(OPERATOR_IDENTITY));
    let (code, out, err) = cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
    println!("cmd send open: exit {code}: {out} {err}");
    assert_eq!(code, 2, "{err}");
    let r: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (r["request_id"].as_str(), r["code"].as_str()),
        (Some("cli-open-1"), Some("unavailable"))
    );
    let mut args: Vec<String> = [
        "cmd",
        "send",
        "status",
        "--site",
        SITE,
        "--device",
        DEV,
        "--timeout",
        "20",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(broker_args(OPERATOR_IDENTITY));
    let (code, out, err) = cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{out} {err}");
    handle.shutdown();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), link)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    });
}
