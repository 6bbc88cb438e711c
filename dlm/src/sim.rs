//! Test support, not part of the API (hidden from the documentation, no stability promise):
//! [`Net`], the simulated network of the deterministic multi-node tests of the sans-IO
//! [`Node`]. Messages are carried by hand, in the order they were sent (one queue for all
//! links), and the callbacks the nodes deliver are recorded. The crate's unit tests and the
//! tests in `dlm/tests/` (`node.rs`, `plock.rs`) use it; the seeded fault simulations
//! (`tests/sim.rs`, the `sim` module of `tests/plock.rs`) have networks of their own, with
//! a queue per link delivered in random interleavings.

use std::collections::{BTreeMap, VecDeque};

use crate::mode::{Flags, Mode, SbFlags, Status};
use crate::node::{Ast, MemberEvent, Node, Output};
use crate::resource::LockId;
use crate::wire::{Message, NodeId};

/// Status, mode, status flags and value block of a completion.
pub type Outcome = (Status, Option<Mode>, SbFlags, Option<Vec<u8>>);

/// Nodes with messages carried by hand, in order.
#[derive(Debug, Default)]
pub struct Net {
    /// The nodes, by id; a node removed from here is down (messages to it are dropped).
    pub nodes: BTreeMap<NodeId, Node>,
    /// Messages sent and not delivered yet, oldest first: (from, to, message).
    pub queue: VecDeque<(NodeId, NodeId, Message)>,
    /// The callbacks the nodes delivered, in order, with the node that delivered each.
    pub asts: Vec<(NodeId, Ast)>,
    /// Messages sent (tests reset it to count the messages of one operation).
    pub sent: usize,
    /// The lockspace of [`Net::new`].
    pub ls: u32,
}

impl Net {
    /// Nodes `1..=n` that joined lockspace `test` (value blocks of 32 bytes) before their
    /// first member list (all of them, epoch 1), with every message delivered.
    pub fn new(n: u32) -> Net {
        let members: Vec<NodeId> = (1..=n).collect();
        let mut net = Net::default();
        for &id in &members {
            let mut node = Node::new(id);
            net.ls = node.join(b"test", 32).expect("valid lockspace");
            net.nodes.insert(id, node);
        }
        for &id in &members {
            net.event(id, MemberEvent::Members { epoch: 1, members: members.clone(), failed: vec![] });
        }
        net.run();
        net.sent = 0;
        net
    }

    /// Take node `id`'s output: messages into the queue, callbacks into `asts`.
    pub fn collect(&mut self, id: NodeId) {
        let Some(n) = self.nodes.get_mut(&id) else { return };
        for o in n.take_output() {
            match o {
                Output::Send { to, msg } => {
                    self.sent += 1;
                    self.queue.push_back((id, to, msg));
                }
                Output::Ast(a) => self.asts.push((id, a)),
            }
        }
    }

    /// Give node `id` a membership event.
    pub fn event(&mut self, id: NodeId, ev: MemberEvent) {
        self.nodes.get_mut(&id).expect("node is up").membership(ev);
        self.collect(id);
    }

    /// Deliver messages, in order, until none is left.
    pub fn run(&mut self) {
        while let Some((from, to, msg)) = self.queue.pop_front() {
            if let Some(n) = self.nodes.get_mut(&to) {
                n.receive(from, msg);
                self.collect(to);
            }
        }
    }

    /// Request a lock from client `owner` of node `id` in the lockspace of [`Net::new`]
    /// (without delivering anything).
    pub fn lock(&mut self, id: NodeId, owner: u64, name: &[u8], mode: Mode, flags: Flags) -> LockId {
        let ls = self.ls;
        let l = self.nodes.get_mut(&id).expect("node is up").lock(ls, owner, name, mode, flags, None).expect("valid");
        self.collect(id);
        l
    }

    /// Take the first completion of `lkid` delivered so far.
    pub fn completion(&mut self, lkid: LockId) -> Option<Outcome> {
        let i = self.asts.iter().position(|(_, a)| matches!(a, Ast::Completion { lkid: l, .. } if *l == lkid))?;
        match self.asts.remove(i).1 {
            Ast::Completion { status, mode, sbflags, lvb, .. } => Some((status, mode, sbflags, lvb)),
            Ast::Blocking { .. } | Ast::Plock { .. } => unreachable!("matched a completion"),
        }
    }
}
