//! A DLM node fed arbitrary frames from a peer between legitimate local lock traffic (DLM
//! locks and POSIX byte-range locks): it never panics.
#![no_main]
use dlm::{decode, Decoded, Flags, MemberEvent, Mode, Node, PlockArgs, PlockKind, PlockOp};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut node = Node::new(1);
    let ls = node.join(b"fuzz", 32).expect("valid lockspace");
    node.membership(MemberEvent::Members { epoch: 1, members: vec![1, 2], failed: vec![] });
    // Node 2 must announce recovery before node 1 runs; the fuzzer may or may not do it.
    let mut at = 0;
    let mut reqid = 0u64;
    while at < data.len() {
        match decode(&data[at..]) {
            Ok(Decoded::Frame(msg, used)) => {
                node.receive(2, msg);
                at += used;
            }
            _ => break,
        }
        let _ = node.lock(ls, 7, b"mine", Mode::Pr, Flags::empty(), None);
        reqid += 1;
        let args = PlockArgs { owner: 1, pid: 1, start: reqid, end: reqid + 3, kind: PlockKind::Write };
        let _ = node.plock(ls, 7, reqid, b"file", PlockOp::Set { args, wait: true });
        if reqid % 3 == 0 {
            let _ = node.plock_cancel(ls, 7, reqid);
        }
        let _ = node.take_output();
    }
});
