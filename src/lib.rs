//! oklog: a distributed, coördination-free log management system, a Rust implementation of
//! OK Log.
//!
//! # Layout
//! - [`record`]: the record line, ULIDs, topics, framing input lines into records.
//! - [`ingest`]: listeners, active segments, ingest files and the `/ingest` API.
//! - [`store`]: store segments, the consumer, replication ingress, local queries, `/store` API.
//! - [`segment`]: store segment formats: raw (v1) and compressed (v2, v3, v4), and their readers.
//! - [`search`]: time-range binary search and matchers over sorted segment bytes.
//! - [`merge`]: k-way merge with ULID dedup.
//! - [`stream`]: the user stream: fan-out to store nodes, window deduplication.
//! - [`cluster`]: who the peers are.
//! - [`memory`]: the allocator tamed, and the budget clients' buffers are counted in.
//! - [`http`]: shared server and client plumbing, `/health`, `/metrics`.
//! - [`security`]: TLS, tokens with roles, the cluster key.
//! - [`ui`]: the embedded web UI at `/ui/`.
//! - [`supervise`]: the run group every long-running part of a node runs under.
//! - [`cli`]: one module per subcommand; `main.rs` only picks one.

pub mod cli;
pub mod cluster;
pub mod disk;
pub mod failpoint;
pub mod gotime;
pub mod http;
pub mod ingest;
pub mod logql;
pub mod loki;
pub mod memory;
pub mod merge;
pub mod metrics;
pub mod record;
pub mod search;
pub mod security;
pub mod segment;
pub mod store;
pub mod stream;
pub mod supervise;
pub mod throttle;
pub mod ui;
