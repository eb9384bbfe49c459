//! `oklog stream`: follow a live query (arrives with the cluster work).

use super::flags::{FlagSet, Kind, flag};

/// The flags of `oklog stream`.
pub fn flag_set() -> FlagSet {
    FlagSet {
        usage: "oklog stream [flags]",
        flags: vec![
            flag(
                "store",
                Kind::Str,
                "localhost:7650",
                "address of store instance to query",
            ),
            flag("q", Kind::Str, "", "query expression"),
            flag("regex", Kind::Bool, "", "parse -q as regular expression"),
            flag("window", Kind::Duration, "3s", "deduplication window"),
            flag(
                "ulid",
                Kind::Bool,
                "",
                "include ULID prefix with each record",
            ),
        ],
        aliases: vec![],
    }
}

/// Not implemented yet: says so and fails.
pub fn run(argv: &[String]) -> anyhow::Result<()> {
    if super::parse_flags(&flag_set(), argv)?.is_none() {
        return Ok(());
    }
    anyhow::bail!(
        "stream: not implemented yet (it arrives with cluster membership); use `oklog query`"
    )
}
