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

use std::collections::HashMap;
use std::net::IpAddr;

use crate::model::{Dest, DestId, SchedFlags, SchedKind};

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

/// `IP_VS_SH_TAB_SIZE` / `IP_VS_DH_TAB_SIZE`: 256 buckets.
pub const HASH_TAB_SIZE: usize = 256;
/// `IP_VS_MH_TAB_SIZE`: the prime 4093 (CONFIG_IP_VS_MH_TAB_INDEX = 12).
pub const MH_TAB_SIZE: usize = 4093;
/// `IP_VS_MH_TAB_BITS`: `ilog2(MH_TAB_SIZE) / 2`.
const MH_TAB_BITS: u32 = 5;
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct WrrMark {
    /// Index of the current server; None = list head.
    cl: Option<usize>,
    /// Current weight.
    cw: i32,
    /// Maximum weight, minus (gcd - 1).
    mw: i32,
    /// gcd of the weights.
    di: i32,
}

#[derive(Debug, Clone, Copy)]
struct LblcEntry {
    dest: DestId,
    lastuse: Millis,
}

#[derive(Debug, Clone)]
struct LblcrEntry {
    /// Most recently inserted first, as the kernel's `list_add`.
    set: Vec<DestId>,
    lastmod: Millis,
    lastuse: Millis,
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

/// `ip_vs_wrr_gcd_weight`: gcd of the weights above 0, or 1 when there are none.
fn wrr_gcd(dests: &[Dest]) -> i32 {
    let mut g = 0;
    for d in dests {
        if d.weight > 0 {
            g = if g > 0 { gcd(d.weight, g) } else { d.weight };
        }
    }
    if g > 0 {
        g
    } else {
        1
    }
}

fn max_weight(dests: &[Dest]) -> i32 {
    dests.iter().map(|d| d.weight).fold(0, i32::max)
}

/// lblc/lblcr `is_overloaded`: more active connections than weight while some server is
/// less than half loaded.
fn lblc_overloaded(dest: &Dest, dests: &[Dest]) -> bool {
    if dest.active as i64 > dest.weight as i64 {
        return dests.iter().any(|d| (d.active as i64) * 2 < d.weight as i64);
    }
    false
}

/// Weighted least-connection over `dests` as `wlc` and `__ip_vs_lblc_schedule` do it,
/// with `overhead` the per-server load measure.
fn weighted_least(dests: &[Dest], overhead: impl Fn(&Dest) -> i64) -> Option<usize> {
    let first = dests.iter().position(|d| !d.overloaded && d.weight > 0)?;
    let mut least = first;
    let mut loh = overhead(&dests[first]);
    for (i, d) in dests.iter().enumerate().skip(first + 1) {
        if d.overloaded {
            continue;
        }
        let doh = overhead(d);
        if loh * d.weight as i64 > doh * dests[least].weight as i64 {
            least = i;
            loh = doh;
        }
    }
    Some(least)
}

/// The kernel's address fold for hashing: IPv4 as is, IPv6 as the xor of its four words.
fn addr_fold(addr: IpAddr) -> u32 {
    match addr {
        IpAddr::V4(a) => u32::from(a),
        IpAddr::V6(a) => {
            let o = a.octets();
            let w = |i: usize| u32::from_be_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            w(0) ^ w(4) ^ w(8) ^ w(12)
        }
    }
}

/// `hash_32(val, bits)`.
fn hash_32(val: u32, bits: u32) -> u32 {
    val.wrapping_mul(0x61C8_8647) >> (32 - bits)
}

/// `ip_vs_sh_hashkey`.
pub fn sh_hashkey(addr: IpAddr, port: u16, offset: u32) -> usize {
    (offset.wrapping_add(hash_32((port as u32).wrapping_add(addr_fold(addr)), 8)) as usize) & (HASH_TAB_SIZE - 1)
}

/// `ip_vs_dh_hashkey`.
pub fn dh_hashkey(addr: IpAddr) -> usize {
    (addr_fold(addr).wrapping_mul(2_654_435_761) as usize) & (HASH_TAB_SIZE - 1)
}

/// The kernel's `hsiphash` on 64-bit machines (SipHash-1-3, result truncated to 32 bits)
/// of one native-endian `u32`, with both key words equal to `k`.
fn hsiphash_u32(v: u32, k: u64) -> u32 {
    let (mut v0, mut v1, mut v2, mut v3) = (
        0x736f_6d65_7073_6575u64 ^ k,
        0x646f_7261_6e64_6f6du64 ^ k,
        0x6c79_6765_6e65_7261u64 ^ k,
        0x7465_6462_7974_6573u64 ^ k,
    );
    let b: u64 = (4u64 << 56) | v as u64;
    let round = |v0: &mut u64, v1: &mut u64, v2: &mut u64, v3: &mut u64| {
        *v0 = v0.wrapping_add(*v1);
        *v1 = v1.rotate_left(13);
        *v1 ^= *v0;
        *v0 = v0.rotate_left(32);
        *v2 = v2.wrapping_add(*v3);
        *v3 = v3.rotate_left(16);
        *v3 ^= *v2;
        *v0 = v0.wrapping_add(*v3);
        *v3 = v3.rotate_left(21);
        *v3 ^= *v0;
        *v2 = v2.wrapping_add(*v1);
        *v1 = v1.rotate_left(17);
        *v1 ^= *v2;
        *v2 = v2.rotate_left(32);
    };
    v3 ^= b;
    round(&mut v0, &mut v1, &mut v2, &mut v3);
    v0 ^= b;
    v2 ^= 0xff;
    round(&mut v0, &mut v1, &mut v2, &mut v3);
    round(&mut v0, &mut v1, &mut v2, &mut v3);
    round(&mut v0, &mut v1, &mut v2, &mut v3);
    ((v0 ^ v1) ^ (v2 ^ v3)) as u32
}

const MH_KEY1: u64 = 2_654_435_761;
const MH_KEY2: u64 = 2_654_435_801;

/// `ip_vs_mh_hashkey`.
fn mh_hashkey(addr: IpAddr, port: u16, key: u64, offset: u32) -> u32 {
    let v = offset.wrapping_add(port as u32).wrapping_add(addr_fold(addr));
    hsiphash_u32(v, key)
}

fn mh_unavailable(d: &Dest) -> bool {
    d.weight <= 0 || d.overloaded
}

/// `ip_vs_mh_permutate` + `ip_vs_mh_populate`: the Maglev lookup table.
fn mh_build(dests: &[Dest]) -> Vec<Option<usize>> {
    let mut table = vec![None; MH_TAB_SIZE];
    let mut g = 0;
    for d in dests {
        if d.last_weight > 0 {
            g = if g > 0 { gcd(d.last_weight, g) } else { d.last_weight };
        }
    }
    if g < 1 {
        return table;
    }
    let mw = dests.iter().map(|d| d.last_weight).fold(0, i32::max) / g;
    let fls = 32 - (mw as u32).leading_zeros();
    let rshift = fls.saturating_sub(MH_TAB_BITS);
    struct Setup {
        perm: usize,
        skip: usize,
        turns: i32,
    }
    let mut setup: Vec<Setup> = dests
        .iter()
        .map(|d| {
            let offset = mh_hashkey(d.addr.ip(), d.addr.port(), MH_KEY1, 0) as usize % MH_TAB_SIZE;
            let skip = mh_hashkey(d.addr.ip(), d.addr.port(), MH_KEY2, 0) as usize % (MH_TAB_SIZE - 1) + 1;
            let lw = d.last_weight;
            let scaled = if lw > 0 { (lw / g) >> rshift } else { 0 };
            let turns = if scaled != 0 { scaled } else { i32::from(lw != 0) };
            Setup { perm: offset, skip, turns }
        })
        .collect();
    let mut taken = vec![false; MH_TAB_SIZE];
    let mut n = 0;
    let mut dt_count = 0;
    'outer: while n < MH_TAB_SIZE {
        let mut i = 0;
        while i < dests.len() {
            let ds = &mut setup[i];
            if ds.turns < 1 {
                i += 1;
                continue;
            }
            let mut c = ds.perm;
            while taken[c] {
                ds.perm += ds.skip;
                if ds.perm >= MH_TAB_SIZE {
                    ds.perm -= MH_TAB_SIZE;
                }
                c = ds.perm;
            }
            taken[c] = true;
            table[c] = Some(i);
            n += 1;
            if n == MH_TAB_SIZE {
                break 'outer;
            }
            dt_count += 1;
            if dt_count >= ds.turns {
                dt_count = 0;
                i += 1;
            }
        }
    }
    table
}

/// `ip_vs_sh_reassign`: each server takes `weight` consecutive buckets (at least one).
fn sh_build(dests: &[Dest]) -> Vec<Option<usize>> {
    let mut table = vec![None; HASH_TAB_SIZE];
    if dests.is_empty() {
        return table;
    }
    let mut p = 0;
    let mut d_count = 0;
    for b in table.iter_mut() {
        *b = Some(p);
        d_count += 1;
        if d_count >= dests[p].weight {
            p = (p + 1) % dests.len();
            d_count = 0;
        }
    }
    table
}

/// `ip_vs_dh_reassign`: buckets dealt round robin, weights ignored.
fn dh_build(dests: &[Dest]) -> Vec<Option<usize>> {
    (0..HASH_TAB_SIZE).map(|i| if dests.is_empty() { None } else { Some(i % dests.len()) }).collect()
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

    fn rr(&mut self, dests: &[Dest]) -> Option<usize> {
        let State::Rr { last } = &mut self.state else { unreachable!("rr state") };
        let n = dests.len();
        if n == 0 {
            return None;
        }
        // Scan once around the list starting after the last pick (the kernel skips the
        // list head while wrapping, so every entry is looked at exactly once).
        let start = last.map_or(0, |l| l + 1);
        for k in 0..n {
            let i = (start + k) % n;
            if dests[i].usable() {
                *last = Some(i);
                return Some(i);
            }
        }
        None
    }

    fn wrr(&mut self, dests: &[Dest]) -> Option<usize> {
        let State::Wrr(mark) = &mut self.state else { unreachable!("wrr state") };
        if mark.mw == 0 {
            return None;
        }
        let last = mark.cl;
        let mut pos = mark.cl;
        let mut stop: Option<usize> = None;
        let mut last_pass = false;
        let mut restarted = false;
        loop {
            let from = pos.map_or(0, |p| p + 1);
            for (i, d) in dests.iter().enumerate().skip(from) {
                if !d.overloaded && d.weight >= mark.cw {
                    mark.cl = Some(i);
                    return Some(i);
                }
                if stop == Some(i) {
                    return None;
                }
            }
            mark.cw -= mark.di;
            if mark.cw <= 0 {
                mark.cw = mark.mw;
                if last_pass || last.is_none() {
                    return None;
                }
                restarted = true;
            }
            last_pass = mark.cw <= mark.di;
            if last_pass && restarted && last.is_some() {
                stop = last;
            }
            pos = None;
        }
    }

    fn lblc(&mut self, dests: &[Dest], pkt: &Packet, now_ms: Millis) -> Option<usize> {
        let State::Lblc(table) = &mut self.state else { unreachable!("lblc state") };
        if let Some(e) = table.get_mut(&pkt.daddr) {
            e.lastuse = now_ms;
            if let Some(i) = dests.iter().position(|d| d.id == e.dest) {
                let d = &dests[i];
                if d.available && d.weight > 0 && !lblc_overloaded(d, dests) {
                    return Some(i);
                }
            }
        }
        let i = weighted_least(dests, Dest::overhead)?;
        table.insert(pkt.daddr, LblcEntry { dest: dests[i].id, lastuse: now_ms });
        Some(i)
    }

    fn lblcr(&mut self, dests: &[Dest], pkt: &Packet, now_ms: Millis) -> Option<usize> {
        let exp = self.lblc_expiration_ms;
        let State::Lblcr(table) = &mut self.state else { unreachable!("lblcr state") };
        let index = |id: DestId| dests.iter().position(|d| d.id == id);
        if let Some(en) = table.get_mut(&pkt.daddr) {
            en.lastuse = now_ms;
            let min = set_min(&en.set, dests);
            if en.set.len() > 1 && now_ms > en.lastmod + exp {
                if let Some(m) = set_max(&en.set, dests) {
                    en.set.retain(|&d| d != m);
                    en.lastmod = now_ms;
                }
            }
            if let Some(i) = min.and_then(index) {
                if !lblc_overloaded(&dests[i], dests) {
                    return Some(i);
                }
            }
            let i = weighted_least(dests, Dest::overhead)?;
            let id = dests[i].id;
            if !en.set.contains(&id) {
                en.set.insert(0, id);
                en.lastmod = now_ms;
            }
            return Some(i);
        }
        let i = weighted_least(dests, Dest::overhead)?;
        table.insert(pkt.daddr, LblcrEntry { set: vec![dests[i].id], lastmod: now_ms, lastuse: now_ms });
        Some(i)
    }

    fn dh(&mut self, dests: &[Dest], pkt: &Packet) -> Option<usize> {
        let State::Buckets(t) = &self.state else { unreachable!("dh state") };
        let i = (*t.get(dh_hashkey(pkt.daddr))?)?;
        let d = dests.get(i)?;
        (d.available && d.weight > 0 && !d.overloaded).then_some(i)
    }

    fn sh(&mut self, dests: &[Dest], pkt: &Packet) -> Option<usize> {
        let State::Buckets(t) = &self.state else { unreachable!("sh state") };
        let port = if self.flags.port { pkt.sport } else { 0 };
        let unavailable = |i: Option<usize>| i.and_then(|i| dests.get(i)).is_none_or(mh_unavailable);
        let first = t.get(sh_hashkey(pkt.saddr, port, 0)).copied().flatten();
        first?;
        if !unavailable(first) {
            return first;
        }
        if !self.flags.fallback {
            return None;
        }
        let ihash = sh_hashkey(pkt.saddr, port, 0) as u32;
        for offset in 0..HASH_TAB_SIZE as u32 {
            let roffset = (offset + ihash) % HASH_TAB_SIZE as u32;
            let i = t[sh_hashkey(pkt.saddr, port, roffset)];
            if !unavailable(i) {
                return i;
            }
        }
        None
    }

    fn mh(&mut self, dests: &[Dest], pkt: &Packet) -> Option<usize> {
        let State::Buckets(t) = &self.state else { unreachable!("mh state") };
        let port = if self.flags.port { pkt.sport } else { 0 };
        let unavailable = |i: usize| dests.get(i).is_none_or(mh_unavailable);
        let ihash = mh_hashkey(pkt.saddr, port, MH_KEY1, 0) as usize % MH_TAB_SIZE;
        let first = t.get(ihash).copied().flatten()?;
        if !unavailable(first) {
            return Some(first);
        }
        if !self.flags.fallback {
            return None;
        }
        for offset in 0..MH_TAB_SIZE {
            let roffset = ((offset + ihash) % MH_TAB_SIZE) as u32;
            let h = mh_hashkey(pkt.saddr, port, MH_KEY1, roffset) as usize % MH_TAB_SIZE;
            let i = t[h]?;
            if !unavailable(i) {
                return Some(i);
            }
        }
        None
    }

    /// The Maglev lookup table (for tests and `lvsadm` diagnostics): index per slot.
    pub fn mh_table(&self) -> Option<&[Option<usize>]> {
        match (&self.state, self.kind) {
            (State::Buckets(t), SchedKind::Mh | SchedKind::Sh | SchedKind::Dh) => Some(t),
            _ => None,
        }
    }
}

fn lc(dests: &[Dest]) -> Option<usize> {
    let mut least: Option<(usize, i64)> = None;
    for (i, d) in dests.iter().enumerate() {
        if d.overloaded || d.weight == 0 {
            continue;
        }
        let doh = d.overhead();
        if least.is_none_or(|(_, loh)| doh < loh) {
            least = Some((i, doh));
        }
    }
    least.map(|(i, _)| i)
}

fn nq(dests: &[Dest]) -> Option<usize> {
    let mut least: Option<(usize, i64)> = None;
    for (i, d) in dests.iter().enumerate() {
        if d.overloaded || d.weight == 0 {
            continue;
        }
        let doh = d.active as i64 + 1;
        if d.active == 0 {
            return Some(i);
        }
        if least.is_none_or(|(l, loh)| loh * d.weight as i64 > doh * dests[l].weight as i64) {
            least = Some((i, doh));
        }
    }
    least.map(|(i, _)| i)
}

/// `ip_vs_dest_set_min`: the weighted least loaded available member of an lblcr set.
fn set_min(set: &[DestId], dests: &[Dest]) -> Option<DestId> {
    let get = |id: DestId| dests.iter().find(|d| d.id == id);
    let mut it = set.iter().filter_map(|&id| get(id));
    let mut least = loop {
        let d = it.next()?;
        if d.overloaded {
            continue;
        }
        if d.weight > 0 && d.available {
            break d;
        }
    };
    let mut loh = least.overhead();
    for d in it {
        if d.overloaded {
            continue;
        }
        let doh = d.overhead();
        if loh * d.weight as i64 > doh * least.weight as i64 && d.available {
            least = d;
            loh = doh;
        }
    }
    Some(least.id)
}

/// `ip_vs_dest_set_max`: the weighted most loaded member of an lblcr set.
fn set_max(set: &[DestId], dests: &[Dest]) -> Option<DestId> {
    let get = |id: DestId| dests.iter().find(|d| d.id == id);
    let mut it = set.iter().filter_map(|&id| get(id));
    let mut most = loop {
        let d = it.next()?;
        if d.weight > 0 {
            break d;
        }
    };
    let mut moh = most.overhead();
    for d in it {
        let doh = d.overhead();
        if moh * (d.weight as i64) < doh * most.weight as i64 && d.weight > 0 {
            most = d;
            moh = doh;
        }
    }
    Some(most.id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::SocketAddr;

    fn dests(weights: &[i32]) -> Vec<Dest> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let addr: SocketAddr = format!("10.0.0.{}:80", i + 1).parse().unwrap();
                Dest::new(i as u64 + 1, addr, w)
            })
            .collect()
    }

    fn pkt(src: &str, dst: &str) -> Packet {
        Packet { saddr: src.parse().unwrap(), sport: 40000, daddr: dst.parse().unwrap(), dport: 80 }
    }

    fn letters(kind: SchedKind, weights: &[i32], n: usize) -> String {
        let d = dests(weights);
        let mut s = Scheduler::new(kind, SchedFlags::default(), &d);
        let p = pkt("192.0.2.1", "10.1.1.1");
        (0..n).map(|_| s.schedule(&d, &p, 0).map_or('-', |i| (b'A' + i as u8) as char)).collect()
    }

    #[test]
    fn wrr_kernel_example() {
        assert_eq!(letters(SchedKind::Wrr, &[4, 3, 2], 18), "AABABCABCAABABCABC");
    }

    #[test]
    fn wrr_gcd_stepping() {
        // gcd 2: mw = 4 - 1 = 3, cw steps 3, 1.
        assert_eq!(letters(SchedKind::Wrr, &[4, 2], 6), "AABAAB");
        assert_eq!(letters(SchedKind::Wrr, &[6, 3, 3], 8), "AABCAABC");
        assert_eq!(letters(SchedKind::Wrr, &[1, 1, 1], 4), "ABCA");
        assert_eq!(letters(SchedKind::Wrr, &[0, 0], 3), "---");
        assert_eq!(letters(SchedKind::Wrr, &[0, 2, 0], 3), "BBB");
    }

    #[test]
    fn wrr_skips_overloaded_and_gives_up() {
        let mut d = dests(&[2, 1]);
        let mut s = Scheduler::new(SchedKind::Wrr, SchedFlags::default(), &d);
        let p = pkt("192.0.2.1", "10.1.1.1");
        d[0].overloaded = true;
        let picks: Vec<_> = (0..4).map(|_| s.schedule(&d, &p, 0)).collect();
        assert_eq!(picks, vec![Some(1), Some(1), Some(1), Some(1)]);
        d[1].overloaded = true;
        assert_eq!(s.schedule(&d, &p, 0), None);
    }

    #[test]
    fn rr_skips_quiesced() {
        assert_eq!(letters(SchedKind::Rr, &[1, 0, 5], 5), "ACACA");
        assert_eq!(letters(SchedKind::Rr, &[0, 0], 2), "--");
    }

    #[test]
    fn rr_delete_moves_back() {
        let mut d = dests(&[1, 1, 1]);
        let mut s = Scheduler::new(SchedKind::Rr, SchedFlags::default(), &d);
        let p = pkt("192.0.2.1", "10.1.1.1");
        assert_eq!(s.schedule(&d, &p, 0), Some(0));
        assert_eq!(s.schedule(&d, &p, 0), Some(1));
        let gone = d.remove(1);
        s.dests_changed(&d, Some((1, gone.id)), false);
        // Position moved back to A; next is C (now index 1).
        assert_eq!(s.schedule(&d, &p, 0), Some(1));
    }

    #[test]
    fn lc_counts_active_256_times() {
        let mut d = dests(&[1, 1]);
        d[0].active = 1;
        d[1].inactive = 255;
        assert_eq!(lc(&d), Some(1));
        d[1].inactive = 256;
        // Tie: the first one wins.
        assert_eq!(lc(&d), Some(0));
        d[1].inactive = 257;
        assert_eq!(lc(&d), Some(0));
    }

    #[test]
    fn wlc_cross_multiplies() {
        let mut d = dests(&[3, 1]);
        d[0].active = 2; // 512/3
        d[1].active = 1; // 256/1
        assert_eq!(weighted_least(&d, Dest::overhead), Some(0));
        d[0].active = 3; // 768/3 = 256/1: tie, first wins
        assert_eq!(weighted_least(&d, Dest::overhead), Some(0));
        d[0].active = 4;
        assert_eq!(weighted_least(&d, Dest::overhead), Some(1));
    }

    #[test]
    fn sed_and_nq() {
        let mut d = dests(&[1, 2]);
        // sed: (0+1)/1 vs (0+1)/2 → B.
        assert_eq!(weighted_least(&d, |x| x.active as i64 + 1), Some(1));
        // nq: A is idle → A at once.
        assert_eq!(nq(&d), Some(0));
        d[0].active = 1;
        d[1].active = 2;
        // nq: nobody idle; (1+1)/1=2 vs (2+1)/2=1.5 → B.
        assert_eq!(nq(&d), Some(1));
        d[1].weight = 0;
        assert_eq!(nq(&d), Some(0));
    }

    #[test]
    fn sh_table_and_fallback() {
        let d = dests(&[2, 1]);
        let s = Scheduler::new(SchedKind::Sh, SchedFlags::default(), &d);
        let t = s.mh_table().unwrap().to_vec();
        // Two buckets A, one B, repeating.
        assert_eq!(&t[..6], &[Some(0), Some(0), Some(1), Some(0), Some(0), Some(1)]);
        assert_eq!(t.len(), 256);
        // Same client, same server.
        let mut s = s;
        let p = pkt("192.0.2.77", "10.1.1.1");
        let first = s.schedule(&d, &p, 0);
        assert!(first.is_some());
        for _ in 0..5 {
            assert_eq!(s.schedule(&d, &p, 0), first);
        }
        // Expected bucket from the kernel formula.
        let b = (hash_32(u32::from(std::net::Ipv4Addr::new(192, 0, 2, 77)), 8)) as usize;
        assert_eq!(first, t[b]);
        // Quiesce it: no fallback → None; with fallback → the other one.
        let mut d2 = d.clone();
        d2[first.unwrap()].weight = 0;
        let mut s2 = Scheduler::new(SchedKind::Sh, SchedFlags::default(), &d2);
        assert_eq!(s2.schedule(&d2, &p, 0), None);
        let mut s3 = Scheduler::new(SchedKind::Sh, SchedFlags { fallback: true, port: false }, &d2);
        assert_eq!(s3.schedule(&d2, &p, 0), Some(1 - first.unwrap()));
    }

    #[test]
    fn dh_hashes_destination() {
        let d = dests(&[1, 1, 1]);
        let mut s = Scheduler::new(SchedKind::Dh, SchedFlags::default(), &d);
        for dst in ["10.9.0.1", "10.9.0.2", "10.9.0.3", "10.9.0.4"] {
            let a: std::net::Ipv4Addr = dst.parse().unwrap();
            let expect = (u32::from(a).wrapping_mul(2_654_435_761) & 0xff) as usize % 3;
            for src in ["192.0.2.1", "192.0.2.2"] {
                assert_eq!(s.schedule(&d, &pkt(src, dst), 0), Some(expect));
            }
        }
    }

    #[test]
    fn hsiphash_is_siphash13_truncated() {
        use std::hash::Hasher;
        for (v, k) in [(0u32, MH_KEY1), (1, MH_KEY1), (0xdead_beef, MH_KEY2), (u32::MAX, MH_KEY2)] {
            let mut h = siphasher::sip::SipHasher13::new_with_keys(k, k);
            h.write(&v.to_le_bytes());
            assert_eq!(hsiphash_u32(v, k), h.finish() as u32, "v={v:#x}");
        }
    }

    #[test]
    fn mh_table_full_and_proportional() {
        let d = dests(&[1, 1, 2]);
        let s = Scheduler::new(SchedKind::Mh, SchedFlags::default(), &d);
        let t = s.mh_table().unwrap();
        assert_eq!(t.len(), MH_TAB_SIZE);
        let mut counts = [0usize; 3];
        for e in t {
            counts[e.expect("every slot filled")] += 1;
        }
        // Turns 1,1,2: slots split 1:1:2 (to within one round).
        assert!(counts[0].abs_diff(MH_TAB_SIZE / 4) <= 2, "{counts:?}");
        assert!(counts[1].abs_diff(MH_TAB_SIZE / 4) <= 2, "{counts:?}");
        assert!(counts[2].abs_diff(MH_TAB_SIZE / 2) <= 2, "{counts:?}");
    }

    #[test]
    fn mh_minimal_disruption() {
        let d = dests(&[1, 1, 1, 1]);
        let s = Scheduler::new(SchedKind::Mh, SchedFlags::default(), &d);
        let before: Vec<_> = s.mh_table().unwrap().to_vec();
        let mut d2 = d.clone();
        let gone = d2.remove(3);
        let mut s2 = s.clone();
        s2.dests_changed(&d2, Some((3, gone.id)), false);
        let after = s2.mh_table().unwrap();
        // Slots that did not belong to the removed server mostly keep their server.
        let kept = before.iter().zip(after).filter(|(b, a)| **b != Some(3) && *b == *a).count();
        let others = before.iter().filter(|b| **b != Some(3)).count();
        assert!(kept * 100 >= others * 80, "kept {kept} of {others}");
    }

    #[test]
    fn mh_quiesce_keeps_table() {
        let mut d = dests(&[1, 1, 1]);
        let mut s = Scheduler::new(SchedKind::Mh, SchedFlags::default(), &d);
        let before = s.mh_table().unwrap().to_vec();
        d[1].weight = 0; // last_weight stays 1
        s.dests_changed(&d, None, true);
        assert_eq!(s.mh_table().unwrap(), &before[..]);
    }

    #[test]
    fn lblc_sticks_per_destination() {
        let mut d = dests(&[1, 1]);
        let mut s = Scheduler::new(SchedKind::Lblc, SchedFlags::default(), &d);
        let p1 = pkt("192.0.2.1", "10.9.0.1");
        let p2 = pkt("192.0.2.1", "10.9.0.2");
        assert_eq!(s.schedule(&d, &p1, 0), Some(0));
        d[0].active = 1;
        assert_eq!(s.schedule(&d, &p2, 0), Some(1));
        d[1].active = 1;
        d[0].active = 5;
        // A is over its weight, but nobody is under half load: keep A.
        assert_eq!(s.schedule(&d, &p1, 0), Some(0));
        d[1].weight = 10; // now B has 2*1 < 10: A counts as overloaded → reschedule to B
        assert_eq!(s.schedule(&d, &p1, 0), Some(1));
        assert_eq!(s.schedule(&d, &p1, 0), Some(1));
        // Expiry forgets the entry.
        s.expire(LBLC_EXPIRATION_MS + 1);
        d[1].active = 100;
        d[0].active = 0;
        assert_eq!(s.schedule(&d, &p1, LBLC_EXPIRATION_MS + 2), Some(0));
    }

    #[test]
    fn lblcr_grows_and_shrinks_set() {
        let mut d = dests(&[1, 1, 1]);
        let mut s = Scheduler::new(SchedKind::Lblcr, SchedFlags::default(), &d);
        let p = pkt("192.0.2.1", "10.9.0.1");
        assert_eq!(s.schedule(&d, &p, 0), Some(0));
        // A overloaded (2 > 1 while C has 0*2 < 1): add the wlc choice to the set.
        d[0].active = 2;
        d[1].active = 1;
        assert_eq!(s.schedule(&d, &p, 1), Some(2));
        let State::Lblcr(t) = &s.state else { panic!() };
        assert_eq!(t[&p.daddr].set, vec![3, 1]);
        // The least loaded member of the set is C now.
        d[2].active = 1;
        assert_eq!(s.schedule(&d, &p, 2), Some(2));
        // After the expiration with two members, the most loaded (A) leaves the set.
        let later = 1 + LBLC_EXPIRATION_MS + 1;
        assert_eq!(s.schedule(&d, &p, later), Some(2));
        let State::Lblcr(t) = &s.state else { panic!() };
        assert_eq!(t[&p.daddr].set, vec![3]);
    }

    // ---- property tests against straightforward references of the kernel formulas ----

    fn arb_dests() -> impl Strategy<Value = Vec<Dest>> {
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

    /// Reference: the first usable server minimising `num/den` exactly (rationals).
    fn reference_min(dests: &[Dest], num: impl Fn(&Dest) -> i64, den: impl Fn(&Dest) -> i64) -> Option<usize> {
        let mut best: Option<usize> = None;
        for (i, d) in dests.iter().enumerate() {
            if !d.usable() {
                continue;
            }
            match best {
                None => best = Some(i),
                Some(b) => {
                    // num(d)/den(d) < num(b)/den(b), as exact fractions
                    if (num(d) as i128) * (den(&dests[b]) as i128) < (num(&dests[b]) as i128) * (den(d) as i128) {
                        best = Some(i)
                    }
                }
            }
        }
        best
    }

    proptest! {
        #[test]
        fn prop_lc_matches_reference(d in arb_dests()) {
            prop_assert_eq!(lc(&d), reference_min(&d, |x| x.active as i64 * 256 + x.inactive as i64, |_| 1));
        }

        #[test]
        fn prop_wlc_matches_reference(d in arb_dests()) {
            prop_assert_eq!(weighted_least(&d, Dest::overhead),
                reference_min(&d, |x| x.active as i64 * 256 + x.inactive as i64, |x| x.weight as i64));
        }

        #[test]
        fn prop_sed_matches_reference(d in arb_dests()) {
            prop_assert_eq!(weighted_least(&d, |x| x.active as i64 + 1),
                reference_min(&d, |x| x.active as i64 + 1, |x| x.weight as i64));
        }

        #[test]
        fn prop_nq_matches_reference(d in arb_dests()) {
            let idle = d.iter().position(|x| x.usable() && x.active == 0);
            let expect = idle.or_else(|| reference_min(&d, |x| x.active as i64 + 1, |x| x.weight as i64));
            prop_assert_eq!(nq(&d), expect);
        }

        #[test]
        fn prop_wrr_proportional(weights in prop::collection::vec(0i32..6, 1..6)) {
            // Over one full cycle (sum of weights / gcd picks... exactly sum picks), each
            // server is picked exactly `weight` times.
            let d = dests(&weights);
            let mut s = Scheduler::new(SchedKind::Wrr, SchedFlags::default(), &d);
            let p = pkt("192.0.2.1", "10.1.1.1");
            let total: i32 = weights.iter().sum();
            let g = wrr_gcd(&d);
            let rounds = total / g;
            let mut counts = vec![0i32; d.len()];
            for _ in 0..rounds {
                match s.schedule(&d, &p, 0) {
                    Some(i) => counts[i] += 1,
                    None => prop_assert_eq!(total, 0),
                }
            }
            if total > 0 {
                let expect: Vec<i32> = weights.iter().map(|w| w / g).collect();
                prop_assert_eq!(counts, expect);
            }
        }

        #[test]
        fn prop_rr_cycles_over_usable(d in arb_dests(), n in 1usize..20) {
            let mut s = Scheduler::new(SchedKind::Rr, SchedFlags::default(), &d);
            let usable: Vec<usize> = (0..d.len()).filter(|&i| d[i].usable()).collect();
            let p = pkt("192.0.2.1", "10.1.1.1");
            for k in 0..n {
                let got = s.schedule(&d, &p, 0);
                if usable.is_empty() {
                    prop_assert_eq!(got, None);
                } else {
                    prop_assert_eq!(got, Some(usable[k % usable.len()]));
                }
            }
        }

        #[test]
        fn prop_sh_weights_buckets(weights in prop::collection::vec(1i32..5, 1..5)) {
            let d = dests(&weights);
            let s = Scheduler::new(SchedKind::Sh, SchedFlags::default(), &d);
            let t = s.mh_table().unwrap();
            // Walk: weight[i] consecutive buckets per server, round robin.
            let mut i = 0; let mut c = 0;
            for b in t {
                prop_assert_eq!(*b, Some(i));
                c += 1;
                if c >= weights[i] { i = (i + 1) % weights.len(); c = 0; }
            }
        }

        #[test]
        fn prop_hashing_never_picks_unusable(d in arb_dests(), a in any::<u32>(), port in any::<u16>(),
                                             fb in any::<bool>()) {
            for kind in [SchedKind::Sh, SchedKind::Mh, SchedKind::Dh] {
                let mut s = Scheduler::new(kind, SchedFlags { fallback: fb, port: true }, &d);
                let p = Packet { saddr: std::net::Ipv4Addr::from(a).into(), sport: port,
                                 daddr: std::net::Ipv4Addr::from(!a).into(), dport: 80 };
                if let Some(i) = s.schedule(&d, &p, 0) {
                    prop_assert!(d[i].usable());
                }
                if fb && kind != SchedKind::Dh && d.iter().any(|x| x.usable()) && kind == SchedKind::Sh {
                    prop_assert!(s.schedule(&d, &p, 0).is_some());
                }
            }
        }
    }
}
