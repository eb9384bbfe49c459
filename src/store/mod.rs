//! The store tier: segment files named by their ULID range, the consumer that fills them from
//! ingesters, the replicate endpoint, and local query execution.
//!
//! Store owns only `-store.path`; it never touches ingest files except through the ingest API.

pub mod api;
pub mod compact;
pub mod consume;
pub mod gather;
pub mod hits;
pub mod log;
pub mod query;
pub mod registry;
pub mod replicate;
pub mod retention;

pub use api::StoreApi;
pub use compact::{CompactConfig, Compacter};
pub use consume::{Consumer, ConsumerConfig};
pub use gather::Gateway;
pub use log::StoreLog;
