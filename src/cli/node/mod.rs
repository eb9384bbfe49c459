//! The server modes' node (`ingest`, `store`, `ingeststore`): its run group ([`run`]).

pub mod run;
