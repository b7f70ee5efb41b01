//! Operator side of the fleet link: publish one message over mutual TLS, wait for the broker's
//! PUBACK, and optionally wait for the device's answer (`facegate bundle publish`,
//! `facegate cmd send`).
//!
//! The session is clean (nothing is left behind on the broker) and short-lived; there is no
//! reconnect loop: an operator wants a clear failure, not a silent retry. When a result is
//! awaited the subscription is made — and acknowledged — *before* publishing, so a fast device
//! cannot answer before anyone listens. Results are matched by content (a bundle's SHA-256, a
//! command's request id) because other operators may be talking to the same device.
//!
//! Note on ACLs: Mosquitto acknowledges (PUBACK) a QoS 1 publication its ACL silently drops, so a
//! PUBACK proves only that the broker took the message, not that the device will see it. Only a
//! result proves delivery.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, Event, Incoming, MqttOptions, Outgoing, QoS, SubscribeReasonCode,
    TlsConfiguration, Transport,
};
use tokio::time::Instant;

use super::{MqttError, Result, tls};

/// How to reach the broker as an operator.
#[derive(Debug, Clone)]
pub struct OperatorConfig {
    /// Broker host (must match its certificate).
    pub host: String,
    /// Broker TLS port.
    pub port: u16,
    /// CA certificate the broker must chain to.
    pub ca: PathBuf,
    /// Operator client certificate (its CN is the broker username the ACL grants).
    pub cert: PathBuf,
    /// Operator private key (mode 0600).
    pub key: PathBuf,
    /// MQTT client id (unique per concurrent operator session).
    pub client_id: String,
    /// Overall time limit: connect, publish, and wait for the result.
    pub timeout: Duration,
}

/// What to wait for after the PUBACK.
pub struct ResultWait<'a> {
    /// Topic the answer arrives on.
    pub topic: String,
    /// Whether a message on that topic is the answer to *our* publication.
    pub matches: &'a dyn Fn(&[u8]) -> bool,
}

/// Publish `payload` on `topic` (QoS 1, not retained) and wait for the PUBACK; with `wait`, then
/// wait for the matching answer and return it.
pub async fn publish(
    cfg: &OperatorConfig,
    topic: &str,
    payload: Vec<u8>,
    wait: Option<ResultWait<'_>>,
) -> Result<Option<Vec<u8>>> {
    super::validate_segment("client id", &cfg.client_id)?;
    let tls = tls::client_config(&cfg.ca, &cfg.cert, &cfg.key)?;
    let mut o = MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
    o.set_keep_alive(Duration::from_secs(10))
        .set_clean_session(true)
        .set_max_packet_size(1 << 20, payload.len().saturating_add(64 << 10))
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls),
        )));
    let (client, mut el) = AsyncClient::new(o, 10);
    let deadline = Instant::now() + cfg.timeout;
    let mut payload = Some(payload);
    let mut our_pkid: Option<u16> = None;
    let mut acked = false;
    let mut connected = false;
    let publish_now = |payload: &mut Option<Vec<u8>>| -> Result<()> {
        if let Some(p) = payload.take() {
            client
                .try_publish(topic, QoS::AtLeastOnce, false, p)
                .map_err(|e| MqttError::Client(format!("publish not queued: {e}")))?;
        }
        Ok(())
    };
    let outcome = loop {
        let ev = match tokio::time::timeout_at(deadline, el.poll()).await {
            Err(_) => {
                let secs = cfg.timeout.as_secs_f32();
                break Err(MqttError::Timeout(if !connected {
                    format!(
                        "no connection to {}:{} within {secs:.0} s",
                        cfg.host, cfg.port
                    )
                } else if !acked {
                    format!("the broker did not acknowledge the publication within {secs:.0} s")
                } else {
                    format!(
                        "published (the broker acknowledged it), but no answer on {} within {secs:.0} s: \
                         the device may be offline (the message waits in its session) or the broker's \
                         ACL dropped the message",
                        wait.as_ref().map_or("", |w| w.topic.as_str())
                    )
                }));
            }
            Ok(Err(e)) => {
                break Err(MqttError::Client(if connected {
                    format!("connection lost: {e}")
                } else {
                    format!(
                        "cannot connect to {}:{} (certificate, CA or broker problem): {e}",
                        cfg.host, cfg.port
                    )
                }));
            }
            Ok(Ok(ev)) => ev,
        };
        match ev {
            Event::Incoming(Incoming::ConnAck(_)) => {
                connected = true;
                match &wait {
                    Some(w) => client
                        .try_subscribe(w.topic.clone(), QoS::AtLeastOnce)
                        .map_err(|e| MqttError::Client(format!("subscribe not queued: {e}")))?,
                    None => publish_now(&mut payload)?,
                }
            }
            Event::Incoming(Incoming::SubAck(ack)) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure))
                {
                    break Err(MqttError::Client(
                        "the broker refused the result subscription (check the operator's ACL)"
                            .into(),
                    ));
                }
                publish_now(&mut payload)?;
            }
            Event::Outgoing(Outgoing::Publish(pkid)) if our_pkid.is_none() => {
                our_pkid = Some(pkid);
            }
            Event::Incoming(Incoming::PubAck(a)) if Some(a.pkid) == our_pkid => {
                acked = true;
                if wait.is_none() {
                    break Ok(None);
                }
            }
            Event::Incoming(Incoming::Publish(p)) => {
                if let Some(w) = &wait
                    && p.topic == w.topic
                    && (w.matches)(&p.payload)
                {
                    // The answer proves delivery even if the PUBACK is still on its way.
                    break Ok(Some(p.payload.to_vec()));
                }
            }
            _ => {}
        }
    };
    // Say goodbye politely; never let it delay the answer by more than a moment.
    if client.try_disconnect().is_ok() {
        let until = Instant::now() + Duration::from_millis(500);
        while let Ok(Ok(ev)) = tokio::time::timeout_at(until, el.poll()).await {
            if matches!(ev, Event::Outgoing(Outgoing::Disconnect)) {
                break;
            }
        }
    }
    outcome
}
