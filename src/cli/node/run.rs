//! Running a node: the runtime, the run group, and the ordered shutdown.
//!
//! The run group: every long-running part of a node (listeners and their connections, the
//! HTTP server, consumers, the lifecycle task, gossip, the sync thread) runs under one
//! supervisor. A part that returns or panics before shutdown was asked for stops the node:
//! the group logs which part and why, the node runs its ordered shutdown and exits non-zero,
//! so systemd or Kubernetes restarts it. `/health` shows each part's state.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::routing::get;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::build::{IngestParts, StoreParts, build_ingest, build_security, build_store};
use super::config::NodeConfig;
use crate::cluster::gossip::Gossip;
use crate::cluster::{Membership, Peers, Role, advertise, state_json};
use crate::http;
use crate::ingest::conn;
use crate::ingest::protocols::syslog;
use crate::metrics::{Labels, Metrics};
use crate::store::{Compacter, Consumer, Gateway};
use crate::supervise::RunGroup;

/// Push requests (Loki, OTLP, Elasticsearch bulk, JSON lines) served at once; more get 503
/// with `Retry-After` (each may hold a body of up to `-ingest.max-push-size`).
const MAX_PUSH_REQUESTS: usize = 32;
/// The routes [`MAX_PUSH_REQUESTS`] applies to.
const PUSH_PATHS: &[&str] = &[
    "/loki/api/v1/push",
    "/insert/loki/api/v1/push",
    "/v1/logs",
    "/insert/opentelemetry/v1/logs",
    "/insert/jsonline",
    "/insert/elasticsearch/_bulk",
    "/insert/elasticsearch/{index}/_bulk",
];

/// An `ingeststore` node's own ingester, as its consumers reach it: in process, not over
/// HTTP (and TLS) to itself.
#[derive(Debug)]
struct OwnIngester(Arc<crate::ingest::IngestApi>);

impl crate::store::consume::LocalIngest for OwnIngester {
    fn next(&self) -> futures_util::future::BoxFuture<'_, std::io::Result<Option<String>>> {
        Box::pin(self.0.claim())
    }

    fn read(&self, id: &str) -> std::io::Result<std::fs::File> {
        self.0.open(id).map_err(refused)
    }

    fn finish<'a>(
        &'a self,
        id: &'a str,
        commit: bool,
    ) -> futures_util::future::BoxFuture<'a, std::io::Result<()>> {
        Box::pin(async move {
            let done = if commit {
                self.0.commit(id).await
            } else {
                self.0.fail(id).await
            };
            done.map_err(refused)
        })
    }
}

/// An ingester's refusal as the error an HTTP consumer would have seen.
fn refused((status, why): crate::ingest::api::Refused) -> std::io::Error {
    std::io::Error::other(format!("{status}: {}", why.trim()))
}

/// Build a tokio runtime and run the node until SIGINT/SIGTERM, or until a part fails.
pub fn run_node(cfg: NodeConfig) -> anyhow::Result<()> {
    let role = cfg.role;
    let cluster = &cfg.cluster;
    let advertise_ip = if cluster.peers.is_empty() && !cluster.peer_hosts.is_empty() {
        // No peer resolved yet: only an explicit address can be advertised.
        let explicit = [&cluster.advertise_host, &cluster.bind_host]
            .into_iter()
            .find(|h| !h.is_empty() && !advertise::is_unroutable(h));
        match explicit {
            Some(h) => advertise::resolve(h)?,
            None => anyhow::bail!(
                "-peer {}: no address resolved, so the address to advertise is unknown; set -cluster.advertise-addr",
                cluster.peer_names.join(",")
            ),
        }
    } else {
        advertise::advertise_ip(&cluster.bind_host, &cluster.advertise_host, &cluster.peers)?
    };
    if advertise::has_nonlocal(&cluster.peer_names)
        && advertise::is_unroutable(&advertise_ip.to_string())
    {
        tracing::warn!(%advertise_ip, "this node advertises an address other hosts cannot reach; set -cluster.advertise-addr");
    }
    raise_open_files_limit();
    let _trimming = crate::memory::tame_the_allocator();
    // Connections are tasks on the workers; blocking work (file I/O, fsync, local searches)
    // runs on a bounded pool, so no client can make the node start threads without end.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let metrics = Metrics::new();
        let security = build_security(&cfg.security, &metrics)?;
        let budget = crate::memory::Budget::new(cfg.memory_budget);
        let ingest = match &cfg.ingest {
            Some(c) => Some(build_ingest(c, &security, &metrics, &budget).await?),
            None => None,
        };
        let store = match &cfg.store {
            Some(c) => Some(build_store(c, &metrics)?),
            None => None,
        };
        let api_listener = http::bind("api", &cfg.api.listen_addr()).await?;
        let bound = api_listener.local_addr()?;
        if !bound.ip().is_loopback() && !security.guard.is_on() {
            // The internal API (`/ingest/next`, `/store/replicate`, ...) answers anyone then.
            tracing::warn!(
                api = %bound,
                "the API listens beyond loopback with no credentials configured: anyone who reaches it can read, take or write records; set -auth.token-file or -tls.client-ca-file"
            );
        }
        // Others reach the API at the advertised IP, unless it is bound to one address.
        let api = if bound.ip().is_unspecified() {
            SocketAddr::new(advertise_ip, bound.port())
        } else {
            bound
        };
        let (all_tx, all_rx) = watch::channel(false);
        let (gossip, gossip_tasks) = Gossip::start(
            &cluster.bind,
            (advertise_ip, cluster.advertise_port),
            role,
            api,
            crate::cluster::gossip::Seeds {
                addrs: cluster.peers.clone(),
                names: cluster.peer_hosts.clone(),
            },
            security.gossip.clone(),
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
            shutdown_timeout: cfg.shutdown_timeout,
            http: cfg.http,
            metrics,
            gossip,
            security,
            budget,
            all_tx,
            all_rx,
        };
        node.serve(api_listener, ingest, store, parts).await
    })
}

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
    http: http::Timeouts,
    metrics: Arc<Metrics>,
    gossip: Gossip,
    security: super::build::SecurityParts,
    /// What all clients together may make the node hold.
    budget: Arc<crate::memory::Budget>,
    /// The last shutdown phase: everything but the ingest listeners.
    all_tx: watch::Sender<bool>,
    all_rx: watch::Receiver<bool>,
}

/// The signals of a node's two shutdown phases, as its parts receive them.
#[derive(Clone)]
struct Phases {
    /// The first phase: the ingest listeners stop.
    tcp: watch::Receiver<bool>,
    /// The last phase: everything else.
    all: watch::Receiver<bool>,
}

impl Node {
    /// Serve until a signal or a part's end, then shut down in order.
    async fn serve(
        self,
        api_listener: TcpListener,
        ingest: Option<IngestParts>,
        store: Option<StoreParts>,
        mut tasks: RunGroup,
    ) -> anyhow::Result<()> {
        let peers: Arc<dyn Peers> = Arc::new(self.gossip.clone());
        let (tcp_tx, tcp_rx) = watch::channel(false);
        let phases = Phases {
            tcp: tcp_rx,
            all: self.all_rx.clone(),
        };
        self.report_on_scrape(ingest.as_ref(), store.as_ref());
        let mut router = Router::new().merge(http::common_routes(
            self.role.name(),
            Arc::clone(&self.metrics),
            phases.tcp.clone(),
            Some(tasks.states()),
        ));
        let ingest = ingest.map(|mut parts| {
            router = std::mem::take(&mut router)
                .merge(self.spawn_ingest(&mut parts, &mut tasks, &phases));
            parts
        });
        if let Some(parts) = &store {
            let own = ingest.as_ref().map(|p| Arc::clone(&p.api));
            router = router.merge(self.spawn_store(parts, own, &peers, &mut tasks, &phases));
        }
        self.spawn_api(api_listener, router, &mut tasks, &phases);
        tracing::info!(role = self.role.name(), api = %self.gossip.me().api_addr, "started");

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
        self.shut_down(tasks, failed.is_some(), ingest.as_ref(), tcp_tx, &peers)
            .await;
        tracing::info!("stopped");
        match failed {
            None => Ok(()),
            Some(exit) => Err(anyhow::anyhow!(
                "part {} ended unexpectedly{}",
                exit.name,
                exit.result
                    .err()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            )),
        }
    }

    /// `/store/_clusterstate` and `/ingest/_clusterstate`: the members as gossip sees them.
    fn cluster_state(&self) -> axum::routing::MethodRouter {
        let gossip = self.gossip.clone();
        get(move || {
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
        })
    }

    /// The gauges read when `/metrics` is scraped: the cluster's size, the memory budget, and
    /// the segment files
    /// and bytes of each state of the ingest and store logs.
    fn report_on_scrape(&self, ingest: Option<&IngestParts>, store: Option<&StoreParts>) {
        let (gossip, metrics) = (self.gossip.clone(), Arc::downgrade(&self.metrics));
        let budget = Arc::clone(&self.budget);
        self.metrics.on_scrape(move || {
            if let Some(m) = metrics.upgrade() {
                m.cluster_size.set(gossip.members().len() as i64);
                m.memory_budget_held.set(budget.held() as i64);
                m.memory_budget.set(budget.limit() as i64);
            }
        });
        if let Some(parts) = ingest {
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
        }
        if let Some(parts) = store {
            let (log, metrics) = (Arc::clone(&parts.log), Arc::downgrade(&self.metrics));
            self.metrics.on_scrape(move || {
                if let (Some(m), Ok(states)) = (metrics.upgrade(), log.stats()) {
                    set_state_gauges(&m.store_segments, &m.store_segment_bytes, states);
                    m.store_raw_segments.set(log.raw_segments() as i64);
                }
            });
        }
    }

    /// Start the ingester's parts (listeners, syslog, the sync and push writers, the
    /// timeouts of claimed segments); the routes of `/ingest/*` and the push endpoints.
    fn spawn_ingest(
        &self,
        parts: &mut IngestParts,
        tasks: &mut RunGroup,
        phases: &Phases,
    ) -> Router {
        tasks.spawn(
            "ingest-timeouts",
            Arc::clone(&parts.api).run_timeouts(phases.all.clone()),
        );
        for (modality, listener) in parts.listeners.drain(..) {
            tasks.spawn(
                modality.name(),
                conn::serve(
                    listener,
                    modality,
                    Arc::clone(&parts.ingester),
                    phases.tcp.clone(),
                ),
            );
        }
        let ing = Arc::clone(&parts.ingester);
        tasks.spawn("ingest-sync", async move { ing.sync.ended().await });
        let push = Arc::clone(&parts.push);
        tasks.spawn("push-writer", async move { push.writer().ended().await });
        if let Some(listener) = parts.syslog_tcp.take() {
            tasks.spawn(
                "syslog-tcp",
                syslog::serve_tcp(
                    listener,
                    Arc::clone(&parts.push),
                    parts.limits,
                    Arc::clone(parts.ingester.door()),
                    phases.tcp.clone(),
                ),
            );
        }
        if let Some(socket) = parts.syslog_udp.take() {
            tasks.spawn(
                "syslog-udp",
                syslog::serve_udp(socket, Arc::clone(&parts.push), phases.tcp.clone()),
            );
        }
        let push = http::limit(parts.push.router(), PUSH_PATHS, MAX_PUSH_REQUESTS);
        parts
            .api
            .router()
            .merge(push)
            .route("/ingest/_clusterstate", self.cluster_state())
    }

    /// Start the store's parts (the lifecycle, the consumers, pulling from `own_ingest` in
    /// process when this node ingests too); the routes of `/store/*` and the UI.
    fn spawn_store(
        &self,
        parts: &StoreParts,
        own_ingest: Option<Arc<crate::ingest::IngestApi>>,
        peers: &Arc<dyn Peers>,
        tasks: &mut RunGroup,
        phases: &Phases,
    ) -> Router {
        let me = self.gossip.me().api_addr;
        let compacter = Compacter::new(
            Arc::clone(&parts.log),
            parts.lifecycle.clone(),
            Arc::clone(&self.metrics),
        );
        tasks.spawn("lifecycle", compacter.run(phases.all.clone()));
        // Searches still running when the node stops give up, so their threads end with it.
        let (api, mut all) = (Arc::clone(&parts.api), phases.all.clone());
        tokio::spawn(async move {
            let _ = all.wait_for(|s| *s).await;
            api.stop_searches();
        });
        for i in 0..parts.consumers {
            let consumer = Consumer::new(
                Arc::clone(&parts.log),
                Arc::clone(peers),
                http::client_with(&self.security.client),
                parts.consumer.clone(),
                Arc::clone(&self.metrics),
            )
            .with_local(me.clone(), Arc::clone(&parts.api));
            let consumer = match &own_ingest {
                Some(api) => {
                    consumer.with_local_ingest(me.clone(), Arc::new(OwnIngester(Arc::clone(api))))
                }
                None => consumer,
            };
            tasks.spawn(&format!("consumer-{i}"), consumer.run(phases.all.clone()));
        }
        let gateway = Arc::new(
            Gateway::with_local(
                Arc::clone(peers),
                http::client_with(&self.security.client),
                Arc::clone(&self.metrics),
                me,
                Arc::clone(&parts.api),
            )
            .with_retention(Arc::clone(&parts.retention))
            .with_budget(Arc::clone(&self.budget)),
        );
        let loki = crate::loki::router(Arc::clone(&gateway));
        let gateway = gateway.router();
        // Each class of work has its own bound, so a gateway's calls to its peers never
        // wait behind the user queries that made them.
        let (q, st) = (parts.max_queries, parts.max_streams);
        let gateway = http::limit(gateway, &["/store/query", "/store/hits"], q);
        let gateway = http::limit(gateway, &["/store/stream"], st);
        let local = http::limit(
            parts.api.router(),
            &["/store/_query", "/store/_hits", "/store/_samples"],
            q,
        );
        let local = http::limit(local, &["/store/_stream"], st);
        // Replicas being received each hold an `.active` file until their body ends.
        let local = http::limit(
            local,
            &["/store/replicate"],
            crate::store::replicate::MAX_RECEIVING,
        );
        let loki = http::limit(loki, crate::loki::QUERY_PATHS, q);
        local
            .merge(gateway)
            .merge(loki)
            .route("/store/_clusterstate", self.cluster_state())
            .merge(crate::ui::router())
    }

    /// Serve `router` on the API listener (guarded by the credentials check, instrumented),
    /// and reload the TLS material and tokens as they change.
    fn spawn_api(
        &self,
        listener: TcpListener,
        router: Router,
        tasks: &mut RunGroup,
        phases: &Phases,
    ) {
        let router = http::guard(router, Arc::clone(&self.security.guard));
        let router = http::instrument(router, Arc::clone(&self.metrics));
        let timeouts = self.http;
        let tls = self.security.server.as_ref().map(|s| Arc::clone(&s.api));
        tasks.spawn(
            "security-reload",
            Arc::clone(&self.security.reloader).run(phases.all.clone()),
        );
        let all = phases.all.clone();
        tasks.spawn("api", async move {
            if let Err(e) = http::serve_tls(listener, router, all, timeouts, tls).await {
                panic!("serving the API: {e}");
            }
        });
    }

    /// The ordered shutdown, all within one deadline: stop the ingest listeners, drain what
    /// was ingested to the store nodes (unless a part `failed`), leave the cluster, stop every
    /// other part, and fail back what is still claimed.
    async fn shut_down(
        self,
        mut tasks: RunGroup,
        failed: bool,
        ingest: Option<&IngestParts>,
        tcp_tx: watch::Sender<bool>,
        peers: &Arc<dyn Peers>,
    ) {
        // The drain leaves room for the last steps.
        let start = tokio::time::Instant::now();
        let deadline = start + self.shutdown_timeout;
        let drain_until = deadline - (self.shutdown_timeout / 5).min(Duration::from_secs(1));
        let _ = tcp_tx.send(true);
        if let Some(parts) = ingest {
            parts
                .ingester
                .stop(drain_until.saturating_duration_since(start))
                .await;
            // The pushed records' segment too, so the drain can hand it over.
            if let Err(e) = parts.push.writer().rotate().await {
                tracing::warn!(error = %e, "closing the push segment");
            }
            if !failed {
                drain(parts, peers, drain_until).await;
            }
        }
        let _ = tokio::time::timeout_at(deadline, self.gossip.leave()).await;
        let _ = self.all_tx.send(true);
        // The parts finish: consumers fail their work back, the API server ends once its
        // running requests have. (The sync and push writer threads stay until the ingester
        // and the push endpoints are gone.)
        let _ = tokio::time::timeout_at(
            deadline.max(tokio::time::Instant::now() + Duration::from_millis(200)),
            async {
                while tasks
                    .running()
                    .iter()
                    .any(|p| *p != "ingest-sync" && *p != "push-writer")
                {
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
        if let Some(parts) = ingest {
            parts.api.fail_all().await;
            // Pushes answered while draining: into `.flushed` too, for the next start.
            if let Err(e) = parts.push.writer().rotate().await {
                tracing::warn!(error = %e, "closing the push segment");
            }
        }
    }
}

/// Keep serving `/ingest/*` until the store nodes have taken what was flushed (or
/// `until`, or there is no store node to take it).
async fn drain(parts: &IngestParts, peers: &Arc<dyn Peers>, until: tokio::time::Instant) {
    while tokio::time::Instant::now() < until && !peers.current(Role::Store).is_empty() {
        let log = Arc::clone(&parts.log);
        match tokio::task::spawn_blocking(move || log.stats()).await {
            Ok(Ok(s)) if s.flushed.0 + s.pending.0 > 0 => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            _ => break,
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
