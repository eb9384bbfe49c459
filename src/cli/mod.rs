//! The subcommands. Each module owns its flags, checks them into a config, wires the
//! components and runs them; `main.rs` only calls [`main`].

pub mod addr;
pub mod bulk;
pub mod client;
pub mod dial;
pub mod flags;
pub mod forward;
pub mod logging;
pub mod node;
pub mod query;
pub mod segment;
pub mod stream;
pub mod testsvc;

use flags::{FlagError, FlagSet};

use crate::cluster::Role;

const USAGE: &str = "USAGE
  oklog <mode> [flags]

MODES
  forward      Forwarding agent
  ingest       Ingester node
  store        Storage node
  ingeststore  Combination ingest+store node, for small installations
  query        Querying commandline tool
  stream       Streaming commandline tool
  segment      Read store segment files (cat, info), raw or compressed
  testsvc      Test service, emits log lines at a fixed rate
  keygen       Print a new cluster key (for -cluster.key-file)

VERSION
  ";

/// Run `oklog` with `argv` (program name first); returns the process exit code.
pub fn main(argv: Vec<String>) -> i32 {
    let Some(mode) = argv.get(1) else {
        eprintln!("{USAGE}{}", env!("CARGO_PKG_VERSION"));
        return 1;
    };
    let rest = &argv[2..];
    let result = match mode.to_ascii_lowercase().as_str() {
        "forward" => forward::run(rest),
        "ingest" => node::run_mode(Role::Ingest, rest),
        "store" => node::run_mode(Role::Store, rest),
        "ingeststore" => node::run_mode(Role::IngestStore, rest),
        "query" => return query::run(rest),
        "segment" => return segment::run(rest),
        "stream" => stream::run(rest),
        "testsvc" => testsvc::run(rest),
        "keygen" => crate::security::key::generate().map(|k| println!("{k}")),
        "-h" | "-help" | "--help" | "help" => {
            println!("{USAGE}{}", env!("CARGO_PKG_VERSION"));
            return 0;
        }
        other => {
            eprintln!("unknown mode {other:?}; run `oklog -h` for the list");
            return 1;
        }
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{}", one_line(&format!("{e:#}")));
            1
        }
    }
}

/// Errors are one line on stderr.
pub fn one_line(s: &str) -> String {
    s.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Parse flags, handling `-h` (usage on stdout) and errors (`Err` with the one-line message).
/// `Ok(None)` means help was printed.
pub fn parse_flags(set: &FlagSet, argv: &[String]) -> anyhow::Result<Option<flags::Args>> {
    match set.parse(argv) {
        Ok(a) => Ok(Some(a)),
        Err(FlagError::Help(text)) => {
            print!("{text}");
            Ok(None)
        }
        Err(FlagError::Bad(msg)) => Err(anyhow::anyhow!(msg)),
    }
}
