//! Who the other nodes are. For now a static peer list (a single node knows itself); gossip
//! membership behind the same trait comes with the cluster work.

/// A node's role in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Ingest only.
    Ingest,
    /// Store only.
    Store,
    /// Both, in one process.
    IngestStore,
}

/// The peers a component talks to, as HTTP `host:port` API addresses.
pub trait Peers: Send + Sync + std::fmt::Debug {
    /// Current API addresses of nodes that can act as `role` (`Ingest` includes ingeststore
    /// nodes, `Store` too), self included.
    fn current(&self, role: Role) -> Vec<String>;
}

/// A fixed peer list.
#[derive(Clone, Debug, Default)]
pub struct StaticPeers {
    /// Ingest-capable API addresses.
    pub ingest: Vec<String>,
    /// Store-capable API addresses.
    pub store: Vec<String>,
}

impl Peers for StaticPeers {
    fn current(&self, role: Role) -> Vec<String> {
        match role {
            Role::Ingest => self.ingest.clone(),
            Role::Store => self.store.clone(),
            Role::IngestStore => self
                .ingest
                .iter()
                .filter(|a| self.store.contains(a))
                .cloned()
                .collect(),
        }
    }
}
