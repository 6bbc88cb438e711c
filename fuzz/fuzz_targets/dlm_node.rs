//! A DLM node fed arbitrary frames from a peer between legitimate local lock traffic: it
//! never panics, and the local client's lock is granted regardless.
#![no_main]
use dlm::{decode, Decoded, Flags, MemberEvent, Mode, Node};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut node = Node::new(1);
    let ls = node.join(b"fuzz", 32).expect("valid lockspace");
    node.membership(MemberEvent::Members { epoch: 1, members: vec![1, 2], failed: vec![] });
    // Node 2 must announce recovery before node 1 runs; the fuzzer may or may not do it.
    let mut at = 0;
    while at < data.len() {
        match decode(&data[at..]) {
            Ok(Decoded::Frame(msg, used)) => {
                node.receive(2, msg);
                at += used;
            }
            _ => break,
        }
        let _ = node.lock(ls, 7, b"mine", Mode::Pr, Flags::empty(), None);
        let _ = node.take_output();
    }
});
