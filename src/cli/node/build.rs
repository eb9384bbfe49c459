//! Building a node's parts from its configuration: directories opened and recovered, listeners
//! bound, components constructed. Nothing runs yet ([`super::run`] does that).

use std::sync::Arc;

use tokio::net::{TcpListener, UdpSocket};

use super::config::{IngestConfig, StoreConfig};
use crate::http;
use crate::ingest::ingester::Door;
use crate::ingest::protocols::http::Push;
use crate::ingest::protocols::writer::PushWriter;
use crate::ingest::{IngestApi, IngestLog, Ingester, Modality, Rotation};
use crate::metrics::Metrics;
use crate::record::FramerConfig;
use crate::store::{CompactConfig, ConsumerConfig, StoreApi, StoreLog};

/// The ingest half of a node, built and bound but not yet running.
pub struct IngestParts {
    pub(super) ingester: Arc<Ingester>,
    pub(super) api: Arc<IngestApi>,
    pub(super) log: Arc<IngestLog>,
    pub(super) listeners: Vec<(Modality, TcpListener)>,
    pub(super) push: Arc<Push>,
    pub(super) syslog_tcp: Option<TcpListener>,
    pub(super) syslog_udp: Option<UdpSocket>,
    pub(super) limits: crate::ingest::ingester::ConnLimits,
}

/// Open the ingest directory and bind the fast, durable, bulk and syslog listeners.
pub async fn build_ingest(
    cfg: &IngestConfig,
    security: &SecurityParts,
    metrics: &Arc<Metrics>,
    budget: &Arc<crate::memory::Budget>,
) -> anyhow::Result<IngestParts> {
    let log = Arc::new(IngestLog::open(&cfg.path)?);
    let mut listeners = Vec::new();
    for (modality, addr) in [
        (Modality::Fast, &cfg.fast),
        (Modality::Durable, &cfg.durable),
        (Modality::Bulk, &cfg.bulk),
    ] {
        listeners.push((
            modality,
            http::bind(modality.name(), &addr.listen_addr()).await?,
        ));
    }
    let syslog_tcp = match &cfg.syslog_tcp {
        Some(a) => Some(http::bind("syslog-tcp", &a.listen_addr()).await?),
        None => None,
    };
    let syslog_udp = match &cfg.syslog_udp {
        // Datagrams carry no credentials: with tokens or client certificates on, syslog over
        // UDP is served only when asked for by name.
        Some(_) if security.guard.is_on() && !cfg.syslog_udp_explicit => {
            tracing::info!(
                "syslog over UDP is off: it cannot be authenticated (give -ingest.syslog-udp to serve it anyway)"
            );
            None
        }
        Some(a) => {
            if security.guard.is_on() {
                tracing::warn!(addr = %a.listen_addr(), "syslog over UDP takes records from anyone who can reach it");
            }
            let socket = UdpSocket::bind(a.listen_addr())
                .await
                .map_err(|e| anyhow::anyhow!("-ingest.syslog-udp {}: {e}", a.listen_addr()))?;
            tracing::info!(name = "syslog-udp", addr = %socket.local_addr()?, "listening");
            Some(socket)
        }
        None => None,
    };
    let rotation = Rotation {
        flush_size: cfg.flush_size,
        flush_age: cfg.flush_age,
    };
    let sync = crate::ingest::sync::SyncGroup::start()?;
    let push = Push::new(
        cfg.push.clone(),
        PushWriter::start(
            Arc::clone(&log),
            rotation,
            sync.clone(),
            Arc::clone(metrics),
        )?,
        Arc::clone(metrics),
        Arc::clone(budget),
    );
    let bulk = Arc::new(crate::ingest::ingester::Waiters::default());
    let door = Arc::new(Door::new(
        security.server.as_ref().map(|s| Arc::clone(&s.ingest)),
        Arc::clone(&security.guard),
        metrics,
    ));
    let ingester = Arc::new(
        Ingester::new(
            Arc::clone(&log),
            FramerConfig {
                topic: cfg.topic.clone(),
                mode: cfg.topic_mode,
                max_record_size: cfg.max_record_size,
            },
            rotation,
            cfg.limits,
            Arc::clone(metrics),
            sync,
            Arc::clone(&bulk),
        )
        .secured(Arc::clone(&door))
        .budgeted(Arc::clone(budget))
        .bounded(cfg.bounds),
    );
    let api = IngestApi::new(
        Arc::clone(&log),
        cfg.pending_timeout,
        Arc::clone(metrics),
        bulk,
    );
    Ok(IngestParts {
        ingester,
        api,
        log,
        listeners,
        push,
        syslog_tcp,
        syslog_udp,
        limits: cfg.limits,
    })
}

/// The store half of a node.
pub struct StoreParts {
    pub(super) log: Arc<StoreLog>,
    pub(super) max_queries: usize,
    pub(super) max_streams: usize,
    pub(super) api: Arc<StoreApi>,
    pub(super) consumers: usize,
    pub(super) consumer: ConsumerConfig,
    pub(super) lifecycle: CompactConfig,
    pub(super) retention: Arc<crate::store::retention::Retention>,
}

/// Open (and recover) the store directory.
pub fn build_store(cfg: &StoreConfig, metrics: &Arc<Metrics>) -> anyhow::Result<StoreParts> {
    let log = Arc::new(StoreLog::open(&cfg.path)?);
    metrics.store_quarantined_files.inc_by(
        log.quarantined_at_start
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    let retention = Arc::new(cfg.retention.clone());
    let api = StoreApi::with_retention(
        Arc::clone(&log),
        Arc::clone(metrics),
        Arc::clone(&retention),
    );
    Ok(StoreParts {
        log,
        max_queries: cfg.max_queries,
        max_streams: cfg.max_streams,
        api,
        consumers: cfg.consumers,
        retention: Arc::clone(&retention),
        lifecycle: CompactConfig {
            target_size: cfg.target_size,
            settle: cfg.settle,
            retention: Arc::clone(&retention),
            purge: cfg.purge,
            format: cfg.format,
            compress_after: cfg.compress_after,
            compress: crate::segment::CompressConfig::default(),
        },
        consumer: ConsumerConfig {
            target_size: cfg.target_size,
            target_age: cfg.target_age,
            delay: cfg.delay,
            replication_factor: cfg.replication_factor,
        },
    })
}

/// What protects a running node, built from its flags.
pub struct SecurityParts {
    /// The listeners' TLS configurations (`-tls.cert-file`).
    pub(super) server: Option<crate::security::tls::ServerTls>,
    /// What the node's own calls to its peers use.
    pub(super) client: http::ClientSecurity,
    /// The access rules of the API and the ingest ports.
    pub(super) guard: Arc<crate::security::auth::Guard>,
    /// The gossip's protection.
    pub(super) gossip: crate::cluster::gossip::Protection,
    /// The files looked at for changes.
    pub(super) reloader: Arc<crate::security::Reloader>,
}

/// Load the certificates, tokens and cluster keys (each checked now: a bad file stops the
/// start with one line naming its flag).
pub fn build_security(
    cfg: &super::config::SecurityConfig,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<SecurityParts> {
    use crate::security::{Reloader, auth, key, tls};
    let reloader = Arc::new(Reloader::default());
    let identity = cfg.tls.identity()?;
    if let Some(id) = &identity {
        reloader.watch(Arc::clone(id) as _);
    }
    let tokens = match &cfg.token_file {
        Some(p) => {
            let t = auth::Tokens::open(p)?;
            reloader.watch(Arc::clone(&t) as _);
            Some(t)
        }
        None => None,
    };
    let server = match &identity {
        Some(id) => Some(tls::ServerTls::new(
            Arc::clone(id),
            cfg.tls.client_ca.as_deref(),
            tokens.is_some(),
        )?),
        None => None,
    };
    let keyring = match &cfg.cluster_key {
        Some(p) => {
            let k = key::Keyring::open(p)?;
            reloader.watch(Arc::clone(&k) as _);
            Some(k)
        }
        None => None,
    };
    let client = http::ClientSecurity {
        tls: Some(tls::client_config(
            cfg.tls.ca.as_deref(),
            identity,
            cfg.server_name.as_deref(),
        )?),
        token: cfg.token.clone(),
    };
    Ok(SecurityParts {
        guard: Arc::new(auth::Guard {
            tokens,
            client_certs: cfg.tls.client_ca.is_some(),
            protect_metrics: cfg.protect_metrics,
        }),
        gossip: crate::cluster::gossip::Protection {
            tls: server.is_some(),
            keyring,
            rejected: metrics.cluster_rejected_packets.clone(),
        },
        server,
        client,
        reloader,
    })
}
