//! The ingest tier: listeners that stamp each input line with a ULID and topic and append it to
//! the connection's active segment, the segment files and their states, and the HTTP API
//! through which store nodes consume flushed segments, and the agents' protocols (Loki, OTLP,
//! Elasticsearch bulk, JSON lines, syslog), which write through the same segments.
//!
//! Ingest owns only `-ingest.path`; it never reads or writes store files.

pub mod api;
pub mod bulk;
pub mod conn;
pub mod ingester;
pub mod log;
pub mod protocols;
pub mod sync;
pub mod wire;
pub mod writer;

pub use api::IngestApi;
pub use ingester::{Ingester, Modality};
pub use log::IngestLog;
pub use writer::Rotation;
