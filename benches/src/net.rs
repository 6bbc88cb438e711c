//! Free TCP ports on loopback for the servers a bench starts. `nbd-bench` reaches it as
//! `proc::free_port`; the side binaries (`lvs-bench`) include this file with `#[path]`, as
//! they do `fiojson.rs`.

use std::net::TcpListener;

use anyhow::{Context, Result};

/// A free TCP port on 127.0.0.1 (bind to port 0, read it back, release it).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}
