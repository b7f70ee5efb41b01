//! Fleet sync against a real Mosquitto (see `facegate_tests::mosquitto`): mutual TLS and ACL,
//! broker outages, daemon crashes, bundles over MQTT, status and Last Will.
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
use facegate::mqtt::{
    AccessEvent, Decision, FleetLink, MqttConfig, StatusSource, record_event, tls,
};
use facegate::store::{
    EMBEDDING_DIM, Kek, KekSource, NewPerson, NewTemplate, SecretKey, Store, now_unix,
};
use facegate_tests::mosquitto::{Broker, FLEET_IDENTITY};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS, TlsConfiguration, Transport};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

const SITE: &str = "hq";

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

fn start_link(
    b: &Broker,
    store: Arc<Store>,
    device: &str,
) -> (
    facegate::mqtt::FleetHandle,
    tokio::task::JoinHandle<facegate::mqtt::Result<()>>,
) {
    let cfg = device_cfg(b, device);
    let tls = tls::from_config(&cfg).unwrap();
    let v = verifier(device, cfg.max_bundle_bytes);
    let (link, handle) = FleetLink::new(
        store,
        cfg,
        tls,
        Some(v),
        StatusSource::new(vec!["sface@2021dec".into()]),
    )
    .unwrap();
    (handle, tokio::spawn(link.run()))
}

fn memory_store(dir: &Path) -> Arc<Store> {
    let kek = Kek::from_secret(SecretKey::random().unwrap(), KekSource::Memory);
    Arc::new(Store::create(&dir.join("s.redb"), &kek, "test").unwrap())
}

fn event(i: usize) -> AccessEvent {
    AccessEvent {
        kind: facegate::mqtt::EventKind::Access,
        detail: None,
        person_id: (!i.is_multiple_of(3)).then(|| format!("p-{}", i % 7)),
        decision: Some(if i.is_multiple_of(3) {
            Decision::Denied
        } else {
            Decision::Granted
        }),
        match_score: Some(0.5 + (i % 10) as f32 / 100.0),
        liveness_score: Some(0.97),
        reason: "test".into(),
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
                    record_event(&store, "door-1", &event(i), &Default::default())
                        .unwrap()
                        .0
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
        let (id, _) = record_event(&store, "door-1", &event(i), &Default::default()).unwrap();
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
        for (code, bytes) in bad {
            fleet
                .publish(topics.bundles(), QoS::AtLeastOnce, false, bytes)
                .await
                .unwrap();
            let r = next_on(&mut seen, &topics.bundle_result()).await;
            println!("refused as expected: {r}");
            assert_eq!(r["ok"], false);
            assert_eq!(r["code"], code, "{r}");
            assert!(!r["message"].as_str().unwrap_or("").is_empty());
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
