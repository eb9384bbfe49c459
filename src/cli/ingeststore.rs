//! `oklog ingeststore`: ingest and store in one process, the single-node default.

use super::flags::FlagSet;
use super::server::{
    self, build_ingest, build_store, check_common, common_flags, ingest_flags, store_flags,
    topic_aliases,
};
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

/// The replication factor: an explicit value wins; else 1 without `-peer`, 2 with.
pub fn replication_factor(args: &super::flags::Args) -> anyhow::Result<i64> {
    let name = "store.segment-replication-factor";
    if args.is_set(name) {
        return Ok(args.int(name));
    }
    Ok(if args.list("peer").is_empty() { 1 } else { 2 })
}

/// Run an ingeststore node until SIGINT/SIGTERM.
pub fn run(argv: &[String]) -> anyhow::Result<()> {
    let Some(args) = super::parse_flags(&flag_set(), argv)? else {
        return Ok(());
    };
    super::logging::init(&args.str("log.format"), args.bool("debug"))?;
    check_common(&args)?;
    let rf = replication_factor(&args)?;
    server::run_node(Role::IngestStore, &args, async |metrics| {
        let ingest = build_ingest(&args, "ingest.", metrics).await?;
        let store = build_store(&args, rf, metrics)?;
        Ok((Some(ingest), Some(store)))
    })
}
