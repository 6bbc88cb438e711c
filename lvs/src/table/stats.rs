//! Statistics over time: the kernel's rate estimator. The counters themselves
//! ([`Stats`]) are kept per service and per real server by the table.

use crate::model::Stats;
use crate::sched::Millis;

/// The kernel's rate estimator (`ip_vs_est.c`): every 2 s, rates move a quarter of the
/// way to the last period's rate.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RateEstimator {
    last: Stats,
    last_ms: Option<Millis>,
    /// Connections per second.
    pub cps: f64,
    /// Inbound packets per second.
    pub inpps: f64,
    /// Outbound packets per second.
    pub outpps: f64,
    /// Inbound bytes per second.
    pub inbps: f64,
    /// Outbound bytes per second.
    pub outbps: f64,
}

impl RateEstimator {
    /// Feeds the counters at `now_ms`; updates once per 2 s period.
    pub fn tick(&mut self, stats: &Stats, now_ms: Millis) {
        let Some(last_ms) = self.last_ms else {
            self.last = *stats;
            self.last_ms = Some(now_ms);
            return;
        };
        let dt = now_ms.saturating_sub(last_ms);
        if dt < 2000 {
            return;
        }
        let secs = dt as f64 / 1000.0;
        let r = |now: u64, before: u64| now.saturating_sub(before) as f64 / secs;
        let ewma = |avg: &mut f64, rate: f64| *avg += (rate - *avg) / 4.0;
        ewma(&mut self.cps, r(stats.conns, self.last.conns));
        ewma(&mut self.inpps, r(stats.inpkts, self.last.inpkts));
        ewma(&mut self.outpps, r(stats.outpkts, self.last.outpkts));
        ewma(&mut self.inbps, r(stats.inbytes, self.last.inbytes));
        ewma(&mut self.outbps, r(stats.outbytes, self.last.outbytes));
        self.last = *stats;
        self.last_ms = Some(now_ms);
    }

    /// Forgets the rates (`-Z`).
    pub fn zero(&mut self) {
        *self = RateEstimator::default();
    }
}
