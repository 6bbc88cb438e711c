//! Recovery policies: what a failure of a running service leads to, with RHCS's sliding
//! restart window (`max_restarts` restarts within `restart_expire_time` seconds; one more
//! turns the restart into a relocation, or into disabling for `restart-disable`).
//!
//! Time is passed in (`now`, any monotonic clock), so tests drive it.

use std::collections::VecDeque;
use std::time::Duration;

use cluster::conf::Recovery;

/// What to do about a failed service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Stop it and start it again on this node.
    Restart,
    /// Stop it here and let another node start it.
    Relocate,
    /// Stop it and disable it.
    Disable,
}

/// Restarts of one service on this node within the window.
#[derive(Debug, Clone)]
pub struct RestartWindow {
    policy: Recovery,
    max: u32,
    window: Duration,
    restarts: VecDeque<Duration>,
}

impl RestartWindow {
    /// A window for a service's `recovery`, `max_restarts` and `restart_expire_time`.
    pub fn new(policy: Recovery, max_restarts: u32, restart_expire_time: Duration) -> RestartWindow {
        RestartWindow { policy, max: max_restarts, window: restart_expire_time, restarts: VecDeque::new() }
    }

    /// Restarts counted now.
    pub fn count(&mut self, now: Duration) -> u32 {
        self.expire(now);
        u32::try_from(self.restarts.len()).unwrap_or(u32::MAX)
    }

    fn expire(&mut self, now: Duration) {
        if self.window.is_zero() {
            return;
        }
        while self.restarts.front().is_some_and(|&t| now.saturating_sub(t) >= self.window) {
            self.restarts.pop_front();
        }
    }

    /// A failure at `now`: the action to take. A restart is counted when it is chosen.
    pub fn on_failure(&mut self, now: Duration) -> Action {
        match self.policy {
            Recovery::Relocate => return Action::Relocate,
            Recovery::Disable => return Action::Disable,
            Recovery::Restart | Recovery::RestartDisable => {}
        }
        self.expire(now);
        if self.max > 0 && self.restarts.len() >= self.max as usize {
            self.restarts.clear();
            return if self.policy == Recovery::RestartDisable { Action::Disable } else { Action::Relocate };
        }
        self.restarts.push_back(now);
        Action::Restart
    }

    /// Forget every restart (the service moved or was restarted by hand).
    pub fn reset(&mut self) {
        self.restarts.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn s(x: u64) -> Duration {
        Duration::from_secs(x)
    }

    #[test]
    fn restart_then_relocate_within_window() {
        let mut w = RestartWindow::new(Recovery::Restart, 2, s(60));
        assert_eq!(w.on_failure(s(0)), Action::Restart);
        assert_eq!(w.on_failure(s(10)), Action::Restart);
        assert_eq!(w.on_failure(s(20)), Action::Relocate);
        // The window was cleared by the relocation.
        assert_eq!(w.on_failure(s(21)), Action::Restart);
    }

    #[test]
    fn old_restarts_expire() {
        let mut w = RestartWindow::new(Recovery::Restart, 2, s(60));
        assert_eq!(w.on_failure(s(0)), Action::Restart);
        assert_eq!(w.on_failure(s(30)), Action::Restart);
        // The first one is 60 s old: it no longer counts.
        assert_eq!(w.on_failure(s(60)), Action::Restart);
        assert_eq!(w.count(s(60)), 2);
        assert_eq!(w.on_failure(s(61)), Action::Relocate);
    }

    #[test]
    fn policies() {
        assert_eq!(RestartWindow::new(Recovery::Relocate, 5, s(9)).on_failure(s(0)), Action::Relocate);
        assert_eq!(RestartWindow::new(Recovery::Disable, 5, s(9)).on_failure(s(0)), Action::Disable);
        let mut w = RestartWindow::new(Recovery::RestartDisable, 1, s(0));
        assert_eq!(w.on_failure(s(0)), Action::Restart);
        assert_eq!(w.on_failure(s(1000)), Action::Disable, "window 0: restarts never expire");
        let mut w = RestartWindow::new(Recovery::Restart, 0, s(10));
        for t in 0..100 {
            assert_eq!(w.on_failure(s(t)), Action::Restart, "max_restarts 0: no limit");
        }
    }

    proptest! {
        /// Against a model: a restart is allowed exactly when fewer than `max` restarts happened
        /// in the window before `now` (since the last relocation).
        #[test]
        fn matches_model(max in 1u32..5, window in 1u64..50, gaps in prop::collection::vec(0u64..30, 1..40)) {
            let mut w = RestartWindow::new(Recovery::Restart, max, s(window));
            let mut model: Vec<u64> = Vec::new();
            let mut now = 0;
            for g in gaps {
                now += g;
                let recent = model.iter().filter(|&&t| now - t < window).count() as u32;
                let want = if recent >= max { model.clear(); Action::Relocate } else { model.push(now); Action::Restart };
                prop_assert_eq!(w.on_failure(s(now)), want);
            }
        }
    }
}
