//! Cluster mode: `dlm_controld` learns members, quorum and "node N is fenced" from the
//! node daemon's local API (`fenced`, [`cluster::api`]) instead of a static list.
//!
//! - Addresses: every node of cluster.conf is a peer, at its first link address (`addr`,
//!   else its name) and the DLM port.
//! - [`Tracker`] turns fenced's subscription events into [`MemberEvent`]s: a changed member
//!   list is a new epoch whose departed nodes are `failed`; a quorum change is a `Quorum`.
//! - Every departed node is then waited for with fenced's `wait_fenced` (it answers when
//!   the node is safe: fenced, or gone cleanly); only then does the node get
//!   [`MemberEvent::Fenced`], so recovery of its locks waits for the fence.
//!
//! The epoch of a member list is corosync's ring sequence number, which fenced puts in every
//! `membership` event: every member of a ring has the same one, and it grows with every new
//! ring, so a daemon (re)started on a running cluster numbers the current list as the others
//! do. Without it (an older fenced) epochs count the member-list changes seen since the
//! daemon started, which agree only between daemons started under the same membership.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use cluster::api::{Client, Event};
use tracing::{info, warn};

use crate::node::MemberEvent;
use crate::wire::NodeId;

/// Default TCP port of the DLM between daemons.
pub const DEFAULT_PORT: u16 = 21064;

/// Where cluster mode finds the cluster layer.
#[derive(Debug, Clone)]
pub struct ClusterSource {
    /// fenced's local socket.
    pub fenced: PathBuf,
}

/// What cluster mode found out before starting: this node and its peers.
#[derive(Debug, Clone)]
pub struct Discovered {
    /// This node's id (from fenced).
    pub node_id: NodeId,
    /// This node's DLM address.
    pub listen: SocketAddr,
    /// The other configured nodes and their DLM addresses.
    pub peers: Vec<(NodeId, SocketAddr)>,
}

/// Why cluster mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// fenced did not answer.
    #[error("{0}")]
    Api(#[from] cluster::api::ApiError),
    /// cluster.conf unreadable.
    #[error("cannot read {path}: {source}")]
    Read {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// cluster.conf invalid.
    #[error("{path}: {errors}")]
    Conf {
        /// Path.
        path: PathBuf,
        /// The parser's complaints.
        errors: cluster::ConfErrors,
    },
    /// A node's address does not resolve, or this node is not configured.
    #[error("{0}")]
    Address(String),
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr, ClusterError> {
    (host, port)
        .to_socket_addrs()
        .map_err(|e| ClusterError::Address(format!("cannot resolve {host}: {e}")))?
        .next()
        .ok_or_else(|| ClusterError::Address(format!("{host} has no address")))
}

/// Asks fenced for this node's id and reads every node's address from cluster.conf.
pub fn discover(fenced: &Path, conf: &Path, port: u16) -> Result<Discovered, ClusterError> {
    let mut c = Client::connect(fenced)?;
    c.set_timeout(Some(Duration::from_secs(10)))?;
    let status = c.status()?;
    let text =
        std::fs::read_to_string(conf).map_err(|source| ClusterError::Read { path: conf.to_path_buf(), source })?;
    let cc = cluster::parse_conf(&text).map_err(|errors| ClusterError::Conf { path: conf.to_path_buf(), errors })?;
    let me = status.local_nodeid;
    let mut listen = None;
    let mut peers = Vec::new();
    for n in &cc.nodes {
        let addr = resolve(n.ring0_addr(), port)?;
        if n.nodeid == me {
            listen = Some(addr);
        } else {
            peers.push((n.nodeid, addr));
        }
    }
    let listen =
        listen.ok_or_else(|| ClusterError::Address(format!("this node (id {me}) is not in {}", conf.display())))?;
    Ok(Discovered { node_id: me, listen, peers })
}

/// What the cluster layer's events mean for the lock manager.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// Feed these to the node, in order.
    pub events: Vec<MemberEvent>,
    /// Wait (with `wait_fenced`) for these nodes, then feed [`MemberEvent::Fenced`].
    pub wait_for: Vec<NodeId>,
}

/// Turns fenced's event stream into [`MemberEvent`]s (sans-IO).
#[derive(Debug)]
pub struct Tracker {
    me: NodeId,
    epoch: u64,
    members: Vec<NodeId>,
    quorate: Option<bool>,
}

impl Tracker {
    /// A tracker for node `me`; nothing known yet.
    pub fn new(me: NodeId) -> Tracker {
        Tracker { me, epoch: 0, members: Vec::new(), quorate: None }
    }

    /// The current epoch (0 before the first member list).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// One event from fenced's subscription.
    pub fn on_event(&mut self, ev: &Event) -> Step {
        let mut step = Step::default();
        match ev {
            Event::Membership { quorate, members, ring_seq } => {
                let mut members = members.clone();
                members.sort_unstable();
                members.dedup();
                // Without this node in the list (not joined, or cut off) nothing may be granted.
                let quorate = *quorate && members.contains(&self.me);
                if !quorate && self.quorate != Some(false) {
                    step.events.push(MemberEvent::Quorum { quorate: false });
                }
                if members.contains(&self.me) && members != self.members {
                    let failed: Vec<NodeId> = self.members.iter().copied().filter(|n| !members.contains(n)).collect();
                    self.epoch = match ring_seq {
                        Some(seq) if *seq > self.epoch => *seq,
                        Some(seq) => {
                            // Never expected: epochs must grow, so count instead.
                            warn!(ring_seq = seq, epoch = self.epoch, "ring sequence number went backwards");
                            self.epoch + 1
                        }
                        None => self.epoch + 1,
                    };
                    step.events.push(MemberEvent::Members {
                        epoch: self.epoch,
                        members: members.clone(),
                        failed: failed.clone(),
                    });
                    step.wait_for = failed;
                    self.members = members;
                }
                if quorate && self.quorate != Some(true) {
                    step.events.push(MemberEvent::Quorum { quorate: true });
                }
                self.quorate = Some(quorate);
            }
            Event::Fenced { nodeid, .. } => step.events.push(MemberEvent::Fenced { node: *nodeid }),
            Event::Config { .. } => {}
        }
        step
    }

    /// The connection to fenced is gone: nothing may be granted until it is back.
    pub fn on_lost(&mut self) -> Step {
        let mut step = Step::default();
        if self.quorate != Some(false) {
            step.events.push(MemberEvent::Quorum { quorate: false });
        }
        self.quorate = None;
        step
    }
}

/// What the cluster threads tell the daemon.
#[derive(Debug)]
pub(crate) enum Input {
    /// An event from the subscription.
    Event(Event),
    /// The subscription broke (fenced gone); it is being re-established.
    Lost,
    /// `wait_fenced` answered: the node is safe.
    Safe(NodeId),
}

/// Follows fenced's subscription forever on its own thread, reconnecting once a second.
pub(crate) fn spawn_subscriber(src: &ClusterSource, tx: tokio::sync::mpsc::UnboundedSender<Input>) {
    let path = src.fenced.clone();
    std::thread::spawn(move || loop {
        let r = (|| -> Result<(), cluster::api::ApiError> {
            let mut c = Client::connect(&path)?;
            c.subscribe()?;
            info!(path = %path.display(), "subscribed to fenced");
            loop {
                let ev = c.next_event()?;
                if tx.send(Input::Event(ev)).is_err() {
                    return Ok(());
                }
            }
        })();
        if tx.is_closed() {
            return;
        }
        if let Err(e) = r {
            warn!(error = %e, "lost fenced; nothing is granted until it is back");
        }
        if tx.send(Input::Lost).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_secs(1));
    });
}

/// Waits on its own thread until fenced says `node` is safe, then reports it.
pub(crate) fn spawn_wait_fenced(src: &ClusterSource, node: NodeId, tx: tokio::sync::mpsc::UnboundedSender<Input>) {
    let path = src.fenced.clone();
    std::thread::spawn(move || loop {
        info!(node, "waiting for fenced to declare the node safe");
        match Client::connect(&path).and_then(|mut c| c.wait_fenced(node)) {
            Ok(()) => {
                let _ = tx.send(Input::Safe(node));
                return;
            }
            Err(e) => {
                warn!(node, error = %e, "wait_fenced failed; retrying");
                if tx.is_closed() {
                    return;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(quorate: bool, members: &[u32]) -> Event {
        Event::Membership { quorate, members: members.to_vec(), ring_seq: None }
    }

    fn r(quorate: bool, members: &[u32], seq: u64) -> Event {
        Event::Membership { quorate, members: members.to_vec(), ring_seq: Some(seq) }
    }

    #[test]
    fn ring_sequence_number_is_the_epoch() {
        let mut t = Tracker::new(1);
        let s = t.on_event(&r(true, &[1, 2, 3], 12));
        assert_eq!(
            s.events,
            vec![
                MemberEvent::Members { epoch: 12, members: vec![1, 2, 3], failed: vec![] },
                MemberEvent::Quorum { quorate: true }
            ]
        );
        // A quorum-only change on the same ring: no new epoch.
        assert_eq!(t.on_event(&r(false, &[1, 2, 3], 12)).events, vec![MemberEvent::Quorum { quorate: false }]);
        assert_eq!(t.epoch(), 12);
        let s = t.on_event(&r(true, &[1, 2], 16));
        assert_eq!(
            s.events,
            vec![
                MemberEvent::Members { epoch: 16, members: vec![1, 2], failed: vec![3] },
                MemberEvent::Quorum { quorate: true }
            ]
        );
        assert_eq!(s.wait_for, vec![3]);
        assert_eq!(t.epoch(), 16);
    }

    #[test]
    fn a_restarted_tracker_agrees_with_a_running_one() {
        // Node 1 has followed the cluster since ring 4; node 2's daemon starts at ring 20.
        let mut old = Tracker::new(1);
        old.on_event(&r(true, &[1], 4));
        old.on_event(&r(true, &[1, 2], 8));
        old.on_event(&r(true, &[1, 2, 3], 20));
        let mut new = Tracker::new(2);
        let s = new.on_event(&r(true, &[3, 2, 1], 20));
        assert_eq!(s.events[0], MemberEvent::Members { epoch: 20, members: vec![1, 2, 3], failed: vec![] });
        assert_eq!(new.epoch(), old.epoch());
        // And they stay in step.
        let a = old.on_event(&r(true, &[1, 2], 24));
        let b = new.on_event(&r(true, &[1, 2], 24));
        assert_eq!(a, b);
        assert_eq!(old.epoch(), 24);
    }

    #[test]
    fn without_ring_ids_epochs_count_and_never_go_back() {
        let mut t = Tracker::new(1);
        t.on_event(&m(true, &[1, 2]));
        assert_eq!(t.epoch(), 1);
        t.on_event(&r(true, &[1, 2, 3], 9));
        assert_eq!(t.epoch(), 9);
        // A sequence number that does not grow (never sent by corosync) still gives a new epoch.
        let s = t.on_event(&r(true, &[1, 3], 9));
        assert_eq!(s.events, vec![MemberEvent::Members { epoch: 10, members: vec![1, 3], failed: vec![2] }]);
        t.on_event(&m(true, &[1]));
        assert_eq!(t.epoch(), 11);
    }

    #[test]
    fn first_view_then_loss_then_fence() {
        let mut t = Tracker::new(1);
        let s = t.on_event(&m(true, &[3, 1, 2]));
        assert_eq!(
            s.events,
            vec![
                MemberEvent::Members { epoch: 1, members: vec![1, 2, 3], failed: vec![] },
                MemberEvent::Quorum { quorate: true }
            ]
        );
        assert!(s.wait_for.is_empty());
        // Same list again (fenced re-sends on reconnect): nothing.
        assert_eq!(t.on_event(&m(true, &[1, 2, 3])), Step::default());
        let s = t.on_event(&m(true, &[1, 2]));
        assert_eq!(s.events, vec![MemberEvent::Members { epoch: 2, members: vec![1, 2], failed: vec![3] }]);
        assert_eq!(s.wait_for, vec![3]);
        let s = t.on_event(&Event::Fenced { nodeid: 3, name: "node3".into(), method: "manual".into() });
        assert_eq!(s.events, vec![MemberEvent::Fenced { node: 3 }]);
        assert_eq!(t.epoch(), 2);
    }

    #[test]
    fn quorum_loss_and_return() {
        let mut t = Tracker::new(2);
        t.on_event(&m(true, &[1, 2, 3]));
        let s = t.on_event(&m(false, &[2]));
        assert_eq!(
            s.events,
            vec![
                MemberEvent::Quorum { quorate: false },
                MemberEvent::Members { epoch: 2, members: vec![2], failed: vec![1, 3] }
            ]
        );
        let s = t.on_event(&m(true, &[1, 2, 3]));
        assert_eq!(
            s.events,
            vec![
                MemberEvent::Members { epoch: 3, members: vec![1, 2, 3], failed: vec![] },
                MemberEvent::Quorum { quorate: true }
            ]
        );
    }

    #[test]
    fn a_list_without_this_node_only_stops_granting() {
        let mut t = Tracker::new(1);
        let s = t.on_event(&m(true, &[2, 3]));
        assert_eq!(s.events, vec![MemberEvent::Quorum { quorate: false }]);
        assert_eq!(t.epoch(), 0);
        let s = t.on_lost();
        assert!(s.events.is_empty());
        t.on_event(&m(true, &[1, 2]));
        let s = t.on_lost();
        assert_eq!(s.events, vec![MemberEvent::Quorum { quorate: false }]);
        // Back: the same list again only restores quorum.
        let s = t.on_event(&m(true, &[1, 2]));
        assert_eq!(s.events, vec![MemberEvent::Quorum { quorate: true }]);
    }
}
