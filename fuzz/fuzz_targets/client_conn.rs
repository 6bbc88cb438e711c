//! A hostile server against the client's transmission-phase decoder (`gnbd_client::Conn`):
//! a few requests of each kind are in flight, then arbitrary reply bytes arrive, split at an
//! arbitrary point. Decoding must end in completions or a connection error, never a panic.
#![no_main]
use gnbd_client::{Conn, Op};
use libfuzzer_sys::fuzz_target;
use nbd_proto::{Command, ReplyMode};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, data)) = data.split_first() else { return };
    let mode = match sel % 3 {
        0 => ReplyMode::Simple,
        1 => ReplyMode::Structured,
        _ => ReplyMode::Extended,
    };
    let mut conn: Conn<u32> = Conn::new(mode);
    let mut out = Vec::new();
    let ops = [
        (Command::Read, 0u64, 512u64),
        (Command::Read, 4096, 8192),
        (Command::Flush, 0, 0),
        (Command::BlockStatus, 0, 1 << 20),
        (Command::Trim, 0, 4096),
    ];
    for (i, &(command, offset, length)) in ops.iter().enumerate() {
        let op = Op { command, flags: 0, offset, length };
        let _ = conn.submit(op, i as u32, &mut out);
    }
    let split = usize::from(sel) % (data.len() + 1);
    let mut done = Vec::new();
    if conn.feed(&data[..split], &mut done).is_ok() {
        let _ = conn.feed(&data[split..], &mut done);
    }
});
