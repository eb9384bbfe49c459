//! The store tier: segment files named by their ULID range, the consumer that fills them from
//! ingesters, the replicate endpoint, and local query execution.
//!
//! Store owns only `-store.path`; it never touches ingest files except through the ingest API.

pub mod api;
pub mod consume;
pub mod gather;
pub mod hits;
pub mod labels;
pub mod lifecycle;
pub mod log;
pub mod query;
pub mod registry;
pub mod replicate;
pub mod retention;

pub use api::StoreApi;
pub use consume::{Consumer, ConsumerConfig};
pub use gather::Gateway;
pub use lifecycle::{CompactConfig, Compacter};
pub use log::StoreLog;
