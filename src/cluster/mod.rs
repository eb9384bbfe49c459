//! Who the other nodes are: the [`Peers`] seam components use, the gossip membership that
//! implements it ([`gossip::Gossip`], on foca), and the choice of address to advertise.

pub mod advertise;
pub mod gossip;

use serde::{Deserialize, Serialize};

/// A node's role in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Ingest only.
    Ingest,
    /// Store only.
    Store,
    /// Both, in one process.
    IngestStore,
}

impl Role {
    /// `ingest`, `store` or `ingeststore`, as the original's peer types.
    pub fn name(self) -> &'static str {
        match self {
            Role::Ingest => "ingest",
            Role::Store => "store",
            Role::IngestStore => "ingeststore",
        }
    }

    /// Whether a node of this role answers `Current(wanted)`: `ingest` includes ingeststore
    /// nodes, `store` too, `ingeststore` only itself (the original's semantics).
    pub fn serves(self, wanted: Role) -> bool {
        match wanted {
            Role::Ingest => matches!(self, Role::Ingest | Role::IngestStore),
            Role::Store => matches!(self, Role::Store | Role::IngestStore),
            Role::IngestStore => self == Role::IngestStore,
        }
    }
}

/// One member as `/_clusterstate` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Unique per process start: cluster address and incarnation.
    pub id: String,
    /// Role.
    pub role: Role,
    /// HTTP API `ip:port`.
    pub api_addr: String,
    /// Gossip `ip:port`.
    pub cluster_addr: String,
}

/// The peers a component talks to, as HTTP `host:port` API addresses.
pub trait Peers: Send + Sync + std::fmt::Debug {
    /// Current API addresses of nodes that serve `role` (see [`Role::serves`]), self included.
    fn current(&self, role: Role) -> Vec<String>;
}

/// Cluster membership: who is in the cluster and how to leave it. Joining happens when an
/// implementation starts (see [`gossip::Gossip::start`]).
pub trait Membership: Peers {
    /// This node.
    fn me(&self) -> Member;
    /// Every live member, self included.
    fn members(&self) -> Vec<Member>;
    /// Tell the others this node is leaving.
    fn leave(&self) -> impl std::future::Future<Output = ()> + Send;
}

/// A fixed peer list (for tests and tools).
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

/// `/_clusterstate`: `{"self": {...}, "members": [...], "n": N}`.
pub fn state_json(me: &Member, members: &[Member]) -> String {
    let doc = serde_json::json!({
        "self": me,
        "members": members,
        "n": members.len(),
    });
    serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_semantics() {
        use Role::*;
        assert!(Ingest.serves(Ingest) && IngestStore.serves(Ingest) && !Store.serves(Ingest));
        assert!(Store.serves(Store) && IngestStore.serves(Store) && !Ingest.serves(Store));
        assert!(IngestStore.serves(IngestStore) && !Store.serves(IngestStore));
    }
}
