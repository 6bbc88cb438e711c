//! Round robin (`rr`) and weighted round robin (`wrr`), as `ip_vs_rr.c` and `ip_vs_wrr.c`:
//! `rr` takes the next usable server after the last one chosen; `wrr` steps a current weight
//! down by the gcd of the weights and takes each server whose weight reaches it.

use super::{gcd, Scheduler, State};
use crate::model::Dest;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct WrrMark {
    /// Index of the current server; None = list head.
    pub(super) cl: Option<usize>,
    /// Current weight.
    pub(super) cw: i32,
    /// Maximum weight, minus (gcd - 1).
    pub(super) mw: i32,
    /// gcd of the weights.
    pub(super) di: i32,
}

/// `ip_vs_wrr_gcd_weight`: gcd of the weights above 0, or 1 when there are none.
pub(super) fn wrr_gcd(dests: &[Dest]) -> i32 {
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

pub(super) fn max_weight(dests: &[Dest]) -> i32 {
    dests.iter().map(|d| d.weight).fold(0, i32::max)
}

impl Scheduler {
    pub(super) fn rr(&mut self, dests: &[Dest]) -> Option<usize> {
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

    pub(super) fn wrr(&mut self, dests: &[Dest]) -> Option<usize> {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{SchedFlags, SchedKind};
    use crate::sched::test_support::{arb_dests, dests, pkt};
    use proptest::prelude::*;

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

    proptest! {
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
    }
}
