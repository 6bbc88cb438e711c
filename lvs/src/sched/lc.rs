//! The least-connection family, as `ip_vs_lc.c`, `ip_vs_wlc.c`, `ip_vs_sed.c` and
//! `ip_vs_nq.c`: `lc` (least `active*256 + inactive`), `wlc` (least overhead/weight,
//! cross-multiplied), `sed` (`wlc` with overhead `active + 1`) and `nq` (an idle server at
//! once, else as `sed`). Stateless; `wlc` is also the fallback of the locality schedulers.

use crate::model::Dest;

/// Weighted least-connection over `dests` as `wlc` and `__ip_vs_lblc_schedule` do it,
/// with `overhead` the per-server load measure.
pub(super) fn weighted_least(dests: &[Dest], overhead: impl Fn(&Dest) -> i64) -> Option<usize> {
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

pub(super) fn lc(dests: &[Dest]) -> Option<usize> {
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

pub(super) fn nq(dests: &[Dest]) -> Option<usize> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::test_support::{arb_dests, dests};
    use proptest::prelude::*;

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

    // ---- property tests against straightforward references of the kernel formulas ----

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
    }
}
