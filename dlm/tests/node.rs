//! Deterministic multi-node scenarios on the sans-IO node, messages carried by hand
//! ([`Net`]).

use dlm::sim::Net;
use dlm::{dir_node, Ast, Flags, LockId, MemberEvent, Message, Mode, Node, NodeId, Output, SbFlags, Status};

#[test]
fn dead_ex_holder_waiter_granted_only_after_fence_with_value_block_invalid() {
    let mut net = Net::new(3);
    let ls = net.ls;
    let slots: Vec<_> = net.nodes.values().map(|n| n.lockspaces()[0].slots.clone()).collect();
    assert!(slots.windows(2).all(|w| w[0] == w[1]), "{slots:?}");
    assert_eq!(slots[0], vec![(1, 1), (2, 2), (3, 3)]);
    // Node 1 writes a value block through EX -> NL, then takes EX again and "dirties" it.
    let a = net.lock(1, 1, b"R", Mode::Ex, Flags::VALBLK);
    net.run();
    assert_eq!(net.completion(a).unwrap().0, Status::Granted);
    let n1 = net.nodes.get_mut(&1).unwrap();
    n1.convert(ls, 1, a, Mode::Nl, Flags::VALBLK, Some(&[7; 32])).unwrap();
    net.collect(1);
    net.run();
    assert_eq!(net.completion(a).unwrap().1, Some(Mode::Nl));
    let n1 = net.nodes.get_mut(&1).unwrap();
    n1.convert(ls, 1, a, Mode::Ex, Flags::VALBLK, None).unwrap();
    net.collect(1);
    net.run();
    let (st, _, _, lvb) = net.completion(a).unwrap();
    assert_eq!((st, lvb), (Status::Granted, Some(vec![7; 32])));
    // Node 2 waits for PR.
    let b = net.lock(2, 1, b"R", Mode::Pr, Flags::VALBLK);
    net.run();
    assert!(net.completion(b).is_none());
    assert!(net.asts.iter().any(|(n, a)| *n == 1 && matches!(a, Ast::Blocking { mode: Mode::Pr, .. })));
    // Node 1 dies.
    net.nodes.remove(&1);
    net.queue.retain(|(f, t, _)| *f != 1 && *t != 1);
    for id in [2, 3] {
        net.event(id, MemberEvent::Members { epoch: 2, members: vec![2, 3], failed: vec![1] });
    }
    net.run();
    assert!(net.completion(b).is_none(), "granted before the dead node was fenced");
    assert!(!net.nodes[&2].is_running(ls));
    for id in [2, 3] {
        net.event(id, MemberEvent::Fenced { node: 1 });
    }
    net.run();
    let (st, mode, sb, _) = net.completion(b).expect("granted after the fence");
    assert_eq!((st, mode), (Status::Granted, Some(Mode::Pr)));
    assert!(sb.contains(SbFlags::VALNOTVALID), "value block must be flagged not valid");
    for id in [2, 3] {
        assert!(net.nodes[&id].is_running(ls));
        assert_eq!(net.nodes[&id].lockspaces()[0].slots, vec![(2, 2), (3, 3)]);
    }
    // A new node joins: it gets the free slot 1, the others keep theirs.
    let mut n4 = Node::new(4);
    n4.join(b"test", 32).unwrap();
    net.nodes.insert(4, n4);
    for id in [2, 3, 4] {
        net.event(id, MemberEvent::Members { epoch: 3, members: vec![2, 3, 4], failed: vec![] });
    }
    net.run();
    for id in [2, 3, 4] {
        assert!(net.nodes[&id].is_running(ls), "node {id}");
        assert_eq!(net.nodes[&id].lockspaces()[0].slots, vec![(2, 2), (3, 3), (4, 1)], "node {id}");
    }
    // The lock held through two recoveries still works: node 2 unlocks, node 4 gets EX.
    let c = net.lock(4, 1, b"R", Mode::Ex, Flags::empty());
    net.run();
    assert!(net.completion(c).is_none());
    net.nodes.get_mut(&2).unwrap().unlock(ls, 1, b, Flags::empty(), None).unwrap();
    net.collect(2);
    net.run();
    assert_eq!(net.completion(b).unwrap().0, Status::Unlocked);
    assert_eq!(net.completion(c).unwrap().0, Status::Granted);
}

#[test]
fn round_trips_zero_when_local_at_most_two_otherwise() {
    let mut net = Net::new(3);
    let ls = net.ls;
    let members = [1, 2, 3];
    // A name whose directory node is 2.
    let name = (0..).map(|i| format!("n{i}").into_bytes()).find(|n| dir_node(n, &members) == 2).unwrap();
    // Node 1 is the first user: one lookup round trip, then it masters the resource.
    let a = net.lock(1, 1, &name, Mode::Pr, Flags::empty());
    net.run();
    assert_eq!(net.completion(a).unwrap().0, Status::Granted);
    assert_eq!(net.sent, 2, "lookup + reply");
    // Now local: zero messages.
    net.sent = 0;
    net.nodes.get_mut(&1).unwrap().unlock(ls, 1, a, Flags::empty(), None).unwrap();
    net.collect(1);
    let a2 = net.lock(1, 1, &name, Mode::Ex, Flags::empty());
    assert_eq!(net.completion(a2).unwrap().0, Status::Granted, "granted within the call");
    assert_eq!(net.sent, 0);
    // Node 3: lookup at node 2, then request at node 1: two round trips.
    net.sent = 0;
    let b = net.lock(3, 1, &name, Mode::Nl, Flags::empty());
    net.run();
    assert_eq!(net.completion(b).unwrap().0, Status::Granted);
    assert_eq!(net.sent, 4);
    // Master known now: one round trip.
    net.sent = 0;
    let c = net.lock(3, 1, &name, Mode::Nl, Flags::empty());
    net.run();
    assert_eq!(net.completion(c).unwrap().0, Status::Granted);
    assert_eq!(net.sent, 2);
}

#[test]
fn forged_and_unknown_requests_get_an_error_status() {
    let mut net = Net::new(2);
    let ls = net.ls;
    let a = net.lock(1, 1, b"X", Mode::Ex, Flags::empty());
    net.run();
    assert_eq!(net.completion(a).unwrap().0, Status::Granted);
    let master = (1..=2).find(|n| net.nodes[n].lockdump(ls).unwrap().iter().any(|r| r.name == b"X")).unwrap();
    let other = 3 - master;
    // A peer unlocking a lock id it does not own.
    let forged = Message::Unlock { ls, epoch: 1, name: b"X".to_vec(), lkid: a, flags: Flags::empty(), lvb: vec![] };
    let n = net.nodes.get_mut(&master).unwrap();
    if lock_owner(a) != other {
        n.receive(other, forged);
        let out = n.take_output();
        assert!(
            out.iter().any(|o| matches!(o, Output::Send { msg: Message::Cast { status: Status::Invalid, .. }, .. })),
            "{out:?}"
        );
    }
    // A request in a lockspace the master never joined, from an older membership.
    let n = net.nodes.get_mut(&master).unwrap();
    let lkid = (other as u64) << 32 | 99;
    n.receive(
        other,
        Message::Request {
            ls: 0xdead,
            epoch: 0,
            name: b"X".to_vec(),
            lkid,
            mode: Mode::Ex,
            flags: Flags::empty(),
            lvb: vec![],
        },
    );
    let out = n.take_output();
    assert!(matches!(&out[..], [Output::Send { msg: Message::Cast { status: Status::Invalid, .. }, .. }]), "{out:?}");
    // A convert of an unknown lock id on the resource.
    n.receive(
        other,
        Message::Convert {
            ls,
            epoch: 1,
            name: b"X".to_vec(),
            lkid,
            mode: Mode::Pr,
            flags: Flags::CONVERT,
            lvb: vec![],
        },
    );
    let out = n.take_output();
    assert!(matches!(&out[..], [Output::Send { msg: Message::Cast { status: Status::Invalid, .. }, .. }]), "{out:?}");
    // The real holder is undisturbed.
    assert_eq!(net.nodes[&1].granted_mode(ls, a), Some(Mode::Ex));
    // Local misuse: someone else's lock, bad flags, wrong value block size.
    let n1 = net.nodes.get_mut(&1).unwrap();
    assert!(n1.unlock(ls, 2, a, Flags::empty(), None).is_err());
    assert!(n1.lock(ls, 1, b"", Mode::Ex, Flags::empty(), None).is_err());
    assert!(n1.lock(ls, 1, &[0; 65], Mode::Ex, Flags::empty(), None).is_err());
    assert!(n1.lock(ls, 1, b"Y", Mode::Pr, Flags::EXPEDITE, None).is_err());
    assert!(n1.lock(ls, 1, b"Y", Mode::Pr, Flags::VALBLK, Some(&[0; 8])).is_err());
    assert!(n1.convert(ls, 1, a, Mode::Pr, Flags::QUECVT, None).is_err(), "QUECVT on a down-conversion");
}

fn lock_owner(id: LockId) -> NodeId {
    (id >> 32) as NodeId
}

#[test]
fn single_node_mode_orphans_and_quorum() {
    let mut n = Node::single();
    let ls = n.join(b"nolock", 16).unwrap();
    assert!(n.is_running(ls));
    let a = n.lock(ls, 1, b"R", Mode::Ex, Flags::PERSISTENT | Flags::VALBLK, None).unwrap();
    n.convert(ls, 1, a, Mode::Ex, Flags::VALBLK, Some(&[3; 16])).unwrap();
    let out = n.take_output();
    assert_eq!(out.len(), 2, "{out:?}");
    // The owner goes away: the persistent lock stays as an orphan.
    n.purge_owner(ls, 1);
    assert_eq!(n.granted_mode(ls, a), Some(Mode::Ex));
    let b = n.lock(ls, 2, b"R", Mode::Pr, Flags::ORPHAN | Flags::PERSISTENT, None).unwrap();
    assert!(matches!(&n.take_output()[..], [Output::Ast(Ast::Completion { status: Status::WouldBlock, .. })]));
    let _ = b;
    let c = n.lock(ls, 2, b"Q", Mode::Ex, Flags::ORPHAN | Flags::PERSISTENT, None).unwrap();
    let _ = c;
    assert!(matches!(&n.take_output()[..], [Output::Ast(Ast::Completion { status: Status::NotFound, .. })]));
    let d = n.lock(ls, 2, b"R", Mode::Ex, Flags::ORPHAN | Flags::PERSISTENT | Flags::VALBLK, None).unwrap();
    assert_eq!(d, a, "adopted the orphan");
    let out = n.take_output();
    assert!(
        matches!(&out[..], [Output::Ast(Ast::Completion { status: Status::Granted, owner: 2, lvb: Some(v), .. })] if v == &vec![3; 16]),
        "{out:?}"
    );
    // Without quorum nothing is granted; with it again the request goes through.
    n.membership(MemberEvent::Quorum { quorate: false });
    assert!(!n.is_running(ls));
    let e = n.lock(ls, 3, b"S", Mode::Ex, Flags::empty(), None).unwrap();
    assert!(n.take_output().is_empty());
    n.membership(MemberEvent::Quorum { quorate: true });
    let out = n.take_output();
    assert!(
        matches!(&out[..], [Output::Ast(Ast::Completion { status: Status::Granted, lkid, .. })] if *lkid == e),
        "{out:?}"
    );
    // Non-persistent locks of a departed owner are released.
    n.purge_owner(ls, 3);
    assert_eq!(n.granted_mode(ls, e), None);
    assert!(n.lockdump(ls).unwrap().iter().find(|r| r.name == b"S").unwrap().locks.is_empty());
}
