//! The fence domain's decisions as a sans-IO state machine.
//!
//! [`FenceDomain`] is fed what the daemon observes — quorum and cluster membership, the
//! fence group's membership (a corosync process group of every running fenced), agent
//! results and "node N was fenced" messages delivered in order to every member — each with a
//! monotonic `now`. It answers with [`Action`]s for the driver to perform: run one fence
//! method against a victim, announce a successful fence to the group, tell local clients.
//!
//! Rules:
//! - A domain member that fails (its node goes down, or its fenced dies) becomes a victim,
//!   eligible for fencing after `post_fail_delay`; if it is back in the cluster before it
//!   was fenced (within the delay, or because every method failed so far), it is not fenced.
//! - When this node starts the domain alone, after `post_join_delay` every configured node
//!   that is not a cluster member becomes a victim (startup fencing).
//! - A victim is fenced only once the quorum membership no longer lists it: corosync may
//!   deliver the group change before the quorum change, and acting on the old quorum state
//!   would let a partition that is about to lose quorum fence the others. (So a node whose
//!   fenced died but whose corosync still runs is fenced only once it leaves the cluster.)
//! - Only a quorate node acts, and only one: the lowest node id among the domain members that
//!   are cluster members. Every member keeps the victim list, so if that node dies the next
//!   one carries on.
//! - A victim's methods are tried in order; a method succeeds when all its devices succeed;
//!   when all fail, the loop starts again after [`RETRY_DELAY`].
//! - A victim counts as fenced only when the announcement is delivered back through the
//!   group, so every member learns it in the same order.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;

/// Pause before looping over a victim's methods again after all failed.
pub const RETRY_DELAY: Duration = Duration::from_secs(3);

/// Why a member left the fence group (from corosync's CPG reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveReason {
    /// Clean leave (fenced stopped through cman_tool leave): never fenced.
    Leave,
    /// The node went down.
    NodeDown,
    /// The node is up but its fenced died.
    ProcDown,
}

/// What the driver observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Quorum state and cluster membership (node ids) changed.
    Quorum { quorate: bool, members: BTreeSet<u32> },
    /// The fence group's membership changed.
    Group { members: BTreeSet<u32>, left: Vec<(u32, LeaveReason)> },
    /// A fence method finished.
    AgentDone { victim: u32, method: usize, ok: bool },
    /// A "node fenced" announcement was delivered by the group (ours included).
    Fenced { victim: u32, by: u32, method: String, at_unix_ms: u64 },
    /// Time passed.
    Tick,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Run method `method` (index into the node's methods) against `victim`, then feed
    /// [`Input::AgentDone`].
    RunMethod { victim: u32, method: usize },
    /// Multicast "victim fenced by us with this method" to the group.
    Announce { victim: u32, method: String },
    /// Tell local clients that `victim` is fenced.
    NotifyFenced { victim: u32 },
    /// Log line for the operator.
    Log(String),
}

/// One node as the fence domain knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Node id.
    pub nodeid: u32,
    /// Name.
    pub name: String,
    /// Names of its fence methods, in order.
    pub methods: Vec<String>,
}

/// A completed fence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FenceRecord {
    /// Node that ran the agent.
    pub by: u32,
    /// Method that succeeded.
    pub method: String,
    /// Wall-clock time of the announcement.
    pub at_unix_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Victim {
    eligible_at: Duration,
    next_method: usize,
    retry_at: Duration,
    failures: u32,
}

/// A pending victim, for status displays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PendingVictim {
    /// Node id.
    pub nodeid: u32,
    /// Failed method attempts so far.
    pub failures: u32,
}

/// The fence domain state machine.
#[derive(Debug, Clone)]
pub struct FenceDomain {
    local: u32,
    nodes: BTreeMap<u32, NodeInfo>,
    post_fail_delay: Duration,
    post_join_delay: Duration,
    quorate: bool,
    members: BTreeSet<u32>,
    group: BTreeSet<u32>,
    joined: bool,
    startup_at: Option<Duration>,
    victims: BTreeMap<u32, Victim>,
    /// Group members that left the quorum membership before the group told why.
    departed: BTreeSet<u32>,
    running: Option<(u32, usize)>,
    announced: BTreeSet<u32>,
    last: BTreeMap<u32, FenceRecord>,
}

impl FenceDomain {
    /// A domain for node `local` with the configured nodes and delays.
    pub fn new(local: u32, nodes: Vec<NodeInfo>, post_fail_delay: Duration, post_join_delay: Duration) -> Self {
        FenceDomain {
            local,
            nodes: nodes.into_iter().map(|n| (n.nodeid, n)).collect(),
            post_fail_delay,
            post_join_delay,
            quorate: false,
            members: BTreeSet::new(),
            group: BTreeSet::new(),
            joined: false,
            startup_at: None,
            victims: BTreeMap::new(),
            departed: BTreeSet::new(),
            running: None,
            announced: BTreeSet::new(),
            last: BTreeMap::new(),
        }
    }

    /// Builds the node list from a cluster.conf.
    pub fn from_conf(local: u32, conf: &crate::conf::ClusterConf) -> Self {
        let nodes = conf
            .nodes
            .iter()
            .map(|n| NodeInfo {
                nodeid: n.nodeid,
                name: n.name.clone(),
                methods: n.fence.iter().map(|m| m.name.clone()).collect(),
            })
            .collect();
        Self::new(
            local,
            nodes,
            Duration::from_secs(conf.fence_daemon.post_fail_delay_s.into()),
            Duration::from_secs(conf.fence_daemon.post_join_delay_s.into()),
        )
    }

    /// Replaces the configured nodes (a new cluster.conf); pending victims stay pending.
    pub fn set_nodes(&mut self, conf: &crate::conf::ClusterConf) {
        let fresh = Self::from_conf(self.local, conf);
        self.nodes = fresh.nodes;
        self.post_fail_delay = fresh.post_fail_delay;
        self.post_join_delay = fresh.post_join_delay;
    }

    /// Quorate now.
    pub fn quorate(&self) -> bool {
        self.quorate
    }

    /// Cluster members.
    pub fn members(&self) -> &BTreeSet<u32> {
        &self.members
    }

    /// Fence group members.
    pub fn group(&self) -> &BTreeSet<u32> {
        &self.group
    }

    /// Victims not yet fenced.
    pub fn pending(&self) -> Vec<PendingVictim> {
        self.victims.iter().map(|(id, v)| PendingVictim { nodeid: *id, failures: v.failures }).collect()
    }

    /// True when `nodeid` is waiting to be fenced.
    pub fn is_pending(&self, nodeid: u32) -> bool {
        self.victims.contains_key(&nodeid)
    }

    /// True when nothing `nodeid` did can still reach shared storage unnoticed: it is a
    /// member, or it left cleanly, or it was fenced. False from the moment a fence domain
    /// member vanishes from the membership (even before the group says why) until then.
    /// This is what lock and journal recovery wait for.
    pub fn is_safe(&self, nodeid: u32) -> bool {
        !self.victims.contains_key(&nodeid) && !self.departed.contains(&nodeid)
    }

    /// The last fence of each node.
    pub fn last_fences(&self) -> &BTreeMap<u32, FenceRecord> {
        &self.last
    }

    /// Configured nodes.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.values()
    }

    /// The member that fences: the lowest node id in the group that is a cluster member.
    pub fn master(&self) -> Option<u32> {
        self.group.iter().copied().find(|id| self.members.contains(id))
    }

    fn name(&self, id: u32) -> String {
        self.nodes.get(&id).map(|n| n.name.clone()).unwrap_or_else(|| format!("nodeid {id}"))
    }

    fn add_victim(&mut self, id: u32, now: Duration, delay: Duration, out: &mut Vec<Action>) {
        if id == self.local || self.victims.contains_key(&id) {
            return;
        }
        self.announced.remove(&id);
        self.victims.insert(id, Victim { eligible_at: now + delay, next_method: 0, retry_at: now, failures: 0 });
        out.push(Action::Log(format!("{} is a fence victim (eligible in {} s)", self.name(id), delay.as_secs())));
    }

    /// Feeds one observation; returns what to do.
    pub fn step(&mut self, input: Input, now: Duration) -> Vec<Action> {
        let mut out = Vec::new();
        match input {
            Input::Quorum { quorate, members } => {
                if quorate != self.quorate {
                    out.push(Action::Log(format!("quorum {}", if quorate { "regained" } else { "lost" })));
                }
                self.quorate = quorate;
                for gone in self.members.difference(&members) {
                    if self.group.contains(gone) && *gone != self.local {
                        self.departed.insert(*gone);
                    }
                }
                self.members = members;
                let members = &self.members;
                self.departed.retain(|id| !members.contains(id));
                // A victim the quorum membership lists again rejoined before it was fenced
                // (within post_fail_delay, or unfenceable until then): it is not fenced.
                let back: Vec<(u32, bool)> = self
                    .victims
                    .iter()
                    .filter(|(id, _)| {
                        self.members.contains(id)
                            && self.running.map(|r| r.0) != Some(**id)
                            && !self.announced.contains(id)
                    })
                    .map(|(id, v)| (*id, now < v.eligible_at))
                    .collect();
                for (id, within_delay) in back {
                    self.victims.remove(&id);
                    let why = if within_delay { "within post_fail_delay" } else { "before it could be fenced" };
                    out.push(Action::Log(format!("{} rejoined the cluster {why}; not fencing it", self.name(id))));
                }
            }
            Input::Group { members, left } => {
                if !self.joined && members.contains(&self.local) {
                    self.joined = true;
                    if members.len() == 1 {
                        self.startup_at = Some(now + self.post_join_delay);
                    }
                }
                self.group = members;
                for (id, _) in &left {
                    self.departed.remove(id);
                }
                for (id, reason) in left {
                    match reason {
                        LeaveReason::Leave => {}
                        LeaveReason::NodeDown | LeaveReason::ProcDown => {
                            self.add_victim(id, now, self.post_fail_delay, &mut out)
                        }
                    }
                }
            }
            Input::AgentDone { victim, method, ok } => {
                if self.running == Some((victim, method)) {
                    self.running = None;
                }
                let methods = self.nodes.get(&victim).map(|n| n.methods.clone()).unwrap_or_default();
                let mname = methods.get(method).cloned().unwrap_or_default();
                let vname = self.name(victim);
                if let Some(v) = self.victims.get_mut(&victim) {
                    if ok {
                        if self.announced.insert(victim) {
                            out.push(Action::Announce { victim, method: mname });
                        }
                    } else {
                        v.failures += 1;
                        v.next_method = method + 1;
                        if v.next_method >= methods.len() {
                            v.next_method = 0;
                            v.retry_at = now + RETRY_DELAY;
                        }
                        out.push(Action::Log(format!(
                            "fencing {vname} with method \"{mname}\" failed; {}",
                            if v.next_method == 0 { "all methods failed, retrying" } else { "trying the next method" }
                        )));
                    }
                }
            }
            Input::Fenced { victim, by, method, at_unix_ms } => {
                self.victims.remove(&victim);
                self.announced.remove(&victim);
                if self.running.map(|r| r.0) == Some(victim) {
                    self.running = None;
                }
                self.last.insert(victim, FenceRecord { by, method, at_unix_ms });
                out.push(Action::NotifyFenced { victim });
            }
            Input::Tick => {}
        }
        self.decide(now, &mut out);
        out
    }

    fn decide(&mut self, now: Duration, out: &mut Vec<Action>) {
        if !self.quorate {
            return;
        }
        if let Some(at) = self.startup_at {
            if now >= at {
                self.startup_at = None;
                let absent: Vec<u32> = self.nodes.keys().copied().filter(|id| !self.members.contains(id)).collect();
                for id in absent {
                    if !self.last.contains_key(&id) {
                        self.add_victim(id, now, Duration::ZERO, out);
                    }
                }
            }
        }
        if self.master() != Some(self.local) || self.running.is_some() {
            return;
        }
        let next = self
            .victims
            .iter()
            .find(|(id, v)| {
                now >= v.eligible_at && now >= v.retry_at && !self.announced.contains(id) && !self.members.contains(id)
            })
            .map(|(id, v)| (*id, v.next_method));
        if let Some((victim, method)) = next {
            let nmethods = self.nodes.get(&victim).map(|n| n.methods.len()).unwrap_or(0);
            if nmethods == 0 {
                let vname = self.name(victim);
                if let Some(v) = self.victims.get_mut(&victim) {
                    if v.failures == 0 {
                        out.push(Action::Log(format!(
                            "{vname} has no fence methods in cluster.conf; it cannot be fenced (use fence_ack_manual)"
                        )));
                    }
                    v.failures += 1;
                    v.retry_at = now + RETRY_DELAY;
                }
                return;
            }
            self.running = Some((victim, method));
            out.push(Action::RunMethod { victim, method });
        }
    }

    /// Marks `victim` as fenced by hand (fence_node, fence_ack_manual): the driver announces.
    pub fn manual(&mut self, victim: u32) -> Vec<Action> {
        self.announced.insert(victim);
        vec![Action::Announce { victim, method: "manual".into() }]
    }

    /// When the next timer-driven decision is due, if any.
    pub fn next_deadline(&self) -> Option<Duration> {
        let v = self.victims.values().map(|v| v.eligible_at.max(v.retry_at)).min();
        match (v, self.startup_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(ids: &[u32]) -> BTreeSet<u32> {
        ids.iter().copied().collect()
    }

    fn domain(local: u32, n: u32, methods: usize, fail_delay: u64) -> FenceDomain {
        let nodes = (1..=n)
            .map(|id| NodeInfo {
                nodeid: id,
                name: format!("node{id}"),
                methods: (0..methods).map(|m| format!("m{m}")).collect(),
            })
            .collect();
        FenceDomain::new(local, nodes, Duration::from_secs(fail_delay), Duration::from_secs(6))
    }

    fn runs(actions: &[Action]) -> Vec<(u32, usize)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::RunMethod { victim, method } => Some((*victim, *method)),
                _ => None,
            })
            .collect()
    }

    fn t(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn formed(local: u32, n: u32, methods: usize, fail_delay: u64) -> FenceDomain {
        let mut d = domain(local, n, methods, fail_delay);
        let all: Vec<u32> = (1..=n).collect();
        d.step(Input::Group { members: s(&all), left: vec![] }, t(0));
        d.step(Input::Quorum { quorate: true, members: s(&all) }, t(0));
        d
    }

    #[test]
    fn lowest_member_fences_a_lost_node_and_falls_through_methods() {
        let mut d1 = formed(1, 3, 2, 0);
        let mut d2 = formed(2, 3, 2, 0);
        for d in [&mut d1, &mut d2] {
            d.step(Input::Quorum { quorate: true, members: s(&[1, 2]) }, t(10));
        }
        let a1 = d1.step(Input::Group { members: s(&[1, 2]), left: vec![(3, LeaveReason::NodeDown)] }, t(10));
        let a2 = d2.step(Input::Group { members: s(&[1, 2]), left: vec![(3, LeaveReason::NodeDown)] }, t(10));
        assert_eq!(runs(&a1), vec![(3, 0)]);
        assert!(runs(&a2).is_empty(), "only the lowest node id fences");
        // The first method fails: the second runs at once.
        let a = d1.step(Input::AgentDone { victim: 3, method: 0, ok: false }, t(11));
        assert_eq!(runs(&a), vec![(3, 1)]);
        let a = d1.step(Input::AgentDone { victim: 3, method: 1, ok: true }, t(12));
        assert!(a.contains(&Action::Announce { victim: 3, method: "m1".into() }));
        // Not fenced until the announcement comes back through the group.
        assert!(d1.is_pending(3) && d2.is_pending(3));
        for d in [&mut d1, &mut d2] {
            let a = d.step(Input::Fenced { victim: 3, by: 1, method: "m1".into(), at_unix_ms: 5 }, t(12));
            assert_eq!(a, vec![Action::NotifyFenced { victim: 3 }]);
            assert!(!d.is_pending(3));
            assert_eq!(d.last_fences()[&3].method, "m1");
        }
    }

    #[test]
    fn all_methods_failing_loops_after_a_pause() {
        let mut d = formed(1, 2, 2, 0);
        d.step(Input::Quorum { quorate: true, members: s(&[1]) }, t(1));
        let a = d.step(Input::Group { members: s(&[1]), left: vec![(2, LeaveReason::NodeDown)] }, t(1));
        assert_eq!(runs(&a), vec![(2, 0)]);
        assert_eq!(runs(&d.step(Input::AgentDone { victim: 2, method: 0, ok: false }, t(1))), vec![(2, 1)]);
        assert!(runs(&d.step(Input::AgentDone { victim: 2, method: 1, ok: false }, t(1))).is_empty());
        assert!(runs(&d.step(Input::Tick, t(2))).is_empty());
        assert_eq!(d.next_deadline(), Some(t(1) + RETRY_DELAY));
        assert_eq!(runs(&d.step(Input::Tick, t(1) + RETRY_DELAY)), vec![(2, 0)]);
        assert_eq!(d.pending()[0].failures, 2);
    }

    #[test]
    fn inquorate_partition_fences_no_one() {
        // Node 3 alone after a partition: not quorate, so it never fences 1 and 2.
        let mut d3 = formed(3, 3, 1, 0);
        d3.step(Input::Quorum { quorate: false, members: s(&[3]) }, t(5));
        let a = d3.step(
            Input::Group { members: s(&[3]), left: vec![(1, LeaveReason::NodeDown), (2, LeaveReason::NodeDown)] },
            t(5),
        );
        assert!(runs(&a).is_empty());
        for i in 6..100 {
            assert!(runs(&d3.step(Input::Tick, t(i))).is_empty());
        }
        // The pair is quorate and fences node 3.
        let mut d1 = formed(1, 3, 1, 0);
        d1.step(Input::Quorum { quorate: true, members: s(&[1, 2]) }, t(5));
        let a = d1.step(Input::Group { members: s(&[1, 2]), left: vec![(3, LeaveReason::NodeDown)] }, t(5));
        assert_eq!(runs(&a), vec![(3, 0)]);
    }

    #[test]
    fn group_change_before_quorum_change_does_not_fence() {
        // The lone node learns that 1 and 2 left the group while its quorum view is still
        // the old one (quorate, all three members): it must wait for the quorum update.
        let mut d3 = formed(3, 3, 1, 0);
        let a = d3.step(
            Input::Group { members: s(&[3]), left: vec![(1, LeaveReason::NodeDown), (2, LeaveReason::NodeDown)] },
            t(5),
        );
        assert!(runs(&a).is_empty());
        let a = d3.step(Input::Quorum { quorate: false, members: s(&[3]) }, t(6));
        assert!(runs(&a).is_empty());
        // The pair sees the same order and fences once its quorum view drops node 3.
        let mut d1 = formed(1, 3, 1, 0);
        let a = d1.step(Input::Group { members: s(&[1, 2]), left: vec![(3, LeaveReason::NodeDown)] }, t(5));
        assert!(runs(&a).is_empty());
        let a = d1.step(Input::Quorum { quorate: true, members: s(&[1, 2]) }, t(6));
        assert_eq!(runs(&a), vec![(3, 0)]);
    }

    #[test]
    fn post_fail_delay_forgives_a_quick_return() {
        let mut d = formed(1, 3, 1, 10);
        d.step(Input::Quorum { quorate: true, members: s(&[1, 2]) }, t(0));
        let a = d.step(Input::Group { members: s(&[1, 2]), left: vec![(3, LeaveReason::NodeDown)] }, t(0));
        assert!(runs(&a).is_empty());
        assert!(runs(&d.step(Input::Tick, t(9))).is_empty());
        d.step(Input::Quorum { quorate: true, members: s(&[1, 2, 3]) }, t(9));
        assert!(!d.is_pending(3));
        // A second failure that lasts past the delay is fenced.
        d.step(Input::Quorum { quorate: true, members: s(&[1, 2]) }, t(20));
        d.step(Input::Group { members: s(&[1, 2]), left: vec![(3, LeaveReason::NodeDown)] }, t(20));
        assert!(runs(&d.step(Input::Tick, t(29))).is_empty());
        assert_eq!(runs(&d.step(Input::Tick, t(30))), vec![(3, 0)]);
    }

    #[test]
    fn unfenceable_victim_that_rejoins_is_dropped() {
        let mut d = formed(1, 3, 1, 0);
        d.step(Input::Quorum { quorate: true, members: s(&[1, 2]) }, t(1));
        let a = d.step(Input::Group { members: s(&[1, 2]), left: vec![(3, LeaveReason::NodeDown)] }, t(1));
        assert_eq!(runs(&a), vec![(3, 0)]);
        d.step(Input::AgentDone { victim: 3, method: 0, ok: false }, t(2));
        assert!(d.is_pending(3));
        // The partition heals before a retry succeeds.
        d.step(Input::Quorum { quorate: true, members: s(&[1, 2, 3]) }, t(3));
        assert!(!d.is_pending(3));
        assert!(runs(&d.step(Input::Tick, t(60))).is_empty());
    }

    #[test]
    fn a_departed_member_is_unsafe_until_fenced_in_either_event_order() {
        // Quorum change first: unsafe at once, before the group says why.
        let mut d = formed(1, 3, 1, 0);
        assert!(d.is_safe(3));
        d.step(Input::Quorum { quorate: true, members: s(&[1, 2]) }, t(1));
        assert!(!d.is_safe(3));
        d.step(Input::Group { members: s(&[1, 2]), left: vec![(3, LeaveReason::NodeDown)] }, t(1));
        assert!(!d.is_safe(3));
        d.step(Input::AgentDone { victim: 3, method: 0, ok: true }, t(2));
        assert!(!d.is_safe(3));
        d.step(Input::Fenced { victim: 3, by: 1, method: "m0".into(), at_unix_ms: 0 }, t(2));
        assert!(d.is_safe(3));
        // Group change first, clean leave: safe once the group says so.
        let mut d = formed(1, 3, 1, 0);
        d.step(Input::Quorum { quorate: true, members: s(&[1, 2]) }, t(1));
        assert!(!d.is_safe(3));
        d.step(Input::Group { members: s(&[1, 2]), left: vec![(3, LeaveReason::Leave)] }, t(1));
        assert!(d.is_safe(3));
        // A node outside the fence domain never blocks anyone.
        let mut d = domain(1, 3, 1, 0);
        d.step(Input::Group { members: s(&[1, 2]), left: vec![] }, t(0));
        d.step(Input::Quorum { quorate: true, members: s(&[1, 2, 3]) }, t(0));
        d.step(Input::Quorum { quorate: true, members: s(&[1, 2]) }, t(1));
        assert!(d.is_safe(3));
    }

    #[test]
    fn clean_leave_is_not_fenced() {
        let mut d = formed(1, 3, 1, 0);
        let a = d.step(Input::Group { members: s(&[1, 2]), left: vec![(3, LeaveReason::Leave)] }, t(1));
        assert!(runs(&a).is_empty());
        assert!(d.pending().is_empty());
    }

    #[test]
    fn master_death_hands_over_pending_victims() {
        let mut d2 = formed(2, 3, 1, 0);
        d2.step(Input::Quorum { quorate: true, members: s(&[1, 2]) }, t(1));
        let a = d2.step(Input::Group { members: s(&[1, 2]), left: vec![(3, LeaveReason::NodeDown)] }, t(1));
        assert!(runs(&a).is_empty());
        // Node 1 (fencing node 3) dies too; 2 alone is not quorate with 3 expected votes ...
        d2.step(Input::Quorum { quorate: false, members: s(&[2]) }, t(2));
        let a = d2.step(Input::Group { members: s(&[2]), left: vec![(1, LeaveReason::NodeDown)] }, t(2));
        assert!(runs(&a).is_empty());
        // ... until quorum comes back (say expected votes were lowered): then 2 fences both.
        let a = d2.step(Input::Quorum { quorate: true, members: s(&[2]) }, t(3));
        assert_eq!(runs(&a), vec![(1, 0)]);
        // Once node 1's fence succeeded, node 3's starts (one agent at a time).
        let a = d2.step(Input::AgentDone { victim: 1, method: 0, ok: true }, t(3));
        assert_eq!(runs(&a), vec![(3, 0)]);
        let a = d2.step(Input::Fenced { victim: 1, by: 2, method: "m0".into(), at_unix_ms: 1 }, t(3));
        assert_eq!(a, vec![Action::NotifyFenced { victim: 1 }]);
    }

    #[test]
    fn startup_fencing_after_post_join_delay() {
        // Two-node mode: node 1 starts alone, quorate, and fences node 2 after the delay.
        let mut d = domain(1, 2, 1, 0);
        d.step(Input::Quorum { quorate: true, members: s(&[1]) }, t(0));
        d.step(Input::Group { members: s(&[1]), left: vec![] }, t(0));
        assert!(runs(&d.step(Input::Tick, t(5))).is_empty());
        assert_eq!(runs(&d.step(Input::Tick, t(6))), vec![(2, 0)]);
        // Had node 2 joined in time, nothing would happen.
        let mut d = domain(1, 2, 1, 0);
        d.step(Input::Quorum { quorate: true, members: s(&[1]) }, t(0));
        d.step(Input::Group { members: s(&[1]), left: vec![] }, t(0));
        d.step(Input::Quorum { quorate: true, members: s(&[1, 2]) }, t(3));
        assert!(runs(&d.step(Input::Tick, t(7))).is_empty());
        assert!(d.pending().is_empty());
    }

    /// A simulated cluster: every node's domain sees the same ordered group events; agents
    /// succeed after a given number of failures; announcements are delivered to all.
    #[test]
    fn simulated_cluster_fences_each_lost_node_exactly_once() {
        for seed in 0u64..50 {
            let n = 5u32;
            let mut rng = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let mut next = || {
                rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (rng >> 33) as u32
            };
            let mut doms: BTreeMap<u32, FenceDomain> = (1..=n).map(|i| (i, formed(i, n, 2, 0))).collect();
            let mut alive: BTreeSet<u32> = (1..=n).collect();
            let mut fenced_count: BTreeMap<u32, u32> = BTreeMap::new();
            let mut now = t(1);
            // Kill two random nodes, one after the other.
            for _ in 0..2 {
                let victims: Vec<u32> = alive.iter().copied().collect();
                let v = victims[(next() as usize) % victims.len()];
                alive.remove(&v);
                let quorate = alive.len() as u32 * 2 > n;
                let mut queue: Vec<(u32, Action)> = Vec::new();
                for id in alive.clone() {
                    // Corosync may deliver the group change and the quorum change in either order.
                    let mut inputs = vec![
                        Input::Quorum { quorate, members: alive.clone() },
                        Input::Group { members: alive.clone(), left: vec![(v, LeaveReason::NodeDown)] },
                    ];
                    if next() % 2 == 0 {
                        inputs.reverse();
                    }
                    let d = doms.get_mut(&id).unwrap();
                    for input in inputs {
                        queue.extend(d.step(input, now).into_iter().map(|a| (id, a)));
                    }
                }
                for _round in 0..200 {
                    now += Duration::from_millis(500);
                    let mut more = Vec::new();
                    for (id, a) in queue.drain(..) {
                        match a {
                            Action::RunMethod { victim, method } => {
                                let ok = next() % 3 != 0;
                                let d = doms.get_mut(&id).unwrap();
                                more.extend(
                                    d.step(Input::AgentDone { victim, method, ok }, now).into_iter().map(|a| (id, a)),
                                );
                            }
                            Action::Announce { victim, method } => {
                                *fenced_count.entry(victim).or_default() += 1;
                                for other in alive.clone() {
                                    let d = doms.get_mut(&other).unwrap();
                                    let inp = Input::Fenced { victim, by: id, method: method.clone(), at_unix_ms: 0 };
                                    more.extend(d.step(inp, now).into_iter().map(|a| (other, a)));
                                }
                            }
                            _ => {}
                        }
                    }
                    for id in alive.clone() {
                        more.extend(doms.get_mut(&id).unwrap().step(Input::Tick, now).into_iter().map(|a| (id, a)));
                    }
                    queue = more;
                }
                for id in &alive {
                    assert!(doms[id].pending().is_empty(), "seed {seed}: node {id} still has victims");
                }
            }
            assert_eq!(fenced_count.len(), 2, "seed {seed}");
            assert!(fenced_count.values().all(|c| *c == 1), "seed {seed}: {fenced_count:?}");
        }
    }
}
