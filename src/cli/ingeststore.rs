//! `oklog ingeststore`: ingest and store in one process, the single-node default.

use super::flags::FlagSet;
use super::node::config::{common_flags, ingest_flags, store_flags, topic_aliases};
use crate::cluster::Role;

/// The flags of `oklog ingeststore`: the union of ingest's and store's.
pub fn flag_set() -> FlagSet {
    let mut flags = common_flags("ingeststore");
    flags.extend(ingest_flags("ingest."));
    flags.extend(store_flags(
        "",
        "number of store nodes each aggregate segment is replicated to (default 1 without -peer, 2 with)",
    ));
    FlagSet {
        usage: "oklog ingeststore [flags]",
        flags,
        aliases: topic_aliases("ingest."),
    }
}

/// Run an ingeststore node until SIGINT/SIGTERM.
pub fn run(argv: &[String]) -> anyhow::Result<()> {
    let Some(args) = super::parse_flags(&flag_set(), argv)? else {
        return Ok(());
    };
    super::logging::init(&args.str("log.format"), args.bool("debug"))?;
    super::node::run(Role::IngestStore, &args)
}
