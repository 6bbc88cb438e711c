//! Cluster-wide POSIX byte-range locks on the sans-IO node: several nodes, messages carried
//! by hand in order, membership changes and node failures.

use std::collections::{BTreeMap, VecDeque};

use dlm::{
    dir_node, Ast, MemberEvent, Message, Node, NodeId, Output, PlockArgs, PlockConflict, PlockKind, PlockOp,
    PLOCK_EAGAIN, PLOCK_ECANCELED,
};

struct Net {
    nodes: BTreeMap<NodeId, Node>,
    queue: VecDeque<(NodeId, NodeId, Message)>,
    /// (node, client, reqid) -> (status, conflict)
    done: BTreeMap<(NodeId, u64, u64), (i32, Option<PlockConflict>)>,
    ls: u32,
    next: u64,
    epoch: u64,
}

impl Net {
    fn new(n: u32) -> Net {
        let members: Vec<NodeId> = (1..=n).collect();
        let mut net =
            Net { nodes: BTreeMap::new(), queue: VecDeque::new(), done: BTreeMap::new(), ls: 0, next: 0, epoch: 1 };
        for &id in &members {
            let mut node = Node::new(id);
            net.ls = node.join(b"test", 32).unwrap();
            net.nodes.insert(id, node);
        }
        for &id in &members {
            net.event(id, MemberEvent::Members { epoch: 1, members: members.clone(), failed: vec![] });
        }
        net.run();
        net
    }

    fn collect(&mut self, id: NodeId) {
        let Some(n) = self.nodes.get_mut(&id) else { return };
        for o in n.take_output() {
            match o {
                Output::Send { to, msg } => self.queue.push_back((id, to, msg)),
                Output::Ast(Ast::Plock { owner, reqid, status, conflict, .. }) => {
                    assert!(self.done.insert((id, owner, reqid), (status, conflict)).is_none(), "answered twice");
                }
                Output::Ast(a) => panic!("unexpected {a:?}"),
            }
        }
    }

    fn event(&mut self, id: NodeId, ev: MemberEvent) {
        self.nodes.get_mut(&id).unwrap().membership(ev);
        self.collect(id);
    }

    fn run(&mut self) {
        while let Some((from, to, msg)) = self.queue.pop_front() {
            if let Some(n) = self.nodes.get_mut(&to) {
                n.receive(from, msg);
                self.collect(to);
            }
        }
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
    let mut net = Net::new(3);
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
    let mut net = Net::new(2);
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
    let mut net = Net::new(3);
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
            let mut net = Net::new(3);
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
