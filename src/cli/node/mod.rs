//! The server modes' node (`ingest`, `store`, `ingeststore`), one job per file: [`config`]
//! reads the flags once into typed, checked structs; [`build`] opens directories and binds
//! listeners from them; [`run`] runs every part under the run group and shuts down in order.

pub mod build;
pub mod config;
pub mod run;

pub use config::{
    API_PORT, BULK_PORT, CLUSTER_PORT, DURABLE_PORT, FAST_PORT, NodeConfig, SYSLOG_PORT,
};
pub use run::wait_for_signal;

use crate::cluster::Role;

/// Run a node of `role` with the parsed flags `args`.
pub fn run(role: Role, args: &super::flags::Args) -> anyhow::Result<()> {
    run::run_node(NodeConfig::from_args(role, args)?)
}
