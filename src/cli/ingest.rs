//! `oklog ingest`: the ingest tier alone.

use super::flags::FlagSet;
use super::node::config::{common_flags, ingest_flags, topic_aliases};
use crate::cluster::Role;

/// The flags of `oklog ingest`.
pub fn flag_set() -> FlagSet {
    let mut flags = common_flags("ingest");
    flags.extend(ingest_flags(""));
    FlagSet {
        usage: "oklog ingest [flags]",
        flags,
        aliases: topic_aliases(""),
    }
}

/// Run an ingest node until SIGINT/SIGTERM.
pub fn run(argv: &[String]) -> anyhow::Result<()> {
    let Some(args) = super::parse_flags(&flag_set(), argv)? else {
        return Ok(());
    };
    super::logging::init(&args.str("log.format"), args.bool("debug"))?;
    super::node::run(Role::Ingest, &args)
}
