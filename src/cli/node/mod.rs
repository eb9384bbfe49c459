//! The server modes' node (`ingest`, `store`, `ingeststore`), one job per file: [`config`]
//! defines each mode's flags and reads them once into typed, checked structs; [`build`] opens directories and binds
//! listeners from them; [`run`] runs every part under the run group and shuts down in order.

pub mod build;
pub mod config;
pub mod run;

pub use config::{
    API_PORT, BULK_PORT, CLUSTER_PORT, DURABLE_PORT, FAST_PORT, NodeConfig, SYSLOG_PORT,
};
pub use run::wait_for_signal;

use crate::cluster::Role;

/// Run `oklog ingest`, `store` or `ingeststore` (`role`) with `argv` until SIGINT/SIGTERM.
pub fn run_mode(role: Role, argv: &[String]) -> anyhow::Result<()> {
    let Some(args) = super::parse_flags(&config::flag_set(role), argv)? else {
        return Ok(());
    };
    super::logging::LogConfig::from_args(&args).init()?;
    run::run_node(NodeConfig::from_args(role, &args)?)
}
