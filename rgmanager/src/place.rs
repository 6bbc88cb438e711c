//! The placement rule: which node should run a service, given the failover domain, the
//! nodes that can run services now, exclusivity and where starting it already failed.
//!
//! Every node evaluates this with the same inputs (the membership and the service records
//! all nodes read from the DLM), so every node names the same target; the target alone acts.
//!
//! - No domain: every node ranks 1.
//! - A domain ranks its members by priority (ordered; 1 is best) or all at 1 (unordered).
//!   A node outside the domain ranks [`OUTSIDE`] when the domain is unrestricted and may not
//!   run the service when it is restricted.
//! - Exclusive: an exclusive service needs a node running no other service, and a node
//!   running an exclusive service takes no other.
//! - The best rank wins; between equal ranks, rendezvous hashing of (service, node) picks one,
//!   so unordered services spread over the nodes and every node agrees without talking.
//! - An explicit target (`-e -m`, `-r -m`) wins when it is allowed.
//! - A running service moves back ("fails back") when a node of strictly better rank is up,
//!   the domain is ordered (or the service runs outside an unrestricted domain) and the
//!   domain is not `nofailback`.

use std::collections::{BTreeMap, BTreeSet};

use cluster::conf::FailoverDomain;

/// The rank of a node outside an unrestricted domain: worse than any member.
pub const OUTSIDE: u32 = 1000;

/// What runs on a node, for the exclusive rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    /// Services owned (starting, started or stopping), other than the one being placed.
    pub services: u32,
    /// One of them is exclusive.
    pub exclusive: bool,
}

/// The inputs of one placement.
#[derive(Debug, Clone)]
pub struct PlaceInput<'a> {
    /// Service name (the hash key).
    pub service: &'a str,
    /// Its failover domain.
    pub domain: Option<&'a FailoverDomain>,
    /// `exclusive="1"`.
    pub exclusive: bool,
    /// Configured nodes: id and name.
    pub nodes: &'a [(u32, String)],
    /// Nodes that can run services now (members of a quorate partition running rgmanager).
    pub eligible: &'a BTreeSet<u32>,
    /// What already runs where (other services only).
    pub load: &'a BTreeMap<u32, Load>,
    /// Nodes where starting it failed since it last ran.
    pub tried: &'a BTreeSet<u32>,
    /// A node asked for by hand, 0 for none.
    pub target: u32,
}

/// The outcome of a placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Run it on this node.
    Node(u32),
    /// A restricted domain with no member up (RG_EDOMAIN).
    NoDomainMember,
    /// Allowed nodes are up but all run something (RG_EEXCL).
    NoExclusiveNode,
    /// Every allowed node already failed to start it.
    AllTried,
    /// No node can run services at all.
    NoNode,
}

impl PlaceInput<'_> {
    fn name_of(&self, id: u32) -> Option<&str> {
        self.nodes.iter().find(|(i, _)| *i == id).map(|(_, n)| n.as_str())
    }

    /// The rank of node `id` by the domain alone: lower is better; None when the domain
    /// forbids it.
    pub fn rank(&self, id: u32) -> Option<u32> {
        let Some(d) = self.domain else { return Some(1) };
        let name = self.name_of(id)?;
        match d.nodes.iter().find(|n| n.name == name) {
            Some(m) => Some(if d.ordered { m.priority } else { 1 }),
            None if d.restricted => None,
            None => Some(OUTSIDE),
        }
    }

    fn exclusive_ok(&self, id: u32) -> bool {
        let l = self.load.get(&id).copied().unwrap_or_default();
        if self.exclusive {
            l.services == 0
        } else {
            !l.exclusive
        }
    }

    /// The node that should run the service now.
    pub fn best(&self) -> Placement {
        if self.eligible.is_empty() {
            return Placement::NoNode;
        }
        let ranked: Vec<(u32, u32)> = self.eligible.iter().filter_map(|&id| self.rank(id).map(|r| (id, r))).collect();
        if ranked.is_empty() {
            return Placement::NoDomainMember;
        }
        let fits: Vec<(u32, u32)> = ranked.iter().copied().filter(|&(id, _)| self.exclusive_ok(id)).collect();
        if fits.is_empty() {
            return Placement::NoExclusiveNode;
        }
        if self.target != 0 && fits.iter().any(|&(id, _)| id == self.target) {
            return Placement::Node(self.target);
        }
        let open: Vec<(u32, u32)> = fits.into_iter().filter(|(id, _)| !self.tried.contains(id)).collect();
        match self.pick(&open) {
            Some(id) => Placement::Node(id),
            None => Placement::AllTried,
        }
    }

    /// Best rank, then the highest rendezvous hash.
    fn pick(&self, cands: &[(u32, u32)]) -> Option<u32> {
        let best = cands.iter().map(|&(_, r)| r).min()?;
        cands.iter().filter(|&&(_, r)| r == best).max_by_key(|&&(id, _)| hrw(self.service, id)).map(|&(id, _)| id)
    }

    /// Whether a service running on `owner` should move, and where to: a node of strictly
    /// better rank is up and allowed (failback), or the owner may no longer run it.
    pub fn should_move(&self, owner: u32) -> Option<u32> {
        let own_rank = self.rank(owner);
        if own_rank.is_none() {
            // The domain changed under it (restricted, owner left the domain).
            return match self.best() {
                Placement::Node(n) if n != owner => Some(n),
                _ => None,
            };
        }
        let d = self.domain?;
        if d.nofailback {
            return None;
        }
        let own_rank = own_rank.expect("checked");
        let better: Vec<(u32, u32)> = self
            .eligible
            .iter()
            .filter(|&&id| id != owner && self.exclusive_ok(id))
            .filter_map(|&id| self.rank(id).map(|r| (id, r)))
            .filter(|&(_, r)| r < own_rank)
            .collect();
        if !d.ordered && own_rank != OUTSIDE {
            return None;
        }
        self.pick(&better)
    }
}

/// Rendezvous hash of (service, node): FNV-1a over the name, mixed with the id (splitmix64).
pub fn hrw(service: &str, node: u32) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in service.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut z = h ^ u64::from(node).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cluster::conf::DomainNode;
    use proptest::prelude::*;

    fn nodes(n: u32) -> Vec<(u32, String)> {
        (1..=n).map(|i| (i, format!("n{i}"))).collect()
    }

    fn domain(ordered: bool, restricted: bool, nofailback: bool, members: &[(u32, u32)]) -> FailoverDomain {
        FailoverDomain {
            name: "d".into(),
            ordered,
            restricted,
            nofailback,
            nodes: members.iter().map(|&(id, p)| DomainNode { name: format!("n{id}"), priority: p }).collect(),
        }
    }

    struct Case {
        nodes: Vec<(u32, String)>,
        dom: Option<FailoverDomain>,
        up: BTreeSet<u32>,
        load: BTreeMap<u32, Load>,
        tried: BTreeSet<u32>,
        exclusive: bool,
        target: u32,
    }

    impl Case {
        fn new(n: u32, dom: Option<FailoverDomain>, up: &[u32]) -> Case {
            Case {
                nodes: nodes(n),
                dom,
                up: up.iter().copied().collect(),
                load: BTreeMap::new(),
                tried: BTreeSet::new(),
                exclusive: false,
                target: 0,
            }
        }
        fn input(&self) -> PlaceInput<'_> {
            PlaceInput {
                service: "web",
                domain: self.dom.as_ref(),
                exclusive: self.exclusive,
                nodes: &self.nodes,
                eligible: &self.up,
                load: &self.load,
                tried: &self.tried,
                target: self.target,
            }
        }
    }

    /// The example: ordered A=1? No: C first, then B, then D.
    #[test]
    fn ordered_domain_fails_over_in_priority_order_and_back() {
        // n3 priority 1, n2 priority 2, n4 priority 3; n1 outside, restricted.
        let d = domain(true, true, false, &[(3, 1), (2, 2), (4, 3)]);
        let c = Case::new(4, Some(d.clone()), &[1, 2, 3, 4]);
        assert_eq!(c.input().best(), Placement::Node(3));
        let c = Case::new(4, Some(d.clone()), &[1, 2, 4]);
        assert_eq!(c.input().best(), Placement::Node(2));
        let c = Case::new(4, Some(d.clone()), &[1, 4]);
        assert_eq!(c.input().best(), Placement::Node(4));
        let c = Case::new(4, Some(d.clone()), &[1]);
        assert_eq!(c.input().best(), Placement::NoDomainMember);
        // n3 returns while n2 runs it: fail back to n3.
        let c = Case::new(4, Some(d.clone()), &[1, 2, 3, 4]);
        assert_eq!(c.input().should_move(2), Some(3));
        assert_eq!(c.input().should_move(3), None);
        // nofailback: stays.
        let c = Case::new(4, Some(domain(true, true, true, &[(3, 1), (2, 2)])), &[2, 3]);
        assert_eq!(c.input().should_move(2), None);
    }

    #[test]
    fn unrestricted_runs_anywhere_and_comes_back() {
        let d = domain(true, false, false, &[(1, 1)]);
        let c = Case::new(3, Some(d.clone()), &[2, 3]);
        assert!(matches!(c.input().best(), Placement::Node(2 | 3)));
        let c = Case::new(3, Some(d), &[1, 2, 3]);
        assert_eq!(c.input().best(), Placement::Node(1));
        assert_eq!(c.input().should_move(2), Some(1));
        // Unordered unrestricted: outside node moves in when a member returns, members stay.
        let c = Case::new(3, Some(domain(false, false, false, &[(1, 1), (2, 1)])), &[1, 2, 3]);
        assert!(matches!(c.input().should_move(3), Some(1 | 2)));
        assert_eq!(c.input().should_move(2), None);
    }

    #[test]
    fn exclusive_target_and_tried() {
        let mut c = Case::new(3, None, &[1, 2, 3]);
        c.exclusive = true;
        c.load.insert(1, Load { services: 1, exclusive: false });
        c.load.insert(2, Load { services: 2, exclusive: false });
        assert_eq!(c.input().best(), Placement::Node(3));
        c.load.insert(3, Load { services: 1, exclusive: true });
        assert_eq!(c.input().best(), Placement::NoExclusiveNode);
        let mut c = Case::new(3, None, &[1, 2, 3]);
        c.load.insert(2, Load { services: 1, exclusive: true });
        c.target = 2;
        assert_ne!(c.input().best(), Placement::Node(2), "a node running an exclusive service takes no other");
        c.target = 3;
        assert_eq!(c.input().best(), Placement::Node(3));
        c.target = 0;
        c.tried = [1, 3].into_iter().collect();
        assert_eq!(c.input().best(), Placement::AllTried);
        let c = Case::new(3, None, &[]);
        assert_eq!(c.input().best(), Placement::NoNode);
    }

    proptest! {
        /// Whatever the inputs: the chosen node is eligible, allowed by a restricted domain,
        /// not tried, fits exclusivity, and no allowed untried node ranks strictly better.
        #[test]
        fn best_is_sound(
            up in prop::collection::btree_set(1u32..=6, 0..6),
            members in prop::collection::btree_map(1u32..=6, 1u32..=4, 0..6),
            ordered: bool, restricted: bool, exclusive: bool,
            busy in prop::collection::btree_map(1u32..=6, (0u32..3, any::<bool>()), 0..6),
            tried in prop::collection::btree_set(1u32..=6, 0..3),
        ) {
            let mut c = Case::new(6, Some(domain(ordered, restricted, false, &members.iter().map(|(&a, &b)| (a, b)).collect::<Vec<_>>())), &up.iter().copied().collect::<Vec<_>>());
            c.exclusive = exclusive;
            c.load = busy.iter().map(|(&id, &(s, e))| (id, Load { services: s, exclusive: e && s > 0 })).collect();
            c.tried = tried;
            let inp = c.input();
            if let Placement::Node(n) = inp.best() {
                prop_assert!(c.up.contains(&n));
                prop_assert!(!c.tried.contains(&n));
                prop_assert!(inp.exclusive_ok(n));
                let r = inp.rank(n);
                prop_assert!(r.is_some());
                if restricted { prop_assert!(members.contains_key(&n)); }
                for &o in &c.up {
                    if !c.tried.contains(&o) && inp.exclusive_ok(o) {
                        if let Some(ro) = inp.rank(o) { prop_assert!(ro >= r.unwrap()); }
                    }
                }
                // Placing again from the chosen node never asks to move (no ping-pong).
                prop_assert_eq!(inp.should_move(n).filter(|_| c.tried.is_empty()), None);
            }
        }

        /// Every node computes the same answer from the same inputs, whatever order the
        /// eligible set was built in.
        #[test]
        fn deterministic(ids in prop::collection::vec(1u32..=8, 0..8)) {
            let mut a = Case::new(8, None, &ids);
            let mut rev = ids.clone(); rev.reverse();
            let b = Case::new(8, None, &rev);
            a.exclusive = false;
            prop_assert_eq!(a.input().best(), b.input().best());
        }
    }

    #[test]
    fn unordered_spreads_services() {
        let nodes = nodes(3);
        let up: BTreeSet<u32> = [1, 2, 3].into_iter().collect();
        let (load, tried) = (BTreeMap::new(), BTreeSet::new());
        let mut count = BTreeMap::new();
        for i in 0..60 {
            let name = format!("svc{i}");
            let inp = PlaceInput {
                service: &name,
                domain: None,
                exclusive: false,
                nodes: &nodes,
                eligible: &up,
                load: &load,
                tried: &tried,
                target: 0,
            };
            if let Placement::Node(n) = inp.best() {
                *count.entry(n).or_insert(0) += 1;
            }
        }
        assert_eq!(count.len(), 3, "{count:?}");
        assert!(count.values().all(|&c| c >= 10), "{count:?}");
    }
}
