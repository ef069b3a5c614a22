//! restmq: a message queue whose transport is plain HTTP.
//!
//! It keeps the HTTP contract of the original RestMQ (Python, Redis): queues are
//! created by the first POST, drained by GET, and stored durably in an embedded
//! store. `main` and the tests start the server the same way: [`open`] then
//! [`serve`].

// Module docs describe the internals for those working on restmq and link to
// private items; `cargo doc --document-private-items` resolves those links.
#![allow(rustdoc::private_intra_doc_links)]

pub mod acl;
pub mod adapters;
pub mod bench;
pub mod broker;
pub mod cli;
mod client;
pub mod config;
pub mod error;
pub mod http;
mod json;
pub mod metrics;
mod progress;
pub mod server;
pub mod store;
pub mod tls;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;

use crate::broker::Broker;
use crate::config::{Config, Storage};
use crate::store::{EmbeddedOptions, EmbeddedStore, RedisStore};

/// What every request handler shares. Cheap to clone: handlers and
/// middleware clone it per request, so it is one reference count; its fields
/// are read through [`Shared`].
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The fields of [`AppState`].
pub struct Shared {
    /// The queues.
    pub broker: Broker,
    /// Largest request body accepted, in bytes.
    pub max_body: usize,
    /// Longest long poll, in seconds.
    pub max_wait: u64,
    /// Who may do what.
    pub access: Arc<acl::Access>,
    /// Counters and latencies, for `/metrics`.
    pub metrics: Arc<metrics::Metrics>,
    /// Time a client has to send a request's body once its head arrived.
    pub body_timeout: Duration,
    /// How connections are accepted: TLS, timeouts, limits.
    pub server: Arc<server::Settings>,
}

/// Why a server could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The store cannot be opened.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The access rules cannot be read.
    #[error(transparent)]
    Access(#[from] acl::AccessError),
    /// The TLS certificate or key cannot be used.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// Opens the store described by `config` and builds the server's state. The
/// Redis store connects lazily: it opens even while Redis is unreachable.
/// The TLS identity, if any, is read and checked first, before the store opens.
pub async fn open(config: &Config) -> Result<AppState, OpenError> {
    let tls = config.tls.as_ref().map(tls::load).transpose()?;
    let server = Arc::new(server::Settings {
        tls,
        header_timeout: config.header_timeout,
        max_connections: config.max_connections,
    });
    let access = Arc::new(acl::Access::load(
        config.acl.as_deref(),
        config.trusted_proxies.as_deref(),
    )?);
    if access.file().is_some() {
        tokio::spawn(acl::Access::watch(Arc::downgrade(&access)));
    }
    let store: Arc<dyn store::Store> = match &config.storage {
        Storage::Embedded => {
            let dir = config.data_dir.clone();
            let options = EmbeddedOptions {
                fsync: config.fsync,
                cache_bytes: config.cache_bytes,
            };
            let clock = Arc::new(store::SystemClock);
            let store =
                tokio::task::spawn_blocking(move || EmbeddedStore::open(&dir, options, clock))
                    .await
                    .map_err(|e| {
                        store::StoreError::Unavailable(format!("opening the store failed: {e}"))
                    })??;
            Arc::new(store)
        }
        Storage::Redis(target) => Arc::new(RedisStore::open(
            target,
            &config.redis,
            Arc::new(store::SystemClock),
        )?),
    };
    let metrics = Arc::new(metrics::Metrics::default());
    let store = Arc::new(store::MeteredStore::new(store, metrics.clone()));
    Ok(AppState(Arc::new(Shared {
        broker: Broker::new(store, config.streams),
        metrics,
        max_body: config.max_body,
        max_wait: config.max_wait,
        access,
        body_timeout: config.body_timeout,
        server,
    })))
}

/// The HTTP application: every route over `state`.
pub fn app(state: AppState) -> Router {
    http::router(state)
}

/// Serves `listener` until `shutdown` resolves, then shuts down without losing
/// anything; see [`server::run`].
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    server::run(listener, state, shutdown).await
}

/// Like [`serve`], with the other front doors in `doors` (see
/// [`adapters::Doors::bind`]); see [`server::run_with`].
pub async fn serve_with(
    listener: TcpListener,
    doors: adapters::Doors,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    server::run_with(listener, doors, state, shutdown).await
}
