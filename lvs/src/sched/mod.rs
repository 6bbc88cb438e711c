//! The LVS schedulers, with the Linux kernel's exact semantics (`net/netfilter/ipvs/ip_vs_*.c`).
//!
//! A [`Scheduler`] picks one entry of a service's destination list (in list order, which
//! here is the order the real servers were added in) for a new connection described by a
//! [`Packet`]. It keeps its own state (round-robin position, hash tables, locality tables),
//! which the owner refreshes with [`Scheduler::dests_changed`] whenever the list or a
//! weight changes. Nothing here does I/O or reads a clock: `now_ms` is passed in.
//!
//! Semantics kept from the kernel, scheduler by scheduler:
//!
//! - `rr`: the next server after the last one chosen whose weight is above 0 and which is
//!   not overloaded.
//! - `wrr`: current weight `cw` starts at `max - (gcd - 1)` and steps down by the gcd of the
//!   weights; a server is chosen when its weight is `>= cw` (weights 4,3,2 give
//!   A A B A B C A B C).
//! - `lc`: least `active*256 + inactive`, first one wins ties.
//! - `wlc`: least overhead/weight, compared cross-multiplied (`loh*w > doh*lw`).
//! - `sed`: like `wlc` with overhead `active + 1`.
//! - `nq`: an idle server (no active connection) at once, else as `sed`.
//! - `lblc`, `lblcr`: a table from the packet's destination address to a server (a set
//!   of servers for `lblcr`), rescheduled with `wlc` when the server is overloaded
//!   (`active > weight` while some server has `2*active < weight`).
//! - `dh`, `sh`: 256-bucket tables filled round robin over the list (`sh`: each server gets
//!   `weight` consecutive buckets), hashed by destination / source address.
//! - `mh`: Maglev hashing, a 4093-entry (prime) lookup table built from per-server
//!   permutations (SipHash-1-3 with the kernel's fixed keys), turns scaled by the gcd.
//!
//! One file per scheduler family: `rr.rs` (round robin and weighted round robin), `lc.rs`
//! (the least-connection family: `lc`, `wlc`, `sed`, `nq`), `lblc.rs` (locality-based:
//! `lblc`, `lblcr`) and `hash.rs` (`dh`, `sh`, `mh` Maglev). This file holds the
//! [`Scheduler`] itself: its state per kind, the dispatch, and the updates when the
//! destination list changes.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::model::{Dest, DestId, SchedFlags, SchedKind};

mod hash;
mod lblc;
mod lc;
mod rr;

use hash::{dh_build, mh_build, sh_build};
pub use hash::{HASH_TAB_SIZE, MH_TAB_SIZE};
use lblc::{LblcEntry, LblcrEntry};
use lc::{lc, nq, weighted_least};
use rr::{max_weight, wrr_gcd, WrrMark};

/// Milliseconds on the caller's monotonic clock.
pub type Millis = u64;

/// What the schedulers may look at for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    /// Client address.
    pub saddr: IpAddr,
    /// Client port.
    pub sport: u16,
    /// Address the client connected to (the VIP).
    pub daddr: IpAddr,
    /// Port the client connected to.
    pub dport: u16,
}

/// Default expiry of lblc/lblcr table entries (the kernel's `lblc_expiration`, 24 hours).
pub const LBLC_EXPIRATION_MS: Millis = 24 * 3600 * 1000;

/// A scheduler and its state for one service.
#[derive(Debug, Clone)]
pub struct Scheduler {
    kind: SchedKind,
    flags: SchedFlags,
    state: State,
    /// Idle time after which lblc/lblcr entries are dropped, and after which an lblcr set
    /// with several servers loses its most loaded one.
    pub lblc_expiration_ms: Millis,
}

#[derive(Debug, Clone)]
enum State {
    /// Index of the last server chosen; None = list head.
    Rr {
        last: Option<usize>,
    },
    Wrr(WrrMark),
    Stateless,
    Lblc(HashMap<IpAddr, LblcEntry>),
    Lblcr(HashMap<IpAddr, LblcrEntry>),
    /// Bucket → index into the destination list.
    Buckets(Vec<Option<usize>>),
}

fn gcd(a: i32, b: i32) -> i32 {
    let (mut a, mut b) = (a.abs(), b.abs());
    while b != 0 {
        let t = a % b;
        a = b;
        b = t;
    }
    a
}

impl Scheduler {
    /// A scheduler of `kind` for the destination list `dests`.
    pub fn new(kind: SchedKind, flags: SchedFlags, dests: &[Dest]) -> Scheduler {
        let state = match kind {
            SchedKind::Rr => State::Rr { last: None },
            SchedKind::Wrr => State::Wrr(WrrMark { cl: None, cw: 0, mw: 0, di: 1 }),
            SchedKind::Lc | SchedKind::Wlc | SchedKind::Sed | SchedKind::Nq => State::Stateless,
            SchedKind::Lblc => State::Lblc(HashMap::new()),
            SchedKind::Lblcr => State::Lblcr(HashMap::new()),
            SchedKind::Dh | SchedKind::Sh | SchedKind::Mh => State::Buckets(Vec::new()),
        };
        let mut s = Scheduler { kind, flags, state, lblc_expiration_ms: LBLC_EXPIRATION_MS };
        if let State::Wrr(m) = &mut s.state {
            m.di = wrr_gcd(dests);
            m.mw = max_weight(dests) - (m.di - 1);
            m.cw = m.mw;
        }
        s.rebuild(dests);
        s
    }

    /// Which algorithm this is.
    pub fn kind(&self) -> SchedKind {
        self.kind
    }

    /// The `-b` flags.
    pub fn flags(&self) -> SchedFlags {
        self.flags
    }

    fn rebuild(&mut self, dests: &[Dest]) {
        if let State::Buckets(t) = &mut self.state {
            *t = match self.kind {
                SchedKind::Sh => sh_build(dests),
                SchedKind::Dh => dh_build(dests),
                _ => mh_build(dests),
            };
        }
    }

    /// Tells the scheduler the destination list changed. `removed`: the index a deleted
    /// server had (the list passed is the list after deletion); `updated`: only a weight
    /// or threshold changed (the kernel's `upd_dest`, which `dh` ignores).
    pub fn dests_changed(&mut self, dests: &[Dest], removed: Option<(usize, DestId)>, updated: bool) {
        match &mut self.state {
            State::Rr { last } => {
                // ip_vs_rr_del_dest: a position on the deleted server moves to the previous one.
                if let (Some((idx, _)), Some(l)) = (removed, *last) {
                    *last = match l.cmp(&idx) {
                        std::cmp::Ordering::Less => Some(l),
                        std::cmp::Ordering::Equal => l.checked_sub(1),
                        std::cmp::Ordering::Greater => Some(l - 1),
                    };
                }
            }
            State::Wrr(m) => {
                // ip_vs_wrr_dest_changed
                m.cl = None;
                m.di = wrr_gcd(dests);
                m.mw = max_weight(dests) - (m.di - 1);
                if m.cw > m.mw || m.cw == 0 {
                    m.cw = m.mw;
                } else if m.di > 1 {
                    m.cw = (m.cw / m.di) * m.di + 1;
                }
            }
            State::Lblc(t) => {
                if let Some((_, id)) = removed {
                    t.retain(|_, e| e.dest != id);
                }
            }
            State::Lblcr(t) => {
                if let Some((_, id)) = removed {
                    for e in t.values_mut() {
                        e.set.retain(|&d| d != id);
                    }
                    t.retain(|_, e| !e.set.is_empty());
                }
            }
            State::Stateless | State::Buckets(_) => {}
        }
        if !(updated && self.kind == SchedKind::Dh) {
            self.rebuild(dests);
        }
    }

    /// Drops lblc/lblcr entries idle for longer than the expiration.
    pub fn expire(&mut self, now_ms: Millis) {
        let exp = self.lblc_expiration_ms;
        match &mut self.state {
            State::Lblc(t) => t.retain(|_, e| now_ms.saturating_sub(e.lastuse) <= exp),
            State::Lblcr(t) => t.retain(|_, e| now_ms.saturating_sub(e.lastuse) <= exp),
            _ => {}
        }
    }

    /// Picks the destination (an index into `dests`) for a new connection, or None when
    /// no server is available.
    pub fn schedule(&mut self, dests: &[Dest], pkt: &Packet, now_ms: Millis) -> Option<usize> {
        match self.kind {
            SchedKind::Rr => self.rr(dests),
            SchedKind::Wrr => self.wrr(dests),
            SchedKind::Lc => lc(dests),
            SchedKind::Wlc => weighted_least(dests, Dest::overhead),
            SchedKind::Sed => weighted_least(dests, |d| d.active as i64 + 1),
            SchedKind::Nq => nq(dests),
            SchedKind::Lblc => self.lblc(dests, pkt, now_ms),
            SchedKind::Lblcr => self.lblcr(dests, pkt, now_ms),
            SchedKind::Dh => self.dh(dests, pkt),
            SchedKind::Sh => self.sh(dests, pkt),
            SchedKind::Mh => self.mh(dests, pkt),
        }
    }
}

/// Destination lists and packets shared by the schedulers' tests.
#[cfg(test)]
mod test_support {
    use super::*;
    use proptest::prelude::*;
    use std::net::SocketAddr;

    pub(super) fn dests(weights: &[i32]) -> Vec<Dest> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let addr: SocketAddr = format!("10.0.0.{}:80", i + 1).parse().unwrap();
                Dest::new(i as u64 + 1, addr, w)
            })
            .collect()
    }

    pub(super) fn pkt(src: &str, dst: &str) -> Packet {
        Packet { saddr: src.parse().unwrap(), sport: 40000, daddr: dst.parse().unwrap(), dport: 80 }
    }

    // ---- property tests against straightforward references of the kernel formulas ----

    pub(super) fn arb_dests() -> impl Strategy<Value = Vec<Dest>> {
        prop::collection::vec((0i32..5, 0u32..4, 0u32..600, any::<bool>()), 1..7).prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (w, a, ina, over))| {
                    let mut d = Dest::new(i as u64 + 1, format!("10.0.0.{}:80", i + 1).parse().unwrap(), w);
                    d.active = a;
                    d.inactive = ina;
                    d.overloaded = over && i % 3 == 0;
                    d
                })
                .collect()
        })
    }
}
