//! The hashing schedulers, as `ip_vs_dh.c`, `ip_vs_sh.c` and `ip_vs_mh.c`: `dh` and `sh`
//! hash the destination / source address into 256 buckets dealt round robin over the list
//! (`sh`: each server gets `weight` consecutive buckets); `mh` is Maglev hashing, a
//! 4093-entry lookup table built from per-server permutations (SipHash-1-3 with the
//! kernel's fixed keys), turns scaled by the gcd. The kernel's hash functions are here too.

use std::net::IpAddr;

use super::{gcd, Packet, Scheduler, State};
use crate::model::{Dest, SchedKind};

/// `IP_VS_SH_TAB_SIZE` / `IP_VS_DH_TAB_SIZE`: 256 buckets.
pub const HASH_TAB_SIZE: usize = 256;
/// `IP_VS_MH_TAB_SIZE`: the prime 4093 (CONFIG_IP_VS_MH_TAB_INDEX = 12).
pub const MH_TAB_SIZE: usize = 4093;
/// `IP_VS_MH_TAB_BITS`: `ilog2(MH_TAB_SIZE) / 2`.
const MH_TAB_BITS: u32 = 5;

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
pub(super) fn mh_build(dests: &[Dest]) -> Vec<Option<usize>> {
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
pub(super) fn sh_build(dests: &[Dest]) -> Vec<Option<usize>> {
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
pub(super) fn dh_build(dests: &[Dest]) -> Vec<Option<usize>> {
    (0..HASH_TAB_SIZE).map(|i| if dests.is_empty() { None } else { Some(i % dests.len()) }).collect()
}

impl Scheduler {
    pub(super) fn dh(&mut self, dests: &[Dest], pkt: &Packet) -> Option<usize> {
        let State::Buckets(t) = &self.state else { unreachable!("dh state") };
        let i = (*t.get(dh_hashkey(pkt.daddr))?)?;
        let d = dests.get(i)?;
        (d.available && d.weight > 0 && !d.overloaded).then_some(i)
    }

    pub(super) fn sh(&mut self, dests: &[Dest], pkt: &Packet) -> Option<usize> {
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

    pub(super) fn mh(&mut self, dests: &[Dest], pkt: &Packet) -> Option<usize> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SchedFlags;
    use crate::sched::test_support::{arb_dests, dests, pkt};
    use proptest::prelude::*;

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

    proptest! {
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
