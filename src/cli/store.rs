//! `oklog store`: the store tier alone.

use super::flags::FlagSet;
use super::node::config::{common_flags, store_flags};
use crate::cluster::Role;

/// The flags of `oklog store`.
pub fn flag_set() -> FlagSet {
    let mut flags = common_flags("store");
    flags.extend(store_flags(
        "2",
        "number of store nodes each aggregate segment is replicated to",
    ));
    FlagSet {
        usage: "oklog store [flags]",
        flags,
        aliases: vec![],
    }
}

/// Run a store node until SIGINT/SIGTERM.
pub fn run(argv: &[String]) -> anyhow::Result<()> {
    let Some(args) = super::parse_flags(&flag_set(), argv)? else {
        return Ok(());
    };
    super::logging::init(&args.str("log.format"), args.bool("debug"))?;
    super::node::run(Role::Store, &args)
}
