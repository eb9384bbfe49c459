//! What the server modes share: their flags, the ingest and store builders, and the run group
//! that serves everything until SIGINT/SIGTERM and then shuts down in order.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use axum::Router;
use axum::routing::get;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::addr::parse_addr;
use super::flags::{Args, Flag, Kind, flag};
use super::node::run::RunGroup;
use crate::cluster::gossip::Gossip;
use crate::cluster::{Membership, Peers, Role, advertise, state_json};
use crate::http;
use crate::ingest::conn::ConnLimits;
use crate::ingest::{IngestApi, IngestLog, Ingester, Modality, Rotation, conn};
use crate::metrics::{Labels, Metrics};
use crate::record::{FramerConfig, TopicMode, is_valid_topic};
use crate::store::{
    CompactConfig, Compacter, Consumer, ConsumerConfig, Gateway, StoreApi, StoreLog,
};

/// Default API (HTTP) port.
pub const API_PORT: u16 = 7650;
/// Default fast ingest port.
pub const FAST_PORT: u16 = 7651;
/// Default durable ingest port.
pub const DURABLE_PORT: u16 = 7652;
/// Default bulk ingest port.
pub const BULK_PORT: u16 = 7653;
/// Default cluster port.
pub const CLUSTER_PORT: u16 = 7659;

/// Flags every server mode has.
pub fn common_flags(role: &str) -> Vec<Flag> {
    let mut flags = super::logging::flags();
    flags.extend([
        flag(
            "api",
            Kind::Str,
            "tcp://0.0.0.0:7650",
            if role == "ingeststore" {
                "listen address for ingest and store APIs"
            } else {
                "listen address for the HTTP API"
            },
        ),
        flag(
            "cluster",
            Kind::Str,
            "tcp://0.0.0.0:7659",
            "listen address for cluster",
        ),
        flag(
            "cluster.advertise-addr",
            Kind::Str,
            "",
            "optional, explicit address to advertise in cluster",
        ),
        flag(
            "peer",
            Kind::List,
            "",
            "cluster peer host:port (repeatable)",
        ),
        flag(
            "filesystem",
            Kind::Str,
            "real",
            "real (only real is supported)",
        ),
        flag(
            "shutdown-timeout",
            Kind::Duration,
            "5s",
            "how long a graceful shutdown may take",
        ),
    ]);
    flags
}

/// The ingest flags; `ns` is `""` for `ingest` and `"ingest."` for `ingeststore` (topic flags).
pub fn ingest_flags(ns: &str) -> Vec<Flag> {
    let (mode, topic) = if ns.is_empty() {
        ("topic-mode", "topic")
    } else {
        ("ingest.topic-mode", "ingest.topic")
    };
    vec![
        flag(mode, Kind::Str, "static", "static, dynamic"),
        flag(topic, Kind::Str, "default", "static topic name"),
        flag(
            "ingest.fast",
            Kind::Str,
            "tcp://0.0.0.0:7651",
            "listen address for fast (async) writes",
        ),
        flag(
            "ingest.durable",
            Kind::Str,
            "tcp://0.0.0.0:7652",
            "listen address for durable (sync) writes",
        ),
        flag(
            "ingest.bulk",
            Kind::Str,
            "tcp://0.0.0.0:7653",
            "listen address for bulk (whole-segment) writes",
        ),
        flag(
            "ingest.path",
            Kind::Str,
            "data/ingest",
            "path holding segment files for ingest tier",
        ),
        flag(
            "ingest.segment-flush-size",
            Kind::Int,
            "16777216",
            "flush segments after they grow to this size",
        ),
        flag(
            "ingest.segment-flush-age",
            Kind::Duration,
            "3s",
            "flush segments after they are active for this long",
        ),
        flag(
            "ingest.segment-pending-timeout",
            Kind::Duration,
            "1m",
            "claimed but uncommitted pending segments are failed after this long",
        ),
        flag(
            "ingest.max-connections",
            Kind::Int,
            "10000",
            "fast, durable and bulk connections served at once; more are refused",
        ),
        flag(
            "ingest.idle-timeout",
            Kind::Duration,
            "1h",
            "acknowledge and close a fast or durable connection idle this long (0 never)",
        ),
        flag(
            "ingest.max-record-size",
            Kind::Int,
            "1048576",
            "longer input lines are split into records of this many payload bytes",
        ),
    ]
}

/// The other spelling of the topic flags in each mode.
pub fn topic_aliases(ns: &str) -> Vec<(&'static str, &'static str)> {
    if ns.is_empty() {
        vec![
            ("ingest.topic-mode", "topic-mode"),
            ("ingest.topic", "topic"),
        ]
    } else {
        vec![
            ("topic-mode", "ingest.topic-mode"),
            ("topic", "ingest.topic"),
        ]
    }
}

/// The store flags; `rf_default` and `rf_help` differ in `ingeststore`.
pub fn store_flags(rf_default: &'static str, rf_help: &'static str) -> Vec<Flag> {
    vec![
        flag(
            "store.path",
            Kind::Str,
            "data/store",
            "path holding segment files for storage tier",
        ),
        flag(
            "store.segment-consumers",
            Kind::Int,
            "1",
            "concurrent segment consumers",
        ),
        flag(
            "store.segment-target-size",
            Kind::Int,
            "134217728",
            "try to keep store segments about this size",
        ),
        flag(
            "store.segment-target-age",
            Kind::Duration,
            "3s",
            "replicate once the aggregate segment is this old",
        ),
        flag(
            "store.segment-delay",
            Kind::Duration,
            "100ms",
            "consumer pause when nothing is flushed",
        ),
        flag(
            "store.segment-buffer-size",
            Kind::Int,
            "1048576",
            "accepted for compatibility and ignored",
        ),
        flag(
            "store.segment-replication-factor",
            Kind::Int,
            rf_default,
            rf_help,
        ),
        flag(
            "store.segment-retain",
            Kind::Duration,
            "168h",
            "retention period for segment files",
        ),
        flag(
            "store.segment-purge",
            Kind::Duration,
            "24h",
            "purge deleted segment files after this long",
        ),
        flag(
            "api.max-queries",
            Kind::Int,
            "32",
            "queries and hits answered at once (and as many node-local ones); more get 503",
        ),
        flag(
            "api.max-streams",
            Kind::Int,
            "256",
            "live streams served at once (and as many node-local ones); more get 503",
        ),
        flag("ui.local", Kind::Bool, "", "ignored: the UI is embedded"),
    ]
}

/// The ingest half of a node, built and bound but not yet running.
pub struct IngestParts {
    ingester: Arc<Ingester>,
    api: Arc<IngestApi>,
    log: Arc<IngestLog>,
    listeners: Vec<(Modality, TcpListener)>,
}

/// Open the ingest directory and bind the fast, durable and bulk listeners.
pub async fn build_ingest(
    args: &Args,
    ns: &str,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<IngestParts> {
    let (mode_flag, topic_flag) = if ns.is_empty() {
        ("topic-mode", "topic")
    } else {
        ("ingest.topic-mode", "ingest.topic")
    };
    let mode: TopicMode = args
        .str(mode_flag)
        .parse()
        .map_err(|e: String| anyhow::anyhow!("-{mode_flag}: {e}"))?;
    let topic = args.str(topic_flag);
    if !is_valid_topic(topic.as_bytes()) {
        bail!("-{topic_flag}: topic name {topic:?} invalid");
    }
    let max_record_size = positive(args, "ingest.max-record-size")?;
    let flush_size = positive(args, "ingest.segment-flush-size")?;
    let path = PathBuf::from(args.str("ingest.path"));
    let log = Arc::new(IngestLog::open(&path)?);
    let mut listeners = Vec::new();
    for (name, modality, port) in [
        ("ingest.fast", Modality::Fast, FAST_PORT),
        ("ingest.durable", Modality::Durable, DURABLE_PORT),
        ("ingest.bulk", Modality::Bulk, BULK_PORT),
    ] {
        let addr =
            parse_addr(&args.str(name), port).map_err(|e| anyhow::anyhow!("-{name}: {e}"))?;
        listeners.push((
            modality,
            http::bind(modality.name(), &addr.listen_addr()).await?,
        ));
    }
    let bulk = Arc::new(crate::ingest::bulk::Waiters::default());
    let idle = args.duration("ingest.idle-timeout");
    let ingester = Arc::new(Ingester::new(
        Arc::clone(&log),
        FramerConfig {
            topic,
            mode,
            max_record_size: max_record_size as usize,
        },
        Rotation {
            flush_size,
            flush_age: args.duration("ingest.segment-flush-age"),
        },
        ConnLimits {
            max_connections: positive(args, "ingest.max-connections")? as usize,
            idle_timeout: (!idle.is_zero()).then_some(idle),
        },
        Arc::clone(metrics),
        crate::ingest::sync::SyncGroup::start()?,
        Arc::clone(&bulk),
    ));
    let api = IngestApi::new(
        Arc::clone(&log),
        args.duration("ingest.segment-pending-timeout"),
        Arc::clone(metrics),
        bulk,
    );
    Ok(IngestParts {
        ingester,
        api,
        log,
        listeners,
    })
}

fn positive(args: &Args, name: &str) -> anyhow::Result<u64> {
    let v = args.int(name);
    if v <= 0 {
        bail!("-{name}: must be positive, got {v}");
    }
    Ok(v as u64)
}

/// The store half of a node.
pub struct StoreParts {
    log: Arc<StoreLog>,
    max_queries: usize,
    max_streams: usize,
    api: Arc<StoreApi>,
    consumers: usize,
    consumer: ConsumerConfig,
    lifecycle: CompactConfig,
}

/// Open the store directory and check the store flags.
pub fn build_store(args: &Args, rf: i64, metrics: &Arc<Metrics>) -> anyhow::Result<StoreParts> {
    if rf <= 0 {
        bail!("-store.segment-replication-factor: must be positive, got {rf}");
    }
    let consumers = positive(args, "store.segment-consumers")? as usize;
    let target_size = positive(args, "store.segment-target-size")?;
    let path = PathBuf::from(args.str("store.path"));
    let log = Arc::new(StoreLog::open(&path)?);
    metrics.store_quarantined_files.inc_by(
        log.quarantined_at_start
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    let api = StoreApi::new(Arc::clone(&log), Arc::clone(metrics));
    Ok(StoreParts {
        log,
        max_queries: positive(args, "api.max-queries")? as usize,
        max_streams: positive(args, "api.max-streams")? as usize,
        api,
        consumers,
        lifecycle: CompactConfig {
            target_size,
            retain: args.duration("store.segment-retain"),
            purge: args.duration("store.segment-purge"),
        },
        consumer: ConsumerConfig {
            target_size,
            target_age: args.duration("store.segment-target-age"),
            delay: args.duration("store.segment-delay"),
            replication_factor: rf as usize,
        },
    })
}

/// Checks every server mode makes before building anything.
pub fn check_common(args: &Args) -> anyhow::Result<()> {
    if args.str("filesystem") != "real" {
        bail!(
            "-filesystem: {:?} is not supported; only \"real\"",
            args.str("filesystem")
        );
    }
    parse_addr(&args.str("cluster"), CLUSTER_PORT).map_err(|e| anyhow::anyhow!("-cluster: {e}"))?;
    for (name, port) in [
        ("ingest.fast", FAST_PORT),
        ("ingest.durable", DURABLE_PORT),
        ("ingest.bulk", BULK_PORT),
    ] {
        if let Some(value) = args.get(name) {
            parse_addr(value, port).map_err(|e| anyhow::anyhow!("-{name}: {e}"))?;
        }
    }
    for p in args.list("peer") {
        parse_addr(&p, CLUSTER_PORT).map_err(|e| anyhow::anyhow!("-peer: {e}"))?;
    }
    Ok(())
}

/// Where the cluster listens and what it advertises, checked from the flags.
struct ClusterPlan {
    bind: String,
    bind_host: String,
    advertise_host: String,
    advertise_port: Option<u16>,
    peers: Vec<SocketAddr>,
    peer_names: Vec<String>,
    /// `(host, port)` of each `-peer`, resolved again while the node is alone.
    peer_hosts: Vec<(String, u16)>,
}

fn cluster_plan(args: &Args) -> anyhow::Result<ClusterPlan> {
    let bind = parse_addr(&args.str("cluster"), CLUSTER_PORT)
        .map_err(|e| anyhow::anyhow!("-cluster: {e}"))?;
    let (advertise_host, advertise_port) = match args.str("cluster.advertise-addr").as_str() {
        "" => (String::new(), None),
        a => {
            let port_given = a
                .rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok());
            let adv = parse_addr(a, bind.port)
                .map_err(|e| anyhow::anyhow!("-cluster.advertise-addr: {e}"))?;
            (adv.host, port_given.then_some(adv.port))
        }
    };
    // A peer without a port uses this node's cluster port (the original's rule), 7659 when
    // that is 0.
    let default_port = if bind.port == 0 {
        CLUSTER_PORT
    } else {
        bind.port
    };
    let mut peers = Vec::new();
    let mut peer_hosts = Vec::new();
    let peer_names = args.list("peer");
    for p in &peer_names {
        let a = parse_addr(p, default_port).map_err(|e| anyhow::anyhow!("-peer: {e}"))?;
        let host = if a.host.is_empty() {
            "127.0.0.1"
        } else {
            a.host.as_str()
        };
        // A name may stand for several nodes (a Kubernetes headless Service): join through
        // all of them. One that does not resolve yet (DNS lagging behind a new pod) is retried
        // while the node is alone.
        match std::net::ToSocketAddrs::to_socket_addrs(&(host, a.port)) {
            Ok(addrs) => peers.extend(addrs),
            Err(e) => tracing::warn!(peer = %p, error = %e, "cannot resolve -peer yet; will retry"),
        }
        peer_hosts.push((host.to_string(), a.port));
    }
    Ok(ClusterPlan {
        bind: bind.listen_addr(),
        bind_host: bind.host,
        advertise_host,
        advertise_port,
        peers,
        peer_hosts,
        peer_names,
    })
}

/// Build a tokio runtime and run the node until SIGINT/SIGTERM.
pub fn run_node(
    role: Role,
    args: &Args,
    build: impl AsyncFnOnce(&Arc<Metrics>) -> anyhow::Result<(Option<IngestParts>, Option<StoreParts>)>,
) -> anyhow::Result<()> {
    // Every address is checked before anything is opened or bound.
    let api_addr =
        parse_addr(&args.str("api"), API_PORT).map_err(|e| anyhow::anyhow!("-api: {e}"))?;
    let cluster = cluster_plan(args)?;
    let advertise_ip = if cluster.peers.is_empty() && !cluster.peer_hosts.is_empty() {
        // No peer resolved yet: only an explicit address can be advertised.
        let explicit = [&cluster.advertise_host, &cluster.bind_host]
            .into_iter()
            .find(|h| !h.is_empty() && !advertise::is_unroutable(h));
        match explicit {
            Some(h) => advertise::resolve(h).map_err(anyhow::Error::msg)?,
            None => anyhow::bail!(
                "-peer {}: no address resolved, so the address to advertise is unknown; set -cluster.advertise-addr",
                cluster.peer_names.join(",")
            ),
        }
    } else {
        advertise::advertise_ip(&cluster.bind_host, &cluster.advertise_host, &cluster.peers)
            .map_err(anyhow::Error::msg)?
    };
    if advertise::has_nonlocal(&cluster.peer_names)
        && advertise::is_unroutable(&advertise_ip.to_string())
    {
        tracing::warn!(%advertise_ip, "this node advertises an address other hosts cannot reach; set -cluster.advertise-addr");
    }
    raise_open_files_limit();
    tame_the_allocator();
    // Connections are tasks on the workers; blocking work (file I/O, fsync, local searches)
    // runs on a bounded pool, so no client can make the node start threads without end.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let metrics = Metrics::new();
        let (ingest, store) = build(&metrics).await?;
        let api_listener = http::bind("api", &api_addr.listen_addr()).await?;
        let bound = api_listener.local_addr()?;
        // Others reach the API at the advertised IP, unless it is bound to one address.
        let api = if bound.ip().is_unspecified() {
            SocketAddr::new(advertise_ip, bound.port())
        } else {
            bound
        };
        let (all_tx, all_rx) = watch::channel(false);
        let (gossip, gossip_tasks) = Gossip::start(
            &cluster.bind,
            advertise_ip,
            cluster.advertise_port,
            role,
            api,
            crate::cluster::gossip::Seeds {
                addrs: cluster.peers.clone(),
                names: cluster.peer_hosts.clone(),
            },
            all_rx.clone(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("-cluster {}: {e}", cluster.bind))?;
        let mut parts = RunGroup::new();
        for (name, task) in gossip_tasks {
            parts.spawn(name, task);
        }
        let node = Node {
            role,
            shutdown_timeout: args.duration("shutdown-timeout"),
            metrics,
            gossip,
            all_tx,
            all_rx,
        };
        node.serve(api_listener, ingest, store, parts).await
    })
}

/// Keep the allocator from holding on to memory a flood of connections used: at most a few
/// malloc arenas (glibc makes up to 8 per core, one per busy thread, and a freed buffer stays in
/// the arena of the thread that freed it), and free pages handed back to the kernel every 10 s.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tame_the_allocator() {
    // SAFETY: mallopt is called before any thread but this one exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
    std::thread::Builder::new()
        .name("malloc-trim".into())
        .spawn(|| {
            loop {
                std::thread::sleep(Duration::from_secs(10));
                // SAFETY: malloc_trim only releases free memory.
                unsafe {
                    libc::malloc_trim(0);
                }
            }
        })
        .ok();
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tame_the_allocator() {}

/// Threads the runtime may start for blocking work.
const MAX_BLOCKING_THREADS: usize = 40;

/// Raise the soft limit on open files to the hard one, as Go's runtime does: every ingest
/// connection is a file descriptor, and soft limits of 1024 are common.
fn raise_open_files_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let wanted = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 {
                tracing::debug!("could not raise the open files limit");
            }
        }
    }
}

/// A node's shared pieces while it runs.
struct Node {
    role: Role,
    shutdown_timeout: Duration,
    metrics: Arc<Metrics>,
    gossip: Gossip,
    /// The last shutdown phase: everything but the ingest listeners.
    all_tx: watch::Sender<bool>,
    all_rx: watch::Receiver<bool>,
}

impl Node {
    async fn serve(
        self,
        api_listener: TcpListener,
        ingest: Option<IngestParts>,
        store: Option<StoreParts>,
        mut tasks: RunGroup,
    ) -> anyhow::Result<()> {
        let role_name = self.role.name();
        let peers: Arc<dyn Peers> = Arc::new(self.gossip.clone());
        // The first shutdown phase stops the ingest listeners.
        let (tcp_tx, tcp_rx) = watch::channel(false);
        let all_rx = self.all_rx.clone();
        let gossip = self.gossip.clone();
        let state = move || {
            let g = gossip.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/json; charset=utf-8",
                    )],
                    state_json(&g.me(), &g.members()),
                )
            }
        };
        let mut router = Router::new().merge(http::common_routes(
            role_name,
            Arc::clone(&self.metrics),
            tcp_rx.clone(),
            Some(tasks.states()),
        ));
        {
            let (gossip, metrics) = (self.gossip.clone(), Arc::downgrade(&self.metrics));
            self.metrics.on_scrape(move || {
                if let Some(m) = metrics.upgrade() {
                    m.cluster_size.set(gossip.members().len() as i64);
                }
            });
        }
        if let Some(parts) = &ingest {
            let (log, metrics) = (Arc::clone(&parts.log), Arc::downgrade(&self.metrics));
            self.metrics.on_scrape(move || {
                if let (Some(m), Ok(s)) = (metrics.upgrade(), log.stats()) {
                    let states = [
                        ("active", s.active.0, s.active.1),
                        ("flushed", s.flushed.0, s.flushed.1),
                        ("pending", s.pending.0, s.pending.1),
                        ("bad", s.bad.0, s.bad.1),
                    ];
                    set_state_gauges(&m.ingest_segments, &m.ingest_segment_bytes, states);
                }
            });
            router = router
                .merge(parts.api.router())
                .route("/ingest/_clusterstate", get(state.clone()));
            tasks.spawn(
                "ingest-timeouts",
                Arc::clone(&parts.api).run_timeouts(all_rx.clone()),
            );
        }
        let ingest = ingest.map(|mut parts| {
            for (modality, listener) in parts.listeners.drain(..) {
                tasks.spawn(
                    modality.name(),
                    conn::serve(
                        listener,
                        modality,
                        Arc::clone(&parts.ingester),
                        tcp_rx.clone(),
                    ),
                );
            }
            let ing = Arc::clone(&parts.ingester);
            tasks.spawn("ingest-sync", async move { ing.sync.ended().await });
            parts
        });
        if let Some(parts) = &store {
            let (log, metrics) = (Arc::clone(&parts.log), Arc::downgrade(&self.metrics));
            self.metrics.on_scrape(move || {
                if let (Some(m), Ok(states)) = (metrics.upgrade(), log.stats()) {
                    set_state_gauges(&m.store_segments, &m.store_segment_bytes, states);
                }
            });
            let gateway = Gateway::with_local(
                Arc::clone(&peers),
                http::client(),
                Arc::clone(&self.metrics),
                self.gossip.me().api_addr,
                Arc::clone(&parts.api),
            )
            .router();
            // Each class of work has its own bound, so a gateway's calls to its peers never
            // wait behind the user queries that made them.
            let (q, st) = (parts.max_queries, parts.max_streams);
            let gateway = http::limit(gateway, &["/store/query", "/store/hits"], q);
            let gateway = http::limit(gateway, &["/store/stream"], st);
            let local = http::limit(parts.api.router(), &["/store/_query", "/store/_hits"], q);
            let local = http::limit(local, &["/store/_stream"], st);
            router = router
                .merge(local)
                .merge(gateway)
                .route("/store/_clusterstate", get(state))
                .merge(crate::ui::router());
            let compacter = Compacter::new(
                Arc::clone(&parts.log),
                parts.lifecycle.clone(),
                Arc::clone(&self.metrics),
            );
            tasks.spawn("lifecycle", compacter.run(all_rx.clone()));
            for i in 0..parts.consumers {
                let consumer = Consumer::new(
                    Arc::clone(&parts.log),
                    Arc::clone(&peers),
                    http::client(),
                    parts.consumer.clone(),
                    Arc::clone(&self.metrics),
                )
                .with_local(self.gossip.me().api_addr, Arc::clone(&parts.api));
                tasks.spawn(&format!("consumer-{i}"), consumer.run(all_rx.clone()));
            }
        }
        let router = http::instrument(router, Arc::clone(&self.metrics));
        tasks.spawn("api", async move {
            if let Err(e) = http::serve(api_listener, router, all_rx).await {
                panic!("serving the API: {e}");
            }
        });
        tracing::info!(role = role_name, api = %self.gossip.me().api_addr, "started");

        // Run until a signal, or until a part ends on its own: then stop, and say why.
        let failed = tokio::select! {
            _ = wait_for_signal() => None,
            exit = tasks.next_exit() => exit,
        };
        match &failed {
            None => tracing::info!("shutting down"),
            Some(exit) => {
                let why = match &exit.result {
                    Ok(()) => "it returned".to_string(),
                    Err(e) => format!("it panicked: {e}"),
                };
                tracing::error!(part = %exit.name, why, "a part of the node ended unexpectedly; shutting down");
            }
        }
        // Everything below shares one deadline; the drain leaves room for the last steps.
        let start = tokio::time::Instant::now();
        let deadline = start + self.shutdown_timeout;
        let drain_until = deadline - (self.shutdown_timeout / 5).min(Duration::from_secs(1));
        let _ = tcp_tx.send(true);
        if let Some(parts) = &ingest {
            parts
                .ingester
                .stop(drain_until.saturating_duration_since(start))
                .await;
            // Keep serving /ingest/* so store nodes take what was flushed.
            while failed.is_none()
                && tokio::time::Instant::now() < drain_until
                && !peers.current(Role::Store).is_empty()
            {
                let log = Arc::clone(&parts.log);
                match tokio::task::spawn_blocking(move || log.stats()).await {
                    Ok(Ok(s)) if s.flushed.0 + s.pending.0 > 0 => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    _ => break,
                }
            }
        }
        let _ = tokio::time::timeout_at(deadline, self.gossip.leave()).await;
        let _ = self.all_tx.send(true);
        // The parts finish: consumers fail their work back, the API server ends once its
        // running requests have. (The sync thread stays until the ingester is gone.)
        let _ = tokio::time::timeout_at(
            deadline.max(tokio::time::Instant::now() + Duration::from_millis(200)),
            async {
                while tasks.running().iter().any(|p| *p != "ingest-sync") {
                    let Some(exit) = tasks.next_exit().await else {
                        break;
                    };
                    if let Err(e) = exit.result {
                        tracing::warn!(part = %exit.name, error = %e, "part failed while stopping");
                    }
                }
            },
        )
        .await;
        if let Some(parts) = &ingest {
            parts.api.fail_all().await;
        }
        match failed {
            None => {
                tracing::info!("stopped");
                Ok(())
            }
            Some(exit) => {
                tracing::info!("stopped");
                Err(anyhow::anyhow!(
                    "part {} ended unexpectedly{}",
                    exit.name,
                    exit.result
                        .err()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                ))
            }
        }
    }
}

/// Set the files and bytes gauges of each `(state, files, bytes)`.
fn set_state_gauges(
    files: &Family<Labels, Gauge>,
    bytes: &Family<Labels, Gauge>,
    states: impl IntoIterator<Item = (&'static str, u64, u64)>,
) {
    for (state, n, size) in states {
        files.get_or_create(&vec![("state", state)]).set(n as i64);
        bytes
            .get_or_create(&vec![("state", state)])
            .set(size as i64);
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
