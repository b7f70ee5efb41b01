//! A real Mosquitto broker for fleet-sync tests: private PKI, mutual TLS, per-device ACL.
//!
//! [`Broker::start`] writes a throw-away CA, a server certificate for `localhost`/`127.0.0.1`
//! and one client certificate per name (the certificate CN is the MQTT username through
//! `use_identity_as_username`), an ACL confining every device to `facegate/v1/{site}/{CN}/#`
//! plus read access to `facegate/v1/{site}/all/bundles` (the `fleet` identity may use all of
//! `facegate/#`; the `operator` identity may only publish bundles and commands to the site's
//! devices and read their results — what `facegate bundle publish` / `cmd send` need), and
//! starts `mosquitto -c conf` on a free loopback port. Nothing listens beyond 127.0.0.1 and the
//! system broker (if any) is never touched.
//!
//! `mosquitto` comes from Debian (`apt-get install mosquitto`, binary `/usr/sbin/mosquitto`).
//! If it is missing the test fails with a message saying so — never a silent skip.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// Identity with full access to the site's topics (the fleet back end in tests).
pub const FLEET_IDENTITY: &str = "fleet";
/// Identity of a human operator's tools: publish bundles and commands, read their results.
pub const OPERATOR_IDENTITY: &str = "operator";

/// Where the client certificate and key of one identity are.
#[derive(Debug, Clone)]
pub struct ClientCert {
    /// Certificate PEM.
    pub cert: PathBuf,
    /// Private key PEM (mode 0600).
    pub key: PathBuf,
}

/// A running test broker; killed when dropped.
pub struct Broker {
    /// Loopback TLS port.
    pub port: u16,
    /// Directory with PKI, config, ACL, persistence and log.
    pub dir: PathBuf,
    /// CA certificate to pin.
    pub ca: PathBuf,
    conf: PathBuf,
    child: Option<Child>,
    _tmp: tempfile::TempDir,
}

fn mosquitto_binary() -> PathBuf {
    for p in [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ] {
        if Path::new(p).is_file() {
            return p.into();
        }
    }
    panic!(
        "mosquitto is not installed: the fleet-sync tests need a real broker. \
         Install the Debian package (`apt-get install mosquitto`, done by scripts/setup.sh)."
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

fn write(path: &Path, text: &str, mode: u32) {
    let mut f = std::fs::File::create(path).expect("write test file");
    f.write_all(text.as_bytes()).expect("write test file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

impl Broker {
    /// Create PKI and config for `site` with client certificates for `identities` (plus
    /// [`FLEET_IDENTITY`] and [`OPERATOR_IDENTITY`]) and start the broker.
    pub fn start(site: &str, identities: &[&str]) -> Broker {
        mosquitto_binary();
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "facegate test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
        let ca = dir.join("ca.pem");
        write(&ca, &ca_cert.pem(), 0o644);
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf = |cn: &str, server: bool| {
            let key = KeyPair::generate().expect("leaf key");
            let mut p = CertificateParams::new(if server {
                vec!["localhost".to_string()]
            } else {
                Vec::new()
            })
            .expect("leaf params");
            if server {
                p.subject_alt_names
                    .push(SanType::IpAddress([127, 0, 0, 1].into()));
            }
            p.distinguished_name.push(DnType::CommonName, cn);
            p.extended_key_usages = vec![if server {
                ExtendedKeyUsagePurpose::ServerAuth
            } else {
                ExtendedKeyUsagePurpose::ClientAuth
            }];
            let cert = p.signed_by(&key, &issuer).expect("leaf cert");
            let cp = dir.join(format!("{cn}.pem"));
            let kp = dir.join(format!("{cn}.key"));
            write(&cp, &cert.pem(), 0o644);
            write(&kp, &key.serialize_pem(), 0o600);
            ClientCert { cert: cp, key: kp }
        };
        let server = leaf("server", true);
        for id in identities
            .iter()
            .chain([&FLEET_IDENTITY, &OPERATOR_IDENTITY])
        {
            leaf(id, false);
        }

        let acl = dir.join("acl");
        write(
            &acl,
            &format!(
                "user {FLEET_IDENTITY}\ntopic readwrite facegate/#\n\n\
                 user {OPERATOR_IDENTITY}\n\
                 topic write facegate/v1/{site}/+/bundles\n\
                 topic read facegate/v1/{site}/+/bundles/result\n\
                 topic write facegate/v1/{site}/+/cmd/+\n\
                 topic read facegate/v1/{site}/+/cmd/+/result\n\n\
                 pattern readwrite facegate/v1/{site}/%u/#\n\
                 pattern read facegate/v1/{site}/all/bundles\n"
            ),
            0o644,
        );
        let port = free_port();
        let conf = dir.join("mosquitto.conf");
        let run_as = if unsafe_euid_is_root() {
            "user root\n"
        } else {
            ""
        };
        write(
            &conf,
            &format!(
                "{run_as}per_listener_settings false\n\
                 allow_anonymous false\n\
                 acl_file {acl}\n\
                 persistence true\n\
                 persistence_location {dir}/\n\
                 autosave_interval 1\n\
                 max_queued_messages 100000\n\
                 max_inflight_messages 100\n\
                 log_dest file {dir}/mosquitto.log\n\
                 log_type error\nlog_type warning\nlog_type notice\nlog_type information\n\
                 listener {port} 127.0.0.1\n\
                 cafile {ca}\ncertfile {cert}\nkeyfile {key}\n\
                 require_certificate true\n\
                 use_identity_as_username true\n\
                 tls_version tlsv1.2\n",
                acl = acl.display(),
                dir = dir.display(),
                ca = ca.display(),
                cert = server.cert.display(),
                key = server.key.display(),
            ),
            0o644,
        );
        let mut b = Broker {
            port,
            dir,
            ca,
            conf,
            child: None,
            _tmp: tmp,
        };
        b.launch();
        b
    }

    fn launch(&mut self) {
        let child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning mosquitto");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                let mut err = String::new();
                if let Some(mut e) = c.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                panic!(
                    "mosquitto exited ({status}) at start: {err}\nlog: {}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "mosquitto did not listen on 127.0.0.1:{} within 10 s; log: {}",
            self.port,
            self.log()
        );
    }

    /// Certificate and key of `identity` (one passed to [`Broker::start`] or `fleet`).
    pub fn client(&self, identity: &str) -> ClientCert {
        ClientCert {
            cert: self.dir.join(format!("{identity}.pem")),
            key: self.dir.join(format!("{identity}.key")),
        }
    }

    /// The broker's log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }

    fn signal(&mut self, sig: i32) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on the pid of a child we spawned and have not yet reaped.
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
            let _ = c.wait();
        }
    }

    /// SIGKILL the broker (no persistence flush: in-flight broker state is lost).
    pub fn kill(&mut self) {
        self.signal(libc::SIGKILL);
    }

    /// SIGTERM the broker and wait: it saves its persistence file (queued messages of
    /// persistent sessions survive).
    pub fn stop(&mut self) {
        self.signal(libc::SIGTERM);
    }

    /// Start the broker again on the same port with the same state directory.
    pub fn restart(&mut self) {
        self.launch();
    }
}

fn unsafe_euid_is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}
