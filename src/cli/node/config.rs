//! A node's configuration: the server modes' flags, parsed once into typed, checked structs
//! (each field says its flag and default). Everything a node needs from the command line and
//! environment is read here, before anything is opened or bound; a bad value is one line naming
//! the flag.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;

use crate::cli::addr::{Addr, parse_addr};
use crate::cli::flags::{Args, Flag, FlagSet, Kind, flag};
use crate::cluster::Role;
use crate::ingest::ingester::ConnLimits;
use crate::ingest::protocols::PushConfig;
use crate::ingest::protocols::writer::Wait;
use crate::record::{TopicMode, is_valid_topic};

/// Default API (HTTP) port.
pub const API_PORT: u16 = 7650;
/// Default fast ingest port.
pub const FAST_PORT: u16 = 7651;
/// Default durable ingest port.
pub const DURABLE_PORT: u16 = 7652;
/// Default bulk ingest port.
pub const BULK_PORT: u16 = 7653;
/// Default syslog port (TCP and UDP).
pub const SYSLOG_PORT: u16 = 7654;
/// Default cluster port.
pub const CLUSTER_PORT: u16 = 7659;

/// The flags of the server mode `role`: `ingest`, `store`, or `ingeststore` (the union of
/// both, the ingest ones under `ingest.`).
pub fn flag_set(role: Role) -> FlagSet {
    let mut flags = common_flags(role.name());
    let rf_help = "number of store nodes each aggregate segment is replicated to";
    let (usage, aliases) = match role {
        Role::Ingest => {
            flags.extend(ingest_flags(""));
            ("oklog ingest [flags]", topic_aliases(""))
        }
        Role::Store => {
            flags.extend(store_flags("2", rf_help));
            ("oklog store [flags]", vec![])
        }
        Role::IngestStore => {
            flags.extend(ingest_flags("ingest."));
            flags.extend(store_flags(
                "",
                "number of store nodes each aggregate segment is replicated to (default 1 without -peer, 2 with)",
            ));
            ("oklog ingeststore [flags]", topic_aliases("ingest."))
        }
    };
    FlagSet {
        usage,
        flags,
        aliases,
    }
}

/// Flags every server mode has.
pub fn common_flags(role: &str) -> Vec<Flag> {
    let mut flags = crate::cli::logging::flags();
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
            "api.header-timeout",
            Kind::Duration,
            "10s",
            "time a client has to send a request's head",
        ),
        flag(
            "api.body-idle-timeout",
            Kind::Duration,
            "30s",
            "a request body that sends nothing this long is cut off",
        ),
        flag(
            "api.body-timeout",
            Kind::Duration,
            "60s",
            "a request body must arrive whole within this, plus 1s per MiB it declares",
        ),
        flag(
            "api.write-timeout",
            Kind::Duration,
            "30s",
            "a response the client takes nothing of for this long ends its connection",
        ),
        flag(
            "api.memory-budget",
            Kind::Int,
            "268435456",
            "bytes all clients together may make the node hold (push bodies and records, live streams, ingest connections' buffers); past it a request gets a 503",
        ),
        flag(
            "shutdown-timeout",
            Kind::Duration,
            "5s",
            "how long a graceful shutdown may take",
        ),
        flag(
            "tls.cert-file",
            Kind::Str,
            "",
            "certificate chain (PEM): every TCP listener speaks TLS, and peers are called over https (reloaded on change)",
        ),
        flag(
            "tls.key-file",
            Kind::Str,
            "",
            "private key (PEM) of -tls.cert-file (reloaded on change)",
        ),
        flag(
            "tls.client-ca-file",
            Kind::Str,
            "",
            "CA certificates (PEM): the ingest ports and the internal API then require a client certificate signed by one",
        ),
        flag(
            "tls.ca-file",
            Kind::Str,
            "",
            "CA certificates (PEM) that peers are verified against (default: the system's)",
        ),
        flag(
            "tls.server-name",
            Kind::Str,
            "",
            "name peers' certificates must have (default: the address dialled; set it when peers are dialled at addresses no certificate names, such as pod IPs)",
        ),
        flag(
            "auth.token-file",
            Kind::Str,
            "",
            "file of `TOKEN ROLE[,ROLE...]` lines (roles ingest, query, cluster): requests then need a token with their role (reloaded on change)",
        ),
        flag(
            "auth.token",
            Kind::Str,
            "",
            "token (with the cluster role) this node presents to its peers (better given as OKLOG_AUTH_TOKEN)",
        ),
        flag(
            "auth.protect-metrics",
            Kind::Bool,
            "",
            "/metrics also needs a token (or a client certificate)",
        ),
        flag(
            "cluster.key-file",
            Kind::Str,
            "",
            "keys (from `oklog keygen`, one per line; the first seals) that authenticate and encrypt gossip (reloaded on change)",
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
            "250ms",
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
            "ingest.max-event-age",
            Kind::Duration,
            "168h",
            "records whose time is more than this before now are refused (bulk ULIDs; ingeststore: -store.segment-retain unless set)",
        ),
        flag(
            "ingest.max-event-future",
            Kind::Duration,
            "10m",
            "records whose time is more than this after now are refused (bulk ULIDs; at most 720h)",
        ),
        flag(
            "ingest.max-record-size",
            Kind::Int,
            "1048576",
            "longer input lines are split into records of this many payload bytes",
        ),
        flag(
            "ingest.syslog-tcp",
            Kind::Str,
            ":7654",
            "listen address for syslog over TCP (RFC 5424/3164; empty: off)",
        ),
        flag(
            "ingest.syslog-udp",
            Kind::Str,
            ":7654",
            "listen address for syslog over UDP (empty: off)",
        ),
        flag(
            "ingest.max-push-size",
            Kind::Int,
            "67108864",
            "largest push request body (Loki, OTLP, Elasticsearch, JSON lines), compressed or not; larger is a 413",
        ),
        flag(
            "ingest.push-sync",
            Kind::Bool,
            "true",
            "answer a push only once its records are fsynced (false: once written)",
        ),
        flag(
            "ingest.loki-topic-labels",
            Kind::Str,
            "service_name,job,app,container",
            "Loki labels tried in turn for a record's topic",
        ),
        flag(
            "ingest.otlp-topic-attribute",
            Kind::Str,
            "service.name",
            "OTLP resource attribute that names a record's topic",
        ),
        flag(
            "ingest.elasticsearch-time-field",
            Kind::Str,
            "@timestamp",
            "Elasticsearch document field holding its time (a request's _time_field overrides it)",
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
            "store.segment-settle",
            Kind::Duration,
            "1h",
            "merge small segments once their newest record is this old (sooner when they add up to half the target size)",
        ),
        flag(
            "store.segment-target-age",
            Kind::Duration,
            "250ms",
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
            "store.topic-retain",
            Kind::List,
            "",
            "PATTERN=DURATION: keep records of topics matching PATTERN (a name or a * glob) this long instead (repeatable; the first match wins)",
        ),
        flag(
            "store.segment-purge",
            Kind::Duration,
            "24h",
            "purge deleted segment files after this long",
        ),
        flag(
            "store.segment-compress-after",
            Kind::Str,
            "24h",
            "compress segments whose newest record is older than this (0: all; -1 or off: never)",
        ),
        flag(
            "store.segment-format",
            Kind::Str,
            "compressed",
            "compressed, or raw: keep (and turn back) every segment raw, as the original writes them",
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

/// Everything a node runs with.
#[derive(Debug)]
pub struct NodeConfig {
    /// `ingest`, `store` or `ingeststore`.
    pub role: Role,
    /// The HTTP API listener (`-api`, `tcp://0.0.0.0:7650`).
    pub api: Addr,
    /// The cluster listener, advertise address and peers (`-cluster`, `-cluster.advertise-addr`,
    /// `-peer`).
    pub cluster: ClusterPlan,
    /// How long a graceful shutdown may take (`-shutdown-timeout`, 5s).
    pub shutdown_timeout: Duration,
    /// `-api.header-timeout` (10s), `-api.body-idle-timeout` (30s), `-api.body-timeout`
    /// (60s) and `-api.write-timeout` (30s).
    pub http: crate::http::Timeouts,
    /// Bytes all clients together may make the node hold (`-api.memory-budget`, 256 MiB).
    pub memory_budget: usize,
    /// The ingest half (`ingest`, `ingeststore`).
    pub ingest: Option<IngestConfig>,
    /// The store half (`store`, `ingeststore`).
    pub store: Option<StoreConfig>,
    /// TLS, tokens and the cluster key.
    pub security: SecurityConfig,
}

/// What protects a node; everything off by default.
#[derive(Debug, Default)]
pub struct SecurityConfig {
    /// `-tls.cert-file`, `-tls.key-file`, `-tls.ca-file`, `-tls.client-ca-file`.
    pub tls: crate::security::tls::TlsFiles,
    /// `-tls.server-name`.
    pub server_name: Option<String>,
    /// `-auth.token-file`.
    pub token_file: Option<PathBuf>,
    /// `-auth.token` (`OKLOG_AUTH_TOKEN`).
    pub token: Option<String>,
    /// `-auth.protect-metrics`.
    pub protect_metrics: bool,
    /// `-cluster.key-file`.
    pub cluster_key: Option<PathBuf>,
}

impl SecurityConfig {
    fn from_args(args: &Args) -> anyhow::Result<SecurityConfig> {
        let path = |name: &str| {
            let v = args.str(name);
            (!v.trim().is_empty()).then(|| PathBuf::from(v.trim()))
        };
        let tls = crate::security::tls::TlsFiles {
            cert: path("tls.cert-file"),
            key: path("tls.key-file"),
            ca: path("tls.ca-file"),
            client_ca: path("tls.client-ca-file"),
        };
        if tls.client_ca.is_some() && tls.cert.is_none() {
            bail!(
                "-tls.client-ca-file needs -tls.cert-file and -tls.key-file (client certificates are checked over TLS)"
            );
        }
        let token = args.str("auth.token").trim().to_string();
        let token = (!token.is_empty()).then_some(token);
        let token_file = path("auth.token-file");
        if token_file.is_some() && token.is_none() {
            bail!(
                "-auth.token-file needs -auth.token (or OKLOG_AUTH_TOKEN): the token with the cluster role this node presents to its peers, itself included"
            );
        }
        Ok(SecurityConfig {
            server_name: Some(args.str("tls.server-name").trim().to_string())
                .filter(|s| !s.is_empty()),
            tls,
            token_file,
            token,
            protect_metrics: args.bool("auth.protect-metrics"),
            cluster_key: path("cluster.key-file"),
        })
    }
}

/// The ingest half of a node.
#[derive(Debug)]
pub struct IngestConfig {
    /// The static topic (`-topic`, `-ingest.topic` in `ingeststore`; `default`).
    pub topic: String,
    /// Static or dynamic topics (`-topic-mode`, `-ingest.topic-mode`; `static`).
    pub topic_mode: TopicMode,
    /// The fast listener (`-ingest.fast`, `tcp://0.0.0.0:7651`).
    pub fast: Addr,
    /// The durable listener (`-ingest.durable`, `tcp://0.0.0.0:7652`).
    pub durable: Addr,
    /// The bulk listener (`-ingest.bulk`, `tcp://0.0.0.0:7653`).
    pub bulk: Addr,
    /// The segment directory (`-ingest.path`, `data/ingest`).
    pub path: PathBuf,
    /// Rotate a segment at this size (`-ingest.segment-flush-size`, 16 MiB).
    pub flush_size: u64,
    /// Rotate a segment at this age (`-ingest.segment-flush-age`, 250ms).
    pub flush_age: Duration,
    /// Fail a claimed segment back after this long (`-ingest.segment-pending-timeout`, 1m).
    pub pending_timeout: Duration,
    /// Payload bytes per record before a line is split (`-ingest.max-record-size`, 1 MiB).
    pub max_record_size: usize,
    /// `-ingest.max-connections` (10000) and `-ingest.idle-timeout` (1h, 0 never).
    pub limits: ConnLimits,
    /// The syslog TCP listener (`-ingest.syslog-tcp`, `:7654`; `None` when empty).
    pub syslog_tcp: Option<Addr>,
    /// The syslog UDP listener (`-ingest.syslog-udp`, `:7654`; `None` when empty).
    pub syslog_udp: Option<Addr>,
    /// `-ingest.syslog-udp` was given (it is then served even with authentication on).
    pub syslog_udp_explicit: bool,
    /// The push endpoints' mapping and limits (`-ingest.max-push-size` 64 MiB,
    /// `-ingest.push-sync` true, `-ingest.loki-topic-labels`, `-ingest.otlp-topic-attribute`,
    /// `-ingest.elasticsearch-time-field`, and the event bounds).
    pub push: PushConfig,
    /// How far from now a record's time may be (`-ingest.max-event-age`, 168h, or in
    /// `ingeststore` the store's retention; `-ingest.max-event-future`, 10m).
    pub bounds: crate::ingest::EventBounds,
}

/// The store half of a node.
#[derive(Debug)]
pub struct StoreConfig {
    /// The segment directory (`-store.path`, `data/store`).
    pub path: PathBuf,
    /// Concurrent consumers (`-store.segment-consumers`, 1).
    pub consumers: usize,
    /// Aggregate and compaction target size (`-store.segment-target-size`, 128 MiB).
    pub target_size: u64,
    /// Replicate an aggregate this old (`-store.segment-target-age`, 250ms).
    pub target_age: Duration,
    /// Merge small segments once their newest record is this old (`-store.segment-settle`,
    /// 1h).
    pub settle: Duration,
    /// Consumer pause when nothing is flushed (`-store.segment-delay`, 100ms).
    pub delay: Duration,
    /// Copies of each aggregate (`-store.segment-replication-factor`; 2 for `store`; for
    /// `ingeststore` 1 without `-peer`, 2 with).
    pub replication_factor: usize,
    /// Retention: `-store.segment-retain` (168h) for every topic but those of
    /// `-store.topic-retain`.
    pub retention: crate::store::retention::Retention,
    /// Trash kept this long (`-store.segment-purge`, 24h).
    pub purge: Duration,
    /// The format old segments are kept in (`-store.segment-format`, compressed).
    pub format: crate::segment::Format,
    /// Compress segments older than this (`-store.segment-compress-after`, 24h; `None`:
    /// never).
    pub compress_after: Option<Duration>,
    /// Queries answered at once (`-api.max-queries`, 32).
    pub max_queries: usize,
    /// Streams served at once (`-api.max-streams`, 256).
    pub max_streams: usize,
}

impl NodeConfig {
    /// Read and check every flag of `role`'s mode.
    pub fn from_args(role: Role, args: &Args) -> anyhow::Result<NodeConfig> {
        if args.str("filesystem") != "real" {
            bail!(
                "-filesystem: {:?} is not supported; only \"real\"",
                args.str("filesystem")
            );
        }
        let api = addr(args, "api", API_PORT)?;
        let cluster = cluster_plan(args)?;
        let ingest = match role {
            Role::Store => None,
            Role::Ingest => Some(IngestConfig::from_args(args, "")?),
            Role::IngestStore => Some(IngestConfig::from_args(args, "ingest.")?),
        };
        let store = match role {
            Role::Ingest => None,
            Role::Store | Role::IngestStore => Some(StoreConfig::from_args(role, args)?),
        };
        Ok(NodeConfig {
            role,
            api,
            cluster,
            shutdown_timeout: args.duration("shutdown-timeout"),
            http: crate::http::Timeouts {
                header_read: nonzero(args, "api.header-timeout")?,
                body_idle: nonzero(args, "api.body-idle-timeout")?,
                body_total: nonzero(args, "api.body-timeout")?,
                write: nonzero(args, "api.write-timeout")?,
            },
            memory_budget: positive(args, "api.memory-budget")? as usize,
            ingest,
            store,
            security: SecurityConfig::from_args(args)?,
        })
    }
}

impl IngestConfig {
    /// `ns` is `""` for `ingest` and `"ingest."` for `ingeststore` (the topic flags).
    fn from_args(args: &Args, ns: &str) -> anyhow::Result<IngestConfig> {
        let (mode_flag, topic_flag) = if ns.is_empty() {
            ("topic-mode", "topic")
        } else {
            ("ingest.topic-mode", "ingest.topic")
        };
        let topic_mode: TopicMode = args
            .str(mode_flag)
            .parse()
            .map_err(|e: crate::record::BadTopicMode| anyhow::anyhow!("-{mode_flag}: {e}"))?;
        let topic = args.str(topic_flag);
        if !is_valid_topic(topic.as_bytes()) {
            bail!("-{topic_flag}: topic name {topic:?} invalid");
        }
        let idle = args.duration("ingest.idle-timeout");
        let optional = |name: &str, port: u16| -> anyhow::Result<Option<Addr>> {
            if args.str(name).trim().is_empty() {
                Ok(None)
            } else {
                addr(args, name, port).map(Some)
            }
        };
        let list = |name: &str| -> Vec<String> {
            args.str(name)
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        };
        let bounds = event_bounds(args, ns)?;
        let push = PushConfig {
            topic: topic.clone(),
            bounds,
            max_body: positive(args, "ingest.max-push-size")? as usize,
            wait: if args.bool("ingest.push-sync") {
                Wait::Synced
            } else {
                Wait::Written
            },
            loki_topic_labels: list("ingest.loki-topic-labels"),
            otlp_topic_attribute: args.str("ingest.otlp-topic-attribute").trim().to_string(),
            elasticsearch_time_field: match args.str("ingest.elasticsearch-time-field").trim() {
                "" => bail!("-ingest.elasticsearch-time-field: a field name, not empty"),
                f => f.to_string(),
            },
        };
        Ok(IngestConfig {
            topic,
            topic_mode,
            fast: addr(args, "ingest.fast", FAST_PORT)?,
            durable: addr(args, "ingest.durable", DURABLE_PORT)?,
            bulk: addr(args, "ingest.bulk", BULK_PORT)?,
            path: PathBuf::from(args.str("ingest.path")),
            flush_size: positive(args, "ingest.segment-flush-size")?,
            flush_age: args.duration("ingest.segment-flush-age"),
            pending_timeout: args.duration("ingest.segment-pending-timeout"),
            max_record_size: positive(args, "ingest.max-record-size")? as usize,
            limits: ConnLimits {
                max_connections: positive(args, "ingest.max-connections")? as usize,
                idle_timeout: (!idle.is_zero()).then_some(idle),
                partial_timeout: nonzero(args, "api.body-timeout")?,
            },
            syslog_tcp: optional("ingest.syslog-tcp", SYSLOG_PORT)?,
            syslog_udp: optional("ingest.syslog-udp", SYSLOG_PORT)?,
            syslog_udp_explicit: args.is_set("ingest.syslog-udp"),
            push,
            bounds,
        })
    }
}

impl StoreConfig {
    fn from_args(role: Role, args: &Args) -> anyhow::Result<StoreConfig> {
        let rf_flag = "store.segment-replication-factor";
        let rf = if role == Role::IngestStore && !args.is_set(rf_flag) {
            if args.list("peer").is_empty() { 1 } else { 2 }
        } else {
            positive(args, rf_flag)?
        };
        Ok(StoreConfig {
            path: PathBuf::from(args.str("store.path")),
            consumers: positive(args, "store.segment-consumers")? as usize,
            target_size: positive(args, "store.segment-target-size")?,
            target_age: args.duration("store.segment-target-age"),
            settle: args.duration("store.segment-settle"),
            delay: args.duration("store.segment-delay"),
            replication_factor: rf as usize,
            retention: crate::store::retention::Retention::parse(
                &args.list("store.topic-retain"),
                args.duration("store.segment-retain"),
            )
            .map_err(anyhow::Error::msg)?,
            purge: args.duration("store.segment-purge"),
            format: match args.str("store.segment-format").as_str() {
                "compressed" => crate::segment::Format::Compressed,
                "raw" => crate::segment::Format::Raw,
                other => bail!("-store.segment-format: {other:?} is not compressed or raw"),
            },
            compress_after: match args.str("store.segment-compress-after").trim() {
                "off" | "-1" => None,
                v => Some(crate::gotime::parse_duration(v).map_err(|e| {
                    anyhow::anyhow!("-store.segment-compress-after: {v:?}: {e} (or -1, off)")
                })?),
            },
            max_queries: positive(args, "api.max-queries")? as usize,
            max_streams: positive(args, "api.max-streams")? as usize,
        })
    }
}

/// `-ingest.max-event-age` and `-ingest.max-event-future`; in `ingeststore` (`ns` is
/// `ingest.`) the age defaults to the store's retention.
fn event_bounds(args: &Args, ns: &str) -> anyhow::Result<crate::ingest::EventBounds> {
    let age_flag = "ingest.max-event-age";
    let max_age = if ns == "ingest." && !args.is_set(age_flag) {
        args.duration("store.segment-retain")
    } else {
        nonzero(args, age_flag)?
    };
    let max_future = args.duration("ingest.max-event-future");
    if max_future > crate::ingest::MAX_FUTURE {
        bail!(
            "-ingest.max-event-future {}: at most {} (a store refuses records further ahead)",
            crate::gotime::format_duration(max_future),
            crate::gotime::format_duration(crate::ingest::MAX_FUTURE)
        );
    }
    Ok(crate::ingest::EventBounds {
        max_age,
        max_future,
    })
}

fn addr(args: &Args, name: &str, port: u16) -> anyhow::Result<Addr> {
    parse_addr(&args.str(name), port).map_err(|e| anyhow::anyhow!("-{name}: {e}"))
}

fn nonzero(args: &Args, name: &str) -> anyhow::Result<Duration> {
    let d = args.duration(name);
    if d.is_zero() {
        bail!("-{name}: must be more than 0");
    }
    Ok(d)
}

fn positive(args: &Args, name: &str) -> anyhow::Result<u64> {
    let v = args.int(name);
    if v <= 0 {
        bail!("-{name}: must be positive, got {v}");
    }
    Ok(v as u64)
}

/// Where the cluster listens and what it advertises, checked from the flags.
#[derive(Debug)]
pub struct ClusterPlan {
    /// The address to bind.
    pub bind: String,
    /// Its host part.
    pub bind_host: String,
    /// The host to advertise, if given.
    pub advertise_host: String,
    /// The port to advertise, if given.
    pub advertise_port: Option<u16>,
    /// The peers' addresses, resolved.
    pub peers: Vec<SocketAddr>,
    /// The `-peer` values.
    pub peer_names: Vec<String>,
    /// `(host, port)` of each `-peer`, resolved again while the node is alone.
    pub peer_hosts: Vec<(String, u16)>,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every mode's defaults parse into a configuration: no flag is looked up by a name that
    /// its mode does not define (such a lookup panics).
    #[test]
    fn every_mode_parses_its_defaults() {
        for (role, set) in [
            (Role::Ingest, flag_set(Role::Ingest)),
            (Role::Store, flag_set(Role::Store)),
            (Role::IngestStore, flag_set(Role::IngestStore)),
        ] {
            let args = crate::cli::parse_flags(&set, &[]).unwrap().unwrap();
            let cfg = NodeConfig::from_args(role, &args).unwrap();
            assert_eq!(cfg.api.port, API_PORT);
            assert_eq!(cfg.shutdown_timeout, Duration::from_secs(5));
            if let Some(i) = &cfg.ingest {
                assert_eq!((i.topic.as_str(), i.max_record_size), ("default", 1 << 20));
                assert_eq!(i.limits.max_connections, 10_000);
                assert_eq!(i.syslog_tcp.as_ref().map(|a| a.port), Some(SYSLOG_PORT));
                assert_eq!(i.push.max_body, 64 << 20);
                assert_eq!(i.push.wait, Wait::Synced);
                assert_eq!(i.push.loki_topic_labels.len(), 4);
            }
            if let Some(s) = &cfg.store {
                let rf = if role == Role::Store { 2 } else { 1 };
                assert_eq!(s.replication_factor, rf, "{role:?}");
                assert_eq!(s.max_queries, 32);
            }
        }
    }

    #[test]
    fn bad_values_name_their_flag() {
        let set = flag_set(Role::IngestStore);
        for (argv, want) in [
            (
                vec!["-ingest.max-connections", "0"],
                "-ingest.max-connections",
            ),
            (vec!["-ingest.topic", "bad topic"], "-ingest.topic"),
            (vec!["-api.max-queries", "-1"], "-api.max-queries"),
            (vec!["-ingest.fast", "tcp://[::1"], "-ingest.fast"),
            (vec!["-filesystem", "virtual"], "-filesystem"),
            (vec!["-ingest.max-push-size", "0"], "-ingest.max-push-size"),
            (
                vec!["-ingest.syslog-udp", "udp://[::1"],
                "-ingest.syslog-udp",
            ),
        ] {
            let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
            let args = crate::cli::parse_flags(&set, &argv).unwrap().unwrap();
            let err = NodeConfig::from_args(Role::IngestStore, &args).unwrap_err();
            assert!(err.to_string().contains(want), "{argv:?}: {err}");
        }
    }
}
