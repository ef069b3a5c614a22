//! Other front doors onto the same queues, each a thin translation onto the
//! broker: an SQS-compatible API ([`sqs`]), the memcached text protocol
//! ([`memcached`]), syslog ([`syslog`]) on listeners of their own, and collectd's
//! `write_http` ([`collectd`]) on the HTTP port. Each is off unless its port is
//! given, answers to the same access rules, and is counted in the same metrics
//! (the store is metered underneath every door).

mod access;
pub mod collectd;
mod listen;
pub mod memcached;
pub mod sqs;
pub mod syslog;

use std::net::SocketAddr;

use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;

use crate::config::DoorPorts;
use crate::server::{self, Serving};

/// The listeners of the front doors that are on.
#[derive(Debug, Default)]
pub struct Doors {
    /// The SQS-compatible API (HTTP).
    pub sqs: Option<TcpListener>,
    /// The memcached text protocol.
    pub memcached: Option<TcpListener>,
    /// syslog, over TCP and UDP on the same port number.
    pub syslog: Option<(TcpListener, UdpSocket)>,
}

/// Where the front doors that are on listen.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DoorAddrs {
    /// The SQS-compatible API.
    pub sqs: Option<SocketAddr>,
    /// The memcached text protocol.
    pub memcached: Option<SocketAddr>,
    /// syslog (TCP and UDP).
    pub syslog: Option<SocketAddr>,
}

/// A front door that cannot listen.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for {door} on {host}:{port}: {source}")]
pub struct BindError {
    /// Which door.
    pub door: &'static str,
    /// The interface.
    pub host: String,
    /// The port asked for.
    pub port: u16,
    /// Why not.
    pub source: std::io::Error,
}

impl Doors {
    /// Listens on `host` for each door whose port is given (0 picks a free one;
    /// syslog's UDP socket then takes the port its TCP listener got).
    pub async fn bind(host: &str, ports: &DoorPorts) -> Result<Doors, BindError> {
        let failed = |door, port| {
            move |source| BindError {
                door,
                host: host.to_owned(),
                port,
                source,
            }
        };
        let mut doors = Doors::default();
        if let Some(port) = ports.sqs {
            doors.sqs = Some(
                server::bind(host, port)
                    .await
                    .map_err(failed("SQS", port))?,
            );
        }
        if let Some(port) = ports.memcached {
            let listener = server::bind(host, port)
                .await
                .map_err(failed("memcached", port))?;
            doors.memcached = Some(listener);
        }
        if let Some(port) = ports.syslog {
            let tcp = server::bind(host, port)
                .await
                .map_err(failed("syslog (TCP)", port))?;
            let bound = tcp.local_addr().map_err(failed("syslog (TCP)", port))?;
            let udp = UdpSocket::bind(bound)
                .await
                .map_err(failed("syslog (UDP)", bound.port()))?;
            doors.syslog = Some((tcp, udp));
        }
        Ok(doors)
    }

    /// Where each door listens.
    pub fn addrs(&self) -> DoorAddrs {
        DoorAddrs {
            sqs: self.sqs.as_ref().and_then(|l| l.local_addr().ok()),
            memcached: self.memcached.as_ref().and_then(|l| l.local_addr().ok()),
            syslog: self.syslog.as_ref().and_then(|(l, _)| l.local_addr().ok()),
        }
    }

    /// Starts serving every door; each task ends once shutdown has begun and
    /// its listener is closed (its connections are waited for separately).
    pub(crate) fn spawn(self, serving: &Serving) -> Vec<JoinHandle<()>> {
        let mut tasks = Vec::new();
        if let Some(listener) = self.sqs {
            let router = sqs::router(serving.state.clone());
            tasks.push(tokio::spawn(server::accept(
                listener,
                router,
                false,
                serving.clone(),
            )));
        }
        if let Some(listener) = self.memcached {
            tasks.push(tokio::spawn(memcached::run(listener, serving.clone())));
        }
        if let Some((tcp, udp)) = self.syslog {
            tasks.push(tokio::spawn(syslog::run(tcp, udp, serving.clone())));
        }
        tasks
    }
}
