//! Gossip membership on [`foca`] (SWIM with suspicion, over UDP).
//!
//! A node's identity carries everything the others need: its cluster address, its role, its
//! API address and an incarnation that grows with every start (time-based), so a node restarted
//! on the same address wins the address conflict and rejoins at once (foca refuses an identity
//! it recently saw go down). No other state is gossiped.
//!
//! One task owns the `Foca` instance and is fed by the UDP receive loop, timers and commands;
//! the current member list is published in a snapshot that readers take without waiting.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use foca::{Config, Foca, OwnedNotification, PostcardCodec, Timer};
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};

use super::{Member, Membership, Peers, Role};
use crate::security::key::Keyring;

/// How often a node that was given peers but knows no one announces itself again.
const REANNOUNCE: Duration = Duration::from_secs(1);
/// How often a node that was given peers but knows no one says so.
const ALONE_WARNING: Duration = Duration::from_secs(5);

/// A node's identity in the gossip protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeId {
    /// Cluster (gossip) address others send to.
    pub addr: SocketAddr,
    /// The node's role.
    pub role: Role,
    /// The node's HTTP API address.
    pub api: SocketAddr,
    /// Grows with every start (and every renewal).
    pub incarnation: u64,
    /// The API speaks TLS: peers call it over `https`.
    pub tls: bool,
}

impl foca::Identity for NodeId {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(NodeId {
            incarnation: self.incarnation.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.incarnation > adversary.incarnation
    }
}

impl NodeId {
    fn member(&self) -> Member {
        Member {
            id: format!("{}#{}", self.addr, self.incarnation),
            role: self.role,
            api_addr: if self.tls {
                format!("https://{}", self.api)
            } else {
                self.api.to_string()
            },
            cluster_addr: self.addr.to_string(),
        }
    }
}

enum Input {
    Data(Vec<u8>),
    Timer(Timer<NodeId>),
    Leave(oneshot::Sender<()>),
}

/// A running gossip membership.
#[derive(Debug, Clone)]
pub struct Gossip {
    me: Member,
    members: Arc<RwLock<Vec<Member>>>,
    input: mpsc::Sender<InputBox>,
}

/// Inputs are boxed into a small wrapper so the channel type can be `Debug`.
struct InputBox(Input);

impl std::fmt::Debug for InputBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Input")
    }
}

/// Where to join: the `-peer` addresses resolved at start, and the `(host, port)` names,
/// resolved again while the node is alone (DNS may lag behind new nodes).
#[derive(Clone, Debug, Default)]
pub struct Seeds {
    /// Addresses resolved at start.
    pub addrs: Vec<SocketAddr>,
    /// The names given.
    pub names: Vec<(String, u16)>,
}

/// How a node's gossip is protected.
#[derive(Clone, Debug, Default)]
pub struct Protection {
    /// The API speaks TLS (advertised, so peers call it over `https`).
    pub tls: bool,
    /// `-cluster.key-file`: packets are sealed, and only packets that open are taken in.
    pub keyring: Option<Arc<Keyring>>,
    /// Packets dropped because they did not open (`oklog_cluster_rejected_packets_total`).
    pub rejected: prometheus_client::metrics::counter::Counter,
}

/// A long-running task of the gossip, for the caller to run (and supervise).
pub type Task = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

impl Gossip {
    /// Bind `bind` (UDP), join through `peers` (cluster addresses), and keep the member list
    /// (the returned tasks do that: run them until `shutdown`).
    /// `advertise` is the cluster address others reach this node at, `api` its API address.
    pub async fn start(
        bind: &str,
        (advertise_ip, advertise_port): (std::net::IpAddr, Option<u16>),
        role: Role,
        api: SocketAddr,
        peers: Seeds,
        protection: Protection,
        shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<(Gossip, Vec<(&'static str, Task)>)> {
        let socket = Arc::new(UdpSocket::bind(bind).await?);
        let local = socket.local_addr()?;
        tracing::info!(name = %"cluster", addr = %local, "listening");
        let me = NodeId {
            addr: SocketAddr::new(advertise_ip, advertise_port.unwrap_or(local.port())),
            role,
            api,
            incarnation: (crate::gotime::now_ms().max(0) as u64) << 16
                | u64::from(rand::random::<u16>()),
            tls: protection.tls,
        };
        let members = Arc::new(RwLock::new(vec![me.member()]));
        let (tx, rx) = mpsc::channel(1024);
        let gossip = Gossip {
            me: me.member(),
            members: Arc::clone(&members),
            input: tx.clone(),
        };
        let tasks: Vec<(&'static str, Task)> = vec![
            (
                "gossip-receive",
                Box::pin(receive(
                    Arc::clone(&socket),
                    protection.clone(),
                    tx.clone(),
                    shutdown.clone(),
                )),
            ),
            (
                "gossip",
                Box::pin(run(
                    me,
                    Wire {
                        socket,
                        keyring: protection.keyring,
                    },
                    rx,
                    tx,
                    members,
                    peers,
                    shutdown,
                )),
            ),
        ];
        Ok((gossip, tasks))
    }
}

impl Membership for Gossip {
    fn me(&self) -> Member {
        self.me.clone()
    }

    fn members(&self) -> Vec<Member> {
        self.members
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn leave(&self) {
        let (tx, rx) = oneshot::channel();
        if self.input.send(InputBox(Input::Leave(tx))).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(1), rx).await;
        }
    }
}

impl Peers for Gossip {
    fn current(&self, role: Role) -> Vec<String> {
        self.members()
            .into_iter()
            .filter(|m| m.role.serves(role))
            .map(|m| m.api_addr)
            .collect()
    }
}

/// The socket packets go out on, sealed when there is a key.
struct Wire {
    socket: Arc<UdpSocket>,
    keyring: Option<Arc<Keyring>>,
}

async fn receive(
    socket: Arc<UdpSocket>,
    protection: Protection,
    tx: mpsc::Sender<InputBox>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 65536];
    let rejected_log = crate::throttle::Throttle::new(Duration::from_secs(10));
    loop {
        let received = tokio::select! {
            r = socket.recv_from(&mut buf) => r,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        match received {
            Ok((n, from)) => {
                let data = match &protection.keyring {
                    None => buf[..n].to_vec(),
                    Some(keys) => match keys.open_packet(&buf[..n]) {
                        Some(plain) => plain,
                        None => {
                            protection.rejected.inc();
                            if let Some(held) = rejected_log.allow() {
                                tracing::warn!(%from, suppressed = held, "dropped a gossip packet that no cluster key opens (a node without the key?)");
                            }
                            continue;
                        }
                    },
                };
                if tx.send(InputBox(Input::Data(data))).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "cluster receive");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn run(
    me: NodeId,
    socket: Wire,
    mut rx: mpsc::Receiver<InputBox>,
    tx: mpsc::Sender<InputBox>,
    members: Arc<RwLock<Vec<Member>>>,
    seeds: Seeds,
    mut shutdown: watch::Receiver<bool>,
) {
    let Seeds {
        addrs: mut peers,
        names: peer_hosts,
    } = seeds;
    let mut config = Config::new_lan(NonZeroU32::new(16).unwrap_or(NonZeroU32::MIN));
    // Forget dead identities after a while; restarts use a new incarnation anyway.
    config.remove_down_after = Duration::from_secs(60).into();
    if socket.keyring.is_some() {
        // Sealing adds its overhead: the sealed packet must still fit the same datagram.
        let room = config.max_packet_size.get() - crate::security::key::OVERHEAD;
        config.max_packet_size =
            std::num::NonZeroUsize::new(room).unwrap_or(config.max_packet_size);
    }
    let rng: StdRng = rand::make_rng();
    let mut foca = Foca::new(me.clone(), config, rng, PostcardCodec);
    let mut runtime = foca::AccumulatingRuntime::new();
    let placeholder = |addr: SocketAddr| NodeId {
        addr,
        role: Role::Ingest,
        api: addr,
        incarnation: 0,
        tls: false,
    };
    peers.retain(|p| *p != me.addr); // a headless Service name includes this node
    for p in &peers {
        let _ = foca.announce(placeholder(*p), &mut runtime);
    }
    let mut reannounce = tokio::time::interval(REANNOUNCE);
    let mut last_warning = tokio::time::Instant::now();
    loop {
        let input = tokio::select! {
            i = rx.recv() => match i { Some(i) => Some(i.0), None => return },
            _ = reannounce.tick() => None,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let result = match input {
            Some(Input::Data(data)) => foca.handle_data(&data, &mut runtime),
            Some(Input::Timer(timer)) => foca.handle_timer(timer, &mut runtime),
            Some(Input::Leave(done)) => {
                let r = foca.leave_cluster(&mut runtime);
                flush(&socket, &mut runtime, &tx).await;
                let _ = done.send(());
                r
            }
            None => {
                if !peer_hosts.is_empty() && foca.num_members() == 0 {
                    if last_warning.elapsed() >= ALONE_WARNING {
                        last_warning = tokio::time::Instant::now();
                        tracing::warn!(peers = ?peers, "I appear to be alone in the cluster");
                    }
                    // Names may resolve to new or more addresses now (pods come and go).
                    let mut fresh = Vec::new();
                    for (host, port) in &peer_hosts {
                        if let Ok(addrs) = tokio::net::lookup_host((host.as_str(), *port)).await {
                            fresh.extend(addrs.filter(|a| *a != me.addr));
                        }
                    }
                    if !fresh.is_empty() {
                        peers = fresh;
                    }
                    for p in &peers {
                        let _ = foca.announce(placeholder(*p), &mut runtime);
                    }
                }
                Ok(())
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "gossip");
        }
        let changed = flush(&socket, &mut runtime, &tx).await;
        if changed {
            let mut list: Vec<Member> = std::iter::once(foca.identity().member())
                .chain(foca.iter_members().map(|m| m.id().member()))
                .collect();
            list.sort_by(|a, b| a.cluster_addr.cmp(&b.cluster_addr));
            tracing::info!(members = list.len(), "cluster membership changed");
            *members.write().unwrap_or_else(|p| p.into_inner()) = list;
        }
    }
}

/// Send what foca wants sent, schedule its timers; returns whether membership changed.
async fn flush(
    wire: &Wire,
    runtime: &mut foca::AccumulatingRuntime<NodeId>,
    tx: &mpsc::Sender<InputBox>,
) -> bool {
    while let Some((dst, data)) = runtime.to_send() {
        let sent = match &wire.keyring {
            None => wire.socket.send_to(&data, dst.addr).await,
            Some(keys) => wire.socket.send_to(&keys.seal(&data), dst.addr).await,
        };
        if let Err(e) = sent {
            tracing::debug!(dst = %dst.addr, error = %e, "cluster send");
        }
    }
    while let Some((delay, timer)) = runtime.to_schedule() {
        let tx = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(InputBox(Input::Timer(timer))).await;
        });
    }
    let mut changed = false;
    while let Some(n) = runtime.to_notify() {
        match n {
            OwnedNotification::MemberUp(id) => {
                tracing::debug!(member = %id.addr, role = id.role.name(), "member up");
                changed = true;
            }
            OwnedNotification::MemberDown(id) => {
                tracing::debug!(member = %id.addr, role = id.role.name(), "member down");
                changed = true;
            }
            OwnedNotification::Rename(_, _) => changed = true,
            _ => {}
        }
    }
    changed
}
