//! Locality-based least-connection, as `ip_vs_lblc.c` and `ip_vs_lblcr.c`: a table from
//! the packet's destination address to a server (`lblc`) or a set of servers (`lblcr`),
//! rescheduled with `wlc` when the server is overloaded (`active > weight` while some server
//! has `2*active < weight`). Entries idle past the expiration are dropped by
//! [`Scheduler::expire`].

use super::lc::weighted_least;
use super::{Millis, Packet, Scheduler, State};
use crate::model::{Dest, DestId};

#[derive(Debug, Clone, Copy)]
pub(super) struct LblcEntry {
    pub(super) dest: DestId,
    pub(super) lastuse: Millis,
}

#[derive(Debug, Clone)]
pub(super) struct LblcrEntry {
    /// Most recently inserted first, as the kernel's `list_add`.
    pub(super) set: Vec<DestId>,
    pub(super) lastmod: Millis,
    pub(super) lastuse: Millis,
}

/// lblc/lblcr `is_overloaded`: more active connections than weight while some server is
/// less than half loaded.
fn lblc_overloaded(dest: &Dest, dests: &[Dest]) -> bool {
    if dest.active as i64 > dest.weight as i64 {
        return dests.iter().any(|d| (d.active as i64) * 2 < d.weight as i64);
    }
    false
}

impl Scheduler {
    pub(super) fn lblc(&mut self, dests: &[Dest], pkt: &Packet, now_ms: Millis) -> Option<usize> {
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

    pub(super) fn lblcr(&mut self, dests: &[Dest], pkt: &Packet, now_ms: Millis) -> Option<usize> {
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
    use crate::model::{SchedFlags, SchedKind};
    use crate::sched::test_support::{dests, pkt};
    use crate::sched::LBLC_EXPIRATION_MS;

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
}
