//! The process's metrics: one registry (the only global-like state, built once in `cli/` and
//! handed to components), encoded in the Prometheus text format at `/metrics`.
//!
//! Names follow the original's (`oklog_` prefix); counters are registered without `_total`,
//! which the library appends (DESIGN.md §10 "Metrics").

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A label set of `(name, value)` pairs.
pub type Labels = Vec<(&'static str, &'static str)>;

/// Labels of an API request: `method`, `path` (the route, e.g. `/store/query`), `status_code`.
pub type RequestLabels = Vec<(&'static str, String)>;

/// Request latency histograms by route (buckets from 0.5 ms to about 16 s).
#[derive(Debug)]
pub struct RequestDurations(pub Family<RequestLabels, Histogram, fn() -> Histogram>);

impl Default for RequestDurations {
    fn default() -> Self {
        RequestDurations(Family::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        }))
    }
}

/// Work to do just before each scrape (reading directory sizes, the member list).
#[derive(Default)]
struct ScrapeHooks(Mutex<Vec<Box<dyn Fn() + Send + Sync>>>);

impl std::fmt::Debug for ScrapeHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScrapeHooks")
    }
}

/// Every metric the process exports.
#[derive(Debug, Default)]
pub struct Metrics {
    registry: Registry,
    hooks: ScrapeHooks,
    /// API request latency by `method`, `path` and `status_code` (its `_count` is the request
    /// count per route).
    pub api_request_duration: RequestDurations,
    /// Members of the cluster this node sees, itself included.
    pub cluster_size: Gauge,
    /// Bytes clients make the node hold now, of its memory budget.
    pub memory_budget_held: Gauge,
    /// The memory budget (`-api.memory-budget`).
    pub memory_budget: Gauge,
    /// Gossip packets dropped because no cluster key opened them.
    pub cluster_rejected_packets: Counter,
    /// Ingest segment files by `state` (flushed and pending are the consumers' queue).
    pub ingest_segments: Family<Labels, Gauge>,
    /// Bytes of ingest segment files by `state`.
    pub ingest_segment_bytes: Family<Labels, Gauge>,
    /// Store segment files by `state`.
    pub store_segments: Family<Labels, Gauge>,
    /// Bytes of store segment files by `state`.
    pub store_segment_bytes: Family<Labels, Gauge>,
    /// Seconds between the newest record of the last aggregate this node's consumers committed
    /// and the commit: how far behind the ingesters the store is.
    pub store_consumer_lag_seconds: Gauge<f64, AtomicU64>,
    /// Connected ingest clients by `modality` (fast, durable, bulk).
    pub connected_clients: Family<Labels, Gauge>,
    /// Ingest connections refused (reset) by `modality` because `-ingest.max-connections` were
    /// open.
    pub ingest_refused_connections: Family<Labels, Counter>,
    /// Bytes written to ingest segments.
    pub ingest_bytes_written: Counter,
    /// Records written to ingest segments.
    pub ingest_records_written: Counter,
    /// fsyncs of durable ingest segments.
    pub ingest_syncs: Counter,
    /// Input lines longer than `-ingest.max-record-size`, split into several records.
    pub ingest_split_lines: Counter,
    /// Dynamic-topic lines whose first word was not a valid topic.
    pub ingest_invalid_topics: Counter,
    /// Ingest write errors (disk full, I/O errors): the connection was closed.
    pub ingest_write_errors: Counter,
    /// Pending segments failed back, by consumers or by the pending timeout.
    pub ingest_failed_segments: Counter,
    /// Segments committed by consumers.
    pub ingest_committed_segments: Counter,
    /// Bytes of the segments committed.
    pub ingest_committed_bytes: Counter,
    /// Ingest segments consumed by this store node.
    pub store_consumed_segments: Counter,
    /// Bytes of those segments.
    pub store_consumed_bytes: Counter,
    /// Replicated segments by `direction` (ingress, egress).
    pub store_replicated_segments: Family<Labels, Counter>,
    /// Replicated bytes by `direction`.
    pub store_replicated_bytes: Family<Labels, Counter>,
    /// Replicate requests refused as malformed.
    pub store_rejected_replicas: Counter,
    /// Store nodes that failed to answer a scattered query (or broke off their answer).
    pub store_query_peer_errors: Counter,
    /// Lifecycle steps by `kind` (Overlapping, Sequential, Trash, Purge) and `result`.
    pub store_compactions: Family<Labels, Counter>,
    /// Files set aside as `.bad`.
    pub store_quarantined_files: Counter,
    /// Compressed blocks that failed their checksum (or did not decompress) when read.
    pub store_corrupt_blocks: Counter,
    /// Queryable segments still raw (conversion to the compressed format is behind by this).
    pub store_raw_segments: Gauge,
    /// Segments converted between formats, by `to` (compressed, raw).
    pub store_converted_segments: Family<Labels, Counter>,
    /// Raw bytes of converted segments, by `to`.
    pub store_converted_bytes: Family<Labels, Counter>,
    /// Segments moved to the trash by retention.
    pub store_trashed_segments: Counter,
    /// Trashed segments deleted.
    pub store_purged_segments: Counter,
    /// Records dropped from segments because their topic's retention passed.
    pub store_expired_records: Counter,
    /// Live streams dropped because their client could not keep up.
    pub store_dropped_streams: Counter,
    /// Live streams registered on this node now (each gateway stream registers on every store
    /// node).
    pub store_streams: Gauge,
    /// Push requests (syslog: batches written) by `protocol`, stored or not.
    pub ingest_push_requests: Family<Labels, Counter>,
    /// Records stored from pushes by `protocol`.
    pub ingest_push_records: Family<Labels, Counter>,
    /// Request bytes (decompressed) stored from pushes by `protocol`.
    pub ingest_push_bytes: Family<Labels, Counter>,
    /// Push requests refused or not stored by `protocol` (bad input, too large, write errors).
    pub ingest_push_rejected: Family<Labels, Counter>,
    /// Entries refused for their time by `protocol` and `reason` (`too_old`, `too_new`), the
    /// rest of their requests stored.
    pub ingest_refused_entries: Family<Labels, Counter>,
    /// Records forwarded (forward mode).
    pub forward_records: Counter,
    /// Bytes forwarded (forward mode).
    pub forward_bytes: Counter,
    /// Connections to ingesters that broke (forward mode).
    pub forward_disconnects: Counter,
}

impl Metrics {
    /// All metrics, registered.
    pub fn new() -> Arc<Metrics> {
        let mut m = Metrics::default();
        let r = &mut m.registry;
        r.register(
            "oklog_api_request_duration_seconds",
            "API request duration until the response headers, by method, route and status code",
            m.api_request_duration.0.clone(),
        );
        r.register(
            "oklog_cluster_size",
            "Number of peer members in the cluster, this node included",
            m.cluster_size.clone(),
        );
        r.register(
            "oklog_memory_budget_held_bytes",
            "Bytes clients make the node hold now (push bodies and records, streams, ingest buffers)",
            m.memory_budget_held.clone(),
        );
        r.register(
            "oklog_memory_budget_bytes",
            "Bytes all clients together may make the node hold (-api.memory-budget)",
            m.memory_budget.clone(),
        );
        r.register(
            "oklog_cluster_rejected_packets",
            "Gossip packets dropped because no key of -cluster.key-file opened them",
            m.cluster_rejected_packets.clone(),
        );
        r.register(
            "oklog_ingest_segments",
            "Ingest segment files by state (flushed and pending wait for store consumers)",
            m.ingest_segments.clone(),
        );
        r.register(
            "oklog_ingest_segment_bytes",
            "Bytes of ingest segment files by state",
            m.ingest_segment_bytes.clone(),
        );
        r.register(
            "oklog_store_segments",
            "Store segment files by state",
            m.store_segments.clone(),
        );
        r.register(
            "oklog_store_segment_bytes",
            "Bytes of store segment files by state",
            m.store_segment_bytes.clone(),
        );
        r.register(
            "oklog_store_consumer_lag_seconds",
            "Age of the newest record of the last aggregate segment committed by this node's consumers, at commit",
            m.store_consumer_lag_seconds.clone(),
        );
        r.register(
            "oklog_connected_clients",
            "Number of currently connected clients by modality",
            m.connected_clients.clone(),
        );
        r.register(
            "oklog_ingest_refused_connections",
            "Ingest connections refused (reset) because -ingest.max-connections were open, by modality",
            m.ingest_refused_connections.clone(),
        );
        r.register(
            "oklog_ingest_writer_bytes_written",
            "The total number of bytes written",
            m.ingest_bytes_written.clone(),
        );
        r.register(
            "oklog_ingest_writer_records_written",
            "The total number of records written",
            m.ingest_records_written.clone(),
        );
        r.register(
            "oklog_ingest_writer_syncs",
            "The number of times an active segment is explicitly fsynced",
            m.ingest_syncs.clone(),
        );
        r.register(
            "oklog_ingest_split_lines",
            "Input lines longer than the maximum record size, split into several records",
            m.ingest_split_lines.clone(),
        );
        r.register("oklog_ingest_invalid_topics", "Dynamic-topic lines stored under the static topic because their first word was not a valid topic", m.ingest_invalid_topics.clone());
        r.register(
            "oklog_ingest_push_requests",
            "Push requests (Loki, OTLP, Elasticsearch, JSON lines; syslog: batches) by protocol",
            m.ingest_push_requests.clone(),
        );
        r.register(
            "oklog_ingest_push_records",
            "Records stored from pushes, by protocol",
            m.ingest_push_records.clone(),
        );
        r.register(
            "oklog_ingest_push_bytes",
            "Request bytes (after decompression) stored from pushes, by protocol",
            m.ingest_push_bytes.clone(),
        );
        r.register(
            "oklog_ingest_push_rejected",
            "Push requests refused (malformed, too large) or not stored (write errors), by protocol",
            m.ingest_push_rejected.clone(),
        );
        r.register(
            "oklog_ingest_refused_entries",
            "Entries refused for their time (too_old: -ingest.max-event-age, too_new: -ingest.max-event-future), by protocol and reason",
            m.ingest_refused_entries.clone(),
        );
        r.register(
            "oklog_ingest_write_errors",
            "Errors writing ingest segments",
            m.ingest_write_errors.clone(),
        );
        r.register(
            "oklog_ingest_failed_segments",
            "Segments consumed, but failed and returned to flushed",
            m.ingest_failed_segments.clone(),
        );
        r.register(
            "oklog_ingest_committed_segments",
            "Segments successfully consumed and committed",
            m.ingest_committed_segments.clone(),
        );
        r.register(
            "oklog_ingest_committed_bytes",
            "Bytes successfully consumed and committed",
            m.ingest_committed_bytes.clone(),
        );
        r.register(
            "oklog_store_consumed_segments",
            "Segments consumed from ingest nodes",
            m.store_consumed_segments.clone(),
        );
        r.register(
            "oklog_store_consumed_bytes",
            "Bytes consumed from ingest nodes",
            m.store_consumed_bytes.clone(),
        );
        r.register(
            "oklog_store_replicated_segments",
            "Segments replicated, by direction",
            m.store_replicated_segments.clone(),
        );
        r.register(
            "oklog_store_replicated_bytes",
            "Bytes replicated, by direction",
            m.store_replicated_bytes.clone(),
        );
        r.register(
            "oklog_store_rejected_replicas",
            "Replicate requests refused as malformed",
            m.store_rejected_replicas.clone(),
        );
        r.register(
            "oklog_store_query_peer_errors",
            "Store nodes that failed to answer a scattered query, or broke off their answer",
            m.store_query_peer_errors.clone(),
        );
        r.register(
            "oklog_store_compactions",
            "Store lifecycle steps by kind and result",
            m.store_compactions.clone(),
        );
        r.register(
            "oklog_store_quarantined_files",
            "Store files set aside as .bad",
            m.store_quarantined_files.clone(),
        );
        r.register(
            "oklog_store_corrupt_blocks",
            "Compressed blocks that failed their checksum when read (their records are left out)",
            m.store_corrupt_blocks.clone(),
        );
        r.register(
            "oklog_store_raw_segments",
            "Queryable store segments still in the raw format",
            m.store_raw_segments.clone(),
        );
        r.register(
            "oklog_store_converted_segments",
            "Store segments converted between formats, by target format",
            m.store_converted_segments.clone(),
        );
        r.register(
            "oklog_store_converted_bytes",
            "Raw bytes of store segments converted between formats, by target format",
            m.store_converted_bytes.clone(),
        );
        r.register(
            "oklog_store_trashed_segments",
            "Segments moved to the trash by retention",
            m.store_trashed_segments.clone(),
        );
        r.register(
            "oklog_store_expired_records",
            "Records dropped from store segments because their topic's retention passed",
            m.store_expired_records.clone(),
        );
        r.register(
            "oklog_store_purged_segments",
            "Trashed segments deleted",
            m.store_purged_segments.clone(),
        );
        r.register(
            "oklog_store_dropped_streams",
            "Live stream clients dropped because they could not keep up",
            m.store_dropped_streams.clone(),
        );
        r.register(
            "oklog_store_streams",
            "Live streams registered on this node now",
            m.store_streams.clone(),
        );
        r.register(
            "oklog_forward_records",
            "Records forwarded",
            m.forward_records.clone(),
        );
        r.register(
            "oklog_forward_bytes",
            "Bytes forwarded",
            m.forward_bytes.clone(),
        );
        r.register(
            "oklog_forward_disconnects",
            "Connections to ingesters that broke",
            m.forward_disconnects.clone(),
        );
        Arc::new(m)
    }

    /// Run `hook` before every scrape (it may block briefly: scrapes run it off the runtime).
    pub fn on_scrape(&self, hook: impl Fn() + Send + Sync + 'static) {
        self.hooks
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Box::new(hook));
    }

    /// Refresh what the scrape hooks compute, then encode everything.
    pub fn scrape(&self) -> String {
        for hook in self
            .hooks
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            hook();
        }
        self.encode()
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &self.registry);
        out
    }
}
