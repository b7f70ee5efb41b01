//! One-shot broker check for `facegate doctor`: TCP + TLS handshake with the pinned CA and the
//! client certificate, then an MQTT CONNECT answered by CONNACK. Uses its own client id
//! (`<device>-doctor`) and a clean session, so it never kicks the running service's session.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, TlsConfiguration, Transport};

use super::{MqttConfig, MqttError, Result};

/// Connect, wait for CONNACK, disconnect; returns the time it took in milliseconds.
pub async fn probe(cfg: &MqttConfig, tls: rustls::ClientConfig, timeout: Duration) -> Result<f64> {
    let mut o = MqttOptions::new(format!("{}-doctor", cfg.device), cfg.host.clone(), cfg.port);
    o.set_clean_session(true)
        .set_keep_alive(Duration::from_secs(5))
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls),
        )));
    let (client, mut el) = AsyncClient::new(o, 4);
    let t = Instant::now();
    let outcome = tokio::time::timeout(timeout, async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(MqttError::Client(e.to_string())),
            }
        }
    })
    .await
    .map_err(|_| MqttError::Client(format!("no CONNACK within {timeout:?}")))?;
    outcome?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(500), el.poll()).await;
    Ok(ms)
}
