//! Cluster-wide POSIX byte-range locks on the sans-IO node: several nodes, messages carried
//! by hand in order, membership changes and node failures.

use std::collections::{BTreeMap, VecDeque};

use dlm::sim::Net;
use dlm::{
    dir_node, Ast, MemberEvent, Message, Node, NodeId, Output, PlockArgs, PlockConflict, PlockKind, PlockOp,
    PLOCK_EAGAIN, PLOCK_ECANCELED,
};

/// The shared [`Net`] (reached through `Deref`) with the plock outcomes gathered as they are
/// delivered.
struct PlockNet {
    net: Net,
    /// (node, client, reqid) -> (status, conflict)
    done: BTreeMap<(NodeId, u64, u64), (i32, Option<PlockConflict>)>,
    next: u64,
    epoch: u64,
}

impl std::ops::Deref for PlockNet {
    type Target = Net;
    fn deref(&self) -> &Net {
        &self.net
    }
}

impl std::ops::DerefMut for PlockNet {
    fn deref_mut(&mut self) -> &mut Net {
        &mut self.net
    }
}

impl PlockNet {
    fn new(n: u32) -> PlockNet {
        let mut net = PlockNet { net: Net::new(n), done: BTreeMap::new(), next: 0, epoch: 1 };
        net.gather();
        net
    }

    /// Move the plock outcomes delivered so far into `done`; nothing else may be delivered.
    fn gather(&mut self) {
        for (id, a) in std::mem::take(&mut self.net.asts) {
            match a {
                Ast::Plock { owner, reqid, status, conflict, .. } => {
                    assert!(self.done.insert((id, owner, reqid), (status, conflict)).is_none(), "answered twice");
                }
                a => panic!("unexpected {a:?}"),
            }
        }
    }

    /// Deliver every message, then gather the outcomes.
    fn run(&mut self) {
        self.net.run();
        self.gather();
    }

    fn event(&mut self, id: NodeId, ev: MemberEvent) {
        self.net.event(id, ev);
        self.gather();
    }

    /// Start a plock op from client `client` of node `id`; returns its request id.
    fn op(&mut self, id: NodeId, client: u64, name: &[u8], op: PlockOp) -> u64 {
        self.next += 1;
        let (ls, reqid) = (self.ls, self.next);
        self.nodes.get_mut(&id).unwrap().plock(ls, client, reqid, name, op).unwrap();
        self.collect(id);
        self.run();
        reqid
    }

    fn set(&mut self, id: NodeId, client: u64, kind: PlockKind, start: u64, end: u64, wait: bool) -> u64 {
        let args = PlockArgs { owner: client * 100, pid: id * 1000 + client as u32, start, end, kind };
        self.op(id, client, b"file", PlockOp::Set { args, wait })
    }

    fn get(&mut self, id: NodeId, client: u64, kind: PlockKind, start: u64, end: u64) -> Option<PlockConflict> {
        let args = PlockArgs { owner: client * 100, pid: 0, start, end, kind };
        let r = self.op(id, client, b"file", PlockOp::Get { args });
        let (status, c) = self.result(id, client, r).expect("get answered");
        assert_eq!(status, 0);
        c
    }

    fn result(&self, id: NodeId, client: u64, reqid: u64) -> Option<(i32, Option<PlockConflict>)> {
        self.done.get(&(id, client, reqid)).copied()
    }

    /// Members change to `members`; `failed` are fenced at once.
    fn change(&mut self, members: &[NodeId], failed: &[NodeId]) {
        self.epoch += 1;
        for f in failed {
            self.nodes.remove(f);
        }
        self.queue.retain(|(from, to, _)| !failed.contains(from) && !failed.contains(to));
        for &id in members {
            let ev = MemberEvent::Members { epoch: self.epoch, members: members.to_vec(), failed: failed.to_vec() };
            self.event(id, ev);
        }
        for &id in members {
            for &f in failed {
                self.event(id, MemberEvent::Fenced { node: f });
            }
        }
        self.run();
    }
}

use PlockKind::{Read, Unlock, Write};

#[test]
fn nodes_exclude_each_other_and_waiters_wake_in_order() {
    let mut net = PlockNet::new(3);
    let master = dir_node(b"file", &[1, 2, 3]);
    // Use two nodes that are not the master, and the master itself.
    let others: Vec<NodeId> = [1, 2, 3].into_iter().filter(|n| *n != master).collect();
    let (a, b) = (others[0], others[1]);
    let r = net.set(a, 1, Write, 0, 99, false);
    assert_eq!(net.result(a, 1, r), Some((0, None)));
    let r = net.set(b, 1, Read, 50, 50, false);
    assert_eq!(net.result(b, 1, r).unwrap().0, PLOCK_EAGAIN);
    let c = net.get(master, 1, Read, 60, u64::MAX).expect("conflict");
    assert_eq!((c.kind, c.start, c.end, c.node, c.pid), (Write, 0, 99, a, a * 1000 + 1));
    let w1 = net.set(b, 1, Read, 50, 50, true);
    let w2 = net.set(master, 1, Write, 90, 200, true);
    assert_eq!(net.result(b, 1, w1), None);
    // Unlocking part of the range wakes nobody; releasing the owner wakes both.
    let r = net.set(a, 1, Unlock, 0, 49, false);
    assert_eq!(net.result(a, 1, r), Some((0, None)));
    assert_eq!(net.result(b, 1, w1), None);
    let r = net.op(a, 1, b"file", PlockOp::ReleaseOwner { owner: 100 });
    assert_eq!(net.result(a, 1, r), Some((0, None)));
    assert_eq!(net.result(b, 1, w1), Some((0, None)));
    assert_eq!(net.result(master, 1, w2), Some((0, None)));
    assert!(net.get(a, 1, Read, 0, 49).is_none());
    assert_eq!(net.get(a, 1, Write, 0, u64::MAX).unwrap().node, b);
    let held = net.nodes[&b].plocks_held(net.ls);
    assert_eq!(held.len(), 1);
    assert_eq!((held[0].1.kind, held[0].1.start, held[0].1.end), (Read, 50, 50));
}

#[test]
fn cancel_and_client_close_release_on_the_master() {
    let mut net = PlockNet::new(2);
    let r = net.set(1, 1, Write, 0, 10, false);
    assert_eq!(net.result(1, 1, r), Some((0, None)));
    let w = net.set(2, 1, Write, 5, 5, true);
    let ls = net.ls;
    assert!(net.nodes.get_mut(&2).unwrap().plock_cancel(ls, 1, w).unwrap());
    net.collect(2);
    net.run();
    assert_eq!(net.result(2, 1, w), Some((PLOCK_ECANCELED, None)));
    assert!(!net.nodes.get_mut(&2).unwrap().plock_cancel(ls, 1, w).unwrap());
    // Another waiter from client 2 of node 2; then client 1 of node 1 goes away.
    let w = net.set(2, 2, Read, 0, 0, true);
    assert_eq!(net.result(2, 2, w), None);
    net.nodes.get_mut(&1).unwrap().purge_owner(ls, 1);
    net.collect(1);
    net.run();
    assert_eq!(net.result(2, 2, w), Some((0, None)));
    // Client 2 of node 2 goes away with its lock and a waiting request.
    let w3 = net.set(1, 3, Write, 0, 0, true);
    net.nodes.get_mut(&2).unwrap().purge_owner(ls, 2);
    net.collect(2);
    net.run();
    assert_eq!(net.result(1, 3, w3), Some((0, None)));
    assert!(net.nodes.values().all(|n| n.plocks_held(ls).iter().all(|(_, p)| p.who.node == 1)));
}

#[test]
fn a_failed_nodes_plocks_are_dropped_and_the_masters_rebuilt() {
    let mut net = PlockNet::new(3);
    // Names mastered by each node, so a failure moves some masters.
    let names: Vec<Vec<u8>> = (0..30).map(|i| format!("f{i}").into_bytes()).collect();
    let ls = net.ls;
    let mut reqs = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let node = 1 + (i as u32 % 3);
        let args = PlockArgs { owner: 7, pid: node, start: 0, end: 9, kind: Write };
        reqs.push(net.op(node, 1, name, PlockOp::Set { args, wait: false }));
    }
    for (i, r) in reqs.iter().enumerate() {
        assert_eq!(net.result(1 + (i as u32 % 3), 1, *r), Some((0, None)));
    }
    // Node 1 waits on a lock node 3 holds, node 2 on one node 1 holds.
    let blocked_by_3 = names.iter().enumerate().find(|(i, _)| i % 3 == 2).unwrap().1.clone();
    let args = PlockArgs { owner: 8, pid: 1, start: 5, end: 5, kind: Read };
    let w1 = net.op(1, 1, &blocked_by_3, PlockOp::Set { args, wait: true });
    let blocked_by_1 = names[0].clone();
    let args = PlockArgs { owner: 8, pid: 2, start: 5, end: 5, kind: Read };
    let w2 = net.op(2, 1, &blocked_by_1, PlockOp::Set { args, wait: true });
    assert_eq!(net.result(1, 1, w1), None);
    assert_eq!(net.result(2, 1, w2), None);
    // Node 3 fails: its locks go, node 1's waiter gets its lock; node 2 still waits.
    net.change(&[1, 2], &[3]);
    assert_eq!(net.result(1, 1, w1), Some((0, None)));
    assert_eq!(net.result(2, 1, w2), None);
    for (i, name) in names.iter().enumerate() {
        let holder = 1 + (i as u32 % 3);
        let args = PlockArgs { owner: 9, pid: 9, start: 0, end: 0, kind: Read };
        let r = net.op(2, 9, name, PlockOp::Get { args });
        let c = net.result(2, 9, r).unwrap().1;
        if holder == 3 {
            // Only node 1's new read lock on one of them, nothing of node 3.
            assert!(c.is_none(), "{:?}", String::from_utf8_lossy(name));
        } else {
            assert_eq!(c.map(|c| c.node), Some(holder), "{:?}", String::from_utf8_lossy(name));
        }
    }
    // The waiter on node 2 is granted when node 1 releases.
    let r = net.op(1, 1, &blocked_by_1, PlockOp::ReleaseOwner { owner: 7 });
    assert_eq!(net.result(1, 1, r), Some((0, None)));
    assert_eq!(net.result(2, 1, w2), Some((0, None)));
    // A node joining moves masters again; everything held is still held.
    let mut n4 = Node::new(4);
    n4.join(b"test", 32).unwrap();
    net.nodes.insert(4, n4);
    net.change(&[1, 2, 4], &[]);
    let args = PlockArgs { owner: 5, pid: 4, start: 0, end: u64::MAX, kind: Write };
    let r = net.op(4, 1, &blocked_by_1, PlockOp::Set { args, wait: false });
    assert_eq!(net.result(4, 1, r).unwrap().0, PLOCK_EAGAIN, "node 2's read lock survived the join");
    let dumps: usize = [1, 2, 4].iter().map(|n| net.nodes[n].plock_dump(ls).unwrap().len()).sum();
    assert_eq!(dumps, 21, "one table per name still locked (20 of nodes 1 and 2, and node 1's new one)");
    let _ = ls;
}

mod model {
    //! Random operations from clients on three nodes give the same outcomes as one
    //! [`PlockTable`] per name (the cluster behaves as one lock table), and each node's
    //! record of what its clients hold matches it.
    use super::*;
    use dlm::{PlockOwner, PlockReq, PlockTable, SetOutcome};
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Set { node: u32, client: u64, owner: u64, name: usize, kind: PlockKind, start: u64, len: u64, wait: bool },
        Get { node: u32, client: u64, owner: u64, name: usize, kind: PlockKind, start: u64, len: u64 },
        Release { node: u32, client: u64, owner: u64, name: usize },
        Cancel { nth: usize },
        Close { node: u32, client: u64 },
    }

    fn op() -> impl Strategy<Value = Op> {
        let who = (1..=3u32, 1..=2u64, 1..=2u64, 0..2usize);
        let kind = prop_oneof![Just(Read), Just(Write), Just(Unlock)];
        let range = (0..12u64, prop_oneof![1..6u64, Just(u64::MAX)]);
        prop_oneof![
            6 => (who.clone(), kind, range.clone(), any::<bool>()).prop_map(
                |((node, client, owner, name), kind, (start, len), wait)| Op::Set {
                    node, client, owner, name, kind, start, len, wait
                }),
            2 => (who.clone(), prop_oneof![Just(Read), Just(Write)], range).prop_map(
                |((node, client, owner, name), kind, (start, len))| Op::Get {
                    node, client, owner, name, kind, start, len
                }),
            1 => who.prop_map(|(node, client, owner, name)| Op::Release { node, client, owner, name }),
            1 => (0..6usize).prop_map(|nth| Op::Cancel { nth }),
            1 => (1..=3u32, 1..=2u64).prop_map(|(node, client)| Op::Close { node, client }),
        ]
    }

    fn end(start: u64, len: u64) -> u64 {
        if len == u64::MAX {
            u64::MAX
        } else {
            start + len - 1
        }
    }

    const NAMES: [&[u8]; 2] = [b"alpha", b"beta"];

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]
        #[test]
        fn three_nodes_behave_as_one_table(ops in proptest::collection::vec(op(), 1..40)) {
            let mut net = PlockNet::new(3);
            let ls = net.ls;
            let mut tables = [PlockTable::default(), PlockTable::default()];
            let mut want: BTreeMap<(NodeId, u64, u64), i32> = BTreeMap::new();
            // Waiting requests: (node, client, reqid, name).
            let mut waiting: Vec<(NodeId, u64, u64, usize)> = Vec::new();
            for op in ops {
                let mut granted = Vec::new();
                match op {
                    Op::Set { node, client, owner, name, kind, start, len, wait } => {
                        let e = end(start, len);
                        let args = PlockArgs { owner, pid: owner as u32, start, end: e, kind };
                        let r = net.op(node, client, NAMES[name], PlockOp::Set { args, wait });
                        let who = PlockOwner { node, client, owner };
                        let lock = dlm::Plock { who, pid: owner as u32, kind, start, end: e };
                        let req = PlockReq { node, client, id: r };
                        match tables[name].set(lock, wait.then_some(req), &mut granted) {
                            SetOutcome::Granted => { want.insert((node, client, r), 0); }
                            SetOutcome::WouldBlock => { want.insert((node, client, r), PLOCK_EAGAIN); }
                            SetOutcome::Deadlock => { want.insert((node, client, r), dlm::PLOCK_EDEADLK); }
                            SetOutcome::Queued => waiting.push((node, client, r, name)),
                        }
                    }
                    Op::Get { node, client, owner, name, kind, start, len } => {
                        let e = end(start, len);
                        let args = PlockArgs { owner, pid: 0, start, end: e, kind };
                        let r = net.op(node, client, NAMES[name], PlockOp::Get { args });
                        let c = tables[name].get(PlockOwner { node, client, owner }, kind, start, e);
                        prop_assert_eq!(net.result(node, client, r), Some((0, c)));
                        want.insert((node, client, r), 0);
                    }
                    Op::Release { node, client, owner, name } => {
                        let r = net.op(node, client, NAMES[name], PlockOp::ReleaseOwner { owner });
                        tables[name].release_owner(PlockOwner { node, client, owner }, &mut granted);
                        want.insert((node, client, r), 0);
                    }
                    Op::Cancel { nth } => {
                        if let Some(&(node, client, r, name)) = waiting.get(nth) {
                            prop_assert!(net.nodes.get_mut(&node).unwrap().plock_cancel(ls, client, r).unwrap());
                            net.collect(node);
                            net.run();
                            let cancelled = tables[name].cancel(PlockReq { node, client, id: r });
                            prop_assert!(cancelled);
                            waiting.remove(nth);
                            want.insert((node, client, r), PLOCK_ECANCELED);
                        }
                    }
                    Op::Close { node, client } => {
                        net.nodes.get_mut(&node).unwrap().purge_owner(ls, client);
                        net.collect(node);
                        net.run();
                        for t in &mut tables {
                            t.drop_where(|o| o.node == node && o.client == client, &mut granted);
                        }
                        waiting.retain(|w| !(w.0 == node && w.1 == client));
                        // A closed client's requests are never answered; forget them.
                        want.retain(|k, _| !(k.0 == node && k.1 == client));
                        net.done.retain(|k, _| !(k.0 == node && k.1 == client));
                    }
                }
                for g in granted {
                    waiting.retain(|w| !(w.0 == g.node && w.1 == g.client && w.2 == g.id));
                    want.insert((g.node, g.client, g.id), 0);
                }
                let got: BTreeMap<(NodeId, u64, u64), i32> = net.done.iter().map(|(k, v)| (*k, v.0)).collect();
                prop_assert_eq!(&got, &want);
                for n in 1..=3u32 {
                    let mut expect: Vec<(Vec<u8>, dlm::Plock)> = Vec::new();
                    for (i, t) in tables.iter().enumerate() {
                        for p in t.locks().iter().filter(|p| p.who.node == n) {
                            expect.push((NAMES[i].to_vec(), *p));
                        }
                    }
                    expect.sort_by(|a, b| (&a.0, a.1.who, a.1.start).cmp(&(&b.0, b.1.who, b.1.start)));
                    prop_assert_eq!(net.nodes[&n].plocks_held(ls), expect);
                }
            }
        }
    }
}

mod sim {
    //! Random plock traffic while nodes fail, get fenced and rejoin, with messages on
    //! different links delivered in any interleaving (FIFO per link, as over TCP). Checked
    //! from the applications' point of view: a grant never conflicts with a lock another
    //! owner holds (and has not asked to release), a failed node's locks count until it is
    //! fenced, every request is answered at most once, and once the traffic stops and
    //! everybody lets go, every request is answered and each node's record of its clients'
    //! locks is what they hold.
    use std::collections::BTreeSet;

    use super::*;
    use dlm::{Plock, PlockOwner, PlockTable};
    use proptest::prelude::*;

    const NAMES: [&[u8]; 2] = [b"alpha", b"beta"];
    const LS: &[u8] = b"test";

    #[derive(Debug, Clone)]
    enum Ev {
        Op { node: u32, client: u64, owner: u64, name: usize, kind: PlockKind, start: u64, len: u64, wait: bool },
        Release { node: u32, client: u64, owner: u64, name: usize },
        Cancel { nth: usize },
        Close { node: u32, client: u64 },
        Deliver { link: usize, count: usize },
        Fail { node: u32 },
        Fence,
        Rejoin { node: u32 },
    }

    fn ev() -> impl Strategy<Value = Ev> {
        let kind = prop_oneof![Just(Read), Just(Write), Just(Write), Just(Unlock)];
        prop_oneof![
            8 => (1..=3u32, 1..=2u64, 1..=2u64, 0..2usize, kind, 0..10u64, prop_oneof![1..5u64, Just(u64::MAX)], any::<bool>())
                .prop_map(|(node, client, owner, name, kind, start, len, wait)| Ev::Op {
                    node, client, owner, name, kind, start, len, wait
                }),
            2 => (1..=3u32, 1..=2u64, 1..=2u64, 0..2usize)
                .prop_map(|(node, client, owner, name)| Ev::Release { node, client, owner, name }),
            1 => (0..8usize).prop_map(|nth| Ev::Cancel { nth }),
            1 => (1..=3u32, 1..=2u64).prop_map(|(node, client)| Ev::Close { node, client }),
            12 => (0..12usize, 1..6usize).prop_map(|(link, count)| Ev::Deliver { link, count }),
            1 => (1..=3u32).prop_map(|node| Ev::Fail { node }),
            1 => Just(Ev::Fence),
            1 => (1..=3u32).prop_map(|node| Ev::Rejoin { node }),
        ]
    }

    #[derive(Default)]
    struct Sim {
        nodes: BTreeMap<NodeId, Node>,
        links: BTreeMap<(NodeId, NodeId), VecDeque<Message>>,
        members: Vec<NodeId>,
        epoch: u64,
        /// What the applications hold, per name.
        held: Vec<PlockTable>,
        /// Requests not answered: (node, client, reqid) -> (name, op).
        pending: BTreeMap<(NodeId, u64, u64), (usize, PlockOp)>,
        /// Write locks a pending read request downgraded, restored if it fails.
        downgraded: BTreeMap<(NodeId, u64, u64), Vec<Plock>>,
        answered: BTreeSet<(NodeId, u64, u64)>,
        /// Failed nodes not fenced yet.
        unfenced: Vec<NodeId>,
        next: u64,
        ls: u32,
    }

    impl Sim {
        fn new() -> Sim {
            let mut s = Sim { held: vec![PlockTable::default(); NAMES.len()], ..Sim::default() };
            for id in 1..=3 {
                let mut n = Node::new(id);
                s.ls = n.join(LS, 32).unwrap();
                s.nodes.insert(id, n);
            }
            s.change(vec![1, 2, 3], vec![]);
            s
        }

        fn change(&mut self, members: Vec<NodeId>, failed: Vec<NodeId>) {
            self.epoch += 1;
            self.members = members.clone();
            for &id in &members {
                let ev = MemberEvent::Members { epoch: self.epoch, members: members.clone(), failed: failed.clone() };
                self.nodes.get_mut(&id).unwrap().membership(ev);
                self.collect(id).expect("membership changes answer no request");
            }
        }

        fn collect(&mut self, id: NodeId) -> Result<(), TestCaseError> {
            let out = self.nodes.get_mut(&id).unwrap().take_output();
            for o in out {
                match o {
                    Output::Send { to, msg } => {
                        if self.nodes.contains_key(&to) {
                            self.links.entry((id, to)).or_default().push_back(msg);
                        }
                    }
                    Output::Ast(Ast::Plock { owner: client, reqid, status, .. }) => {
                        let key = (id, client, reqid);
                        prop_assert!(self.answered.insert(key), "request {:?} answered twice", key);
                        let Some((name, op)) = self.pending.remove(&key) else {
                            return Err(TestCaseError::fail(format!("answer to unknown request {key:?}")));
                        };
                        for p in self.downgraded.remove(&key).unwrap_or_default() {
                            if status != 0 {
                                self.held[name].apply(p);
                            }
                        }
                        if let (0, PlockOp::Set { args, .. }) = (status, op) {
                            if args.kind != Unlock {
                                let who = PlockOwner { node: id, client, owner: args.owner };
                                let c = self.held[name].get(who, args.kind, args.start, args.end);
                                prop_assert!(c.is_none(), "{:?} granted {:?} over {:?}", who, args, c);
                                self.held[name].apply(Plock {
                                    who,
                                    pid: 0,
                                    kind: args.kind,
                                    start: args.start,
                                    end: args.end,
                                });
                            }
                        }
                    }
                    Output::Ast(a) => return Err(TestCaseError::fail(format!("unexpected {a:?}"))),
                }
            }
            Ok(())
        }

        fn request(&mut self, node: NodeId, client: u64, name: usize, op: PlockOp) -> Result<(), TestCaseError> {
            if !self.nodes.contains_key(&node) {
                return Ok(());
            }
            // An owner (a process) has one request in flight at a time: what it holds
            // after two concurrent ones depends on the order they reach the master.
            let busy =
                self.pending.iter().any(|(k, (_, o))| k.0 == node && k.1 == client && owner_of(o) == owner_of(&op));
            if busy {
                return Ok(());
            }
            self.next += 1;
            let reqid = self.next;
            let mut downgraded = Vec::new();
            // What the application may count on from the moment it asks: an unlock or a
            // release gives the range up; a read lock over its own write lock downgrades.
            match op {
                PlockOp::Set { args, .. } if args.kind == Unlock => self.held[name].apply(Plock {
                    who: PlockOwner { node, client, owner: args.owner },
                    pid: 0,
                    ..plock(args)
                }),
                PlockOp::Set { args, .. } if args.kind == Read => {
                    let who = PlockOwner { node, client, owner: args.owner };
                    let mine: Vec<Plock> =
                        self.held[name].locks().iter().filter(|p| p.who == who && p.kind == Write).copied().collect();
                    for p in mine {
                        let (s, e) = (p.start.max(args.start), p.end.min(args.end));
                        if s <= e {
                            self.held[name].apply(Plock { kind: Read, start: s, end: e, ..p });
                            downgraded.push(Plock { start: s, end: e, ..p });
                        }
                    }
                }
                PlockOp::ReleaseOwner { owner } => {
                    self.held[name].release_owner(PlockOwner { node, client, owner }, &mut Vec::new())
                }
                _ => {}
            }
            self.pending.insert((node, client, reqid), (name, op));
            self.downgraded.insert((node, client, reqid), downgraded);
            let ls = self.ls;
            self.nodes.get_mut(&node).unwrap().plock(ls, client, reqid, NAMES[name], op).unwrap();
            self.collect(node)
        }

        fn deliver(&mut self, link: usize, count: usize) -> Result<(), TestCaseError> {
            let busy: Vec<(NodeId, NodeId)> =
                self.links.iter().filter(|(_, q)| !q.is_empty()).map(|(k, _)| *k).collect();
            if busy.is_empty() {
                return Ok(());
            }
            let (from, to) = busy[link % busy.len()];
            for _ in 0..count {
                let Some(msg) = self.links.get_mut(&(from, to)).and_then(|q| q.pop_front()) else { break };
                self.nodes.get_mut(&to).unwrap().receive(from, msg);
                self.collect(to)?;
            }
            Ok(())
        }

        fn deliver_all(&mut self) -> Result<(), TestCaseError> {
            let mut guard = 0;
            while self.links.values().any(|q| !q.is_empty()) {
                self.deliver(0, 1000)?;
                guard += 1;
                prop_assert!(guard < 100_000, "messages never stop");
            }
            Ok(())
        }

        fn fence(&mut self) -> Result<(), TestCaseError> {
            for dead in std::mem::take(&mut self.unfenced) {
                for t in &mut self.held {
                    t.drop_where(|o| o.node == dead, &mut Vec::new());
                }
                for id in self.members.clone() {
                    self.nodes.get_mut(&id).unwrap().membership(MemberEvent::Fenced { node: dead });
                    self.collect(id)?;
                }
            }
            Ok(())
        }

        fn step(&mut self, ev: Ev) -> Result<(), TestCaseError> {
            match ev {
                Ev::Op { node, client, owner, name, kind, start, len, wait } => {
                    let end = if len == u64::MAX { u64::MAX } else { start + len - 1 };
                    let args = PlockArgs { owner, pid: node, start, end, kind };
                    self.request(node, client, name, PlockOp::Set { args, wait })?;
                }
                Ev::Release { node, client, owner, name } => {
                    self.request(node, client, name, PlockOp::ReleaseOwner { owner })?
                }
                Ev::Cancel { nth } => {
                    let waiting: Vec<(NodeId, u64, u64)> = self
                        .pending
                        .iter()
                        .filter(|(_, (_, op))| matches!(op, PlockOp::Set { wait: true, args } if args.kind != Unlock))
                        .map(|(k, _)| *k)
                        .collect();
                    if let Some(&(node, client, reqid)) = waiting.get(nth) {
                        let ls = self.ls;
                        let found = self.nodes.get_mut(&node).unwrap().plock_cancel(ls, client, reqid).unwrap();
                        prop_assert!(found);
                        self.collect(node)?;
                    }
                }
                Ev::Close { node, client } => {
                    if let Some(n) = self.nodes.get_mut(&node) {
                        n.purge_owner(self.ls, client);
                        for t in &mut self.held {
                            t.drop_where(|o| o.node == node && o.client == client, &mut Vec::new());
                        }
                        self.pending.retain(|k, _| !(k.0 == node && k.1 == client));
                        self.collect(node)?;
                    }
                }
                Ev::Deliver { link, count } => self.deliver(link, count)?,
                Ev::Fail { node } => {
                    if self.members.len() > 1 && self.members.contains(&node) {
                        self.nodes.remove(&node);
                        self.links.retain(|(a, b), _| *a != node && *b != node);
                        self.pending.retain(|k, _| k.0 != node);
                        self.unfenced.push(node);
                        let members: Vec<NodeId> = self.members.iter().copied().filter(|n| *n != node).collect();
                        self.change(members, vec![node]);
                    }
                }
                Ev::Fence => self.fence()?,
                Ev::Rejoin { node } => {
                    if !self.nodes.contains_key(&node) && !self.unfenced.contains(&node) {
                        let mut n = Node::new(node);
                        n.join(LS, 32).unwrap();
                        self.nodes.insert(node, n);
                        let mut members = self.members.clone();
                        members.push(node);
                        members.sort_unstable();
                        self.change(members, vec![]);
                    }
                }
            }
            Ok(())
        }

        /// Stop the traffic: fence, deliver everything, and let every owner go until every
        /// request has been answered.
        fn settle(&mut self) -> Result<(), TestCaseError> {
            self.fence()?;
            self.deliver_all()?;
            for _ in 0..20 {
                if self.pending.is_empty() {
                    break;
                }
                // Waiters may be deadlocked (each owner waits for the other): interrupt them.
                for nth in (0..self.pending.len()).rev() {
                    self.step(Ev::Cancel { nth })?;
                }
                self.deliver_all()?;
                let owners: BTreeSet<(usize, PlockOwner)> =
                    self.held.iter().enumerate().flat_map(|(i, t)| t.locks().iter().map(move |p| (i, p.who))).collect();
                for (name, who) in owners {
                    self.request(who.node, who.client, name, PlockOp::ReleaseOwner { owner: who.owner })?;
                }
                self.deliver_all()?;
            }
            prop_assert!(self.pending.is_empty(), "never answered: {:?}", self.pending);
            for (&id, n) in &self.nodes {
                let mut expect: Vec<(Vec<u8>, Plock)> = Vec::new();
                for (i, t) in self.held.iter().enumerate() {
                    for p in t.locks().iter().filter(|p| p.who.node == id) {
                        expect.push((NAMES[i].to_vec(), *p));
                    }
                }
                let got: Vec<(Vec<u8>, Plock)> =
                    n.plocks_held(self.ls).into_iter().map(|(nm, p)| (nm, Plock { pid: 0, ..p })).collect();
                expect.sort_by(|a, b| (&a.0, a.1.who, a.1.start).cmp(&(&b.0, b.1.who, b.1.start)));
                prop_assert_eq!(got, expect, "node {}", id);
            }
            Ok(())
        }
    }

    fn owner_of(op: &PlockOp) -> u64 {
        match op {
            PlockOp::Set { args, .. } | PlockOp::Get { args } => args.owner,
            PlockOp::ReleaseOwner { owner } => *owner,
        }
    }

    fn plock(a: PlockArgs) -> Plock {
        Plock {
            who: PlockOwner { node: 0, client: 0, owner: a.owner },
            pid: a.pid,
            kind: a.kind,
            start: a.start,
            end: a.end,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]
        #[test]
        fn plocks_stay_exclusive_through_failures_and_rejoins(evs in proptest::collection::vec(ev(), 1..80)) {
            let mut sim = Sim::new();
            sim.deliver_all()?;
            for ev in evs {
                sim.step(ev)?;
            }
            sim.settle()?;
        }
    }
}
