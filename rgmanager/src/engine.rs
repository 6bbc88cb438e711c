//! The service state machine, sans-IO: from the cluster view, every service's record and
//! what this node runs, [`decide`] says what this node must do for one service; the
//! transition functions say what the record becomes. The daemon applies a transition only
//! under the service's DLM lock held EX, after reading the record again and deciding again
//! on the fresh copy, so two nodes never act on the same service at once.
//!
//! ```text
//!             enable            placement picks me      resources up
//!  disabled ──────────► stopped ───────────────► starting ─────────► started
//!     ▲                  ▲  ▲ recovering              │ start failed      │ request, failback,
//!     │ -d               │  └──────────────────────────┘ (tried += me)     │ dependency, failure
//!     │                  │ clean stop                                      ▼
//!  failed ◄── stop failed ─────────────────────────────────────────── stopping
//! ```
//!
//! A lost owner (not a member any more) is replaced only after fenced reports it fenced
//! ([`Step::TakeOver`]); an inquorate node stops what it runs without touching records.

use std::collections::{BTreeMap, BTreeSet};

use cluster::conf::Rm;

use crate::place::{Load, PlaceInput, Placement};
use crate::record::{Record, State, Want, FLAG_HELD};

/// The cluster as this node sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// This node's id.
    pub me: u32,
    /// This node is in a quorate partition.
    pub quorate: bool,
    /// Corosync members (including this node).
    pub members: BTreeSet<u32>,
    /// Members that run rgmanager and take services (a subset of `members`).
    pub eligible: BTreeSet<u32>,
    /// Configured nodes: id and name.
    pub nodes: Vec<(u32, String)>,
}

/// What this node must do for one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing.
    Idle,
    /// Write the first record (none exists yet).
    Init(Record),
    /// Claim the service ([`claim`]) and start its resources here.
    Start,
    /// The owner `dead` left the membership: wait until fenced reports it fenced, then
    /// write [`after_loss`] (and decide again).
    TakeOver {
        /// The lost owner.
        dead: u32,
    },
    /// Owner here: stop the resources and hand the service on ([`handed`]).
    Stop(Hand),
    /// Owner here: stop and start again in place (`-R`).
    Restart,
    /// The record says this node owns it but nothing runs here (the daemon restarted):
    /// check the resources' status; running ones are adopted, otherwise it is a failure.
    Adopt,
    /// Resources run here that the record does not give to this node (or the partition is
    /// inquorate): stop them without touching the record.
    StopLocal,
}

/// Where a stopped service goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hand {
    /// To `target` (0: any other node).
    Relocate(u32),
    /// Disabled (`-d`, or the recovery policy).
    Disable,
    /// Stopped and held (`-s`).
    Hold,
    /// Stopped, placed again when it can run (a hard dependency stopped).
    Release,
}

fn service<'a>(rm: &'a Rm, name: &str) -> Option<&'a cluster::conf::Service> {
    rm.services.iter().find(|s| s.name == name)
}

/// A record in a state that occupies its owner.
fn occupies(r: &Record) -> bool {
    r.owner != 0 && matches!(r.state, State::Starting | State::Started | State::Stopping | State::Failed)
}

/// What runs where, for the exclusive rule, leaving out service `skip`.
pub fn loads(rm: &Rm, records: &BTreeMap<String, Record>, skip: &str) -> BTreeMap<u32, Load> {
    let mut out: BTreeMap<u32, Load> = BTreeMap::new();
    for (name, r) in records {
        if name == skip || !occupies(r) {
            continue;
        }
        let l = out.entry(r.owner).or_default();
        l.services += 1;
        l.exclusive |= service(rm, name).is_some_and(|s| s.exclusive);
    }
    out
}

/// Where service `name` should run now (its record `r`).
pub fn placement(rm: &Rm, view: &View, records: &BTreeMap<String, Record>, name: &str, r: &Record) -> Placement {
    let Some(svc) = service(rm, name) else { return Placement::NoNode };
    let domain = svc.domain.as_ref().and_then(|d| rm.failover_domains.iter().find(|x| &x.name == d));
    let load = loads(rm, records, name);
    let tried: BTreeSet<u32> = view.eligible.iter().copied().filter(|&id| r.tried(id)).collect();
    let eligible = if view.quorate { view.eligible.clone() } else { BTreeSet::new() };
    PlaceInput {
        service: name,
        domain,
        exclusive: svc.exclusive,
        nodes: &view.nodes,
        eligible: &eligible,
        load: &load,
        tried: &tried,
        target: r.target,
    }
    .best()
}

fn failback(rm: &Rm, view: &View, records: &BTreeMap<String, Record>, name: &str, r: &Record) -> Option<u32> {
    let svc = service(rm, name)?;
    let domain = svc.domain.as_ref().and_then(|d| rm.failover_domains.iter().find(|x| &x.name == d));
    let load = loads(rm, records, name);
    let tried = BTreeSet::new();
    PlaceInput {
        service: name,
        domain,
        exclusive: svc.exclusive,
        nodes: &view.nodes,
        eligible: &view.eligible,
        load: &load,
        tried: &tried,
        target: 0,
    }
    .should_move(r.owner)
}

/// Whether the service `name` depends on is running (true when it has no dependency).
pub fn dependency_up(rm: &Rm, records: &BTreeMap<String, Record>, name: &str) -> bool {
    match service(rm, name).and_then(|s| s.depend.as_ref()) {
        None => true,
        Some(dep) => records.get(dep).is_some_and(|r| r.state == State::Started),
    }
}

/// The record a service starts with: stopped (autostart) or disabled.
pub fn initial(rm: &Rm, name: &str) -> Record {
    let auto = service(rm, name).is_none_or(|s| s.autostart);
    Record { state: if auto { State::Stopped } else { State::Disabled }, ..Record::default() }
}

/// What this node must do for service `name`, whose record is `records[name]` (absent: none
/// written yet); `running` says whether its resources run here by this node's account.
pub fn decide(rm: &Rm, view: &View, records: &BTreeMap<String, Record>, name: &str, running: bool) -> Step {
    let Some(svc) = service(rm, name) else {
        return if running { Step::StopLocal } else { Step::Idle };
    };
    if !view.quorate {
        return if running { Step::StopLocal } else { Step::Idle };
    }
    let Some(r) = records.get(name).copied() else {
        return Step::Init(initial(rm, name));
    };
    let me = view.me;
    if r.owner != me && running {
        return Step::StopLocal;
    }
    match r.state {
        State::Disabled | State::Failed => {
            if running && r.state == State::Disabled {
                Step::StopLocal
            } else {
                Step::Idle
            }
        }
        State::Stopped | State::Recovering => {
            if r.owner != 0 && r.owner != me && !view.members.contains(&r.owner) {
                return take_over(rm, view, records, name, &r);
            }
            if running {
                return Step::StopLocal;
            }
            if r.held() || r.frozen() || !dependency_up(rm, records, name) {
                return Step::Idle;
            }
            match placement(rm, view, records, name, &r) {
                Placement::Node(n) if n == me => Step::Start,
                _ => Step::Idle,
            }
        }
        State::Starting | State::Started | State::Stopping => {
            if r.owner == me {
                if !running {
                    return Step::Adopt;
                }
                if r.frozen() {
                    return Step::Idle;
                }
                match r.want {
                    Want::Disable => return Step::Stop(Hand::Disable),
                    Want::Stop => return Step::Stop(Hand::Hold),
                    Want::Restart => return Step::Restart,
                    Want::Relocate => return Step::Stop(Hand::Relocate(r.target)),
                    Want::None => {}
                }
                if !svc.depend_soft && !dependency_up(rm, records, name) {
                    return Step::Stop(Hand::Release);
                }
                if r.state == State::Started {
                    if let Some(n) = failback(rm, view, records, name, &r) {
                        return Step::Stop(Hand::Relocate(n));
                    }
                }
                Step::Idle
            } else if !view.members.contains(&r.owner) {
                take_over(rm, view, records, name, &r)
            } else {
                Step::Idle
            }
        }
    }
}

/// The node that would start the service once its lost owner is out of the picture acts.
fn take_over(rm: &Rm, view: &View, records: &BTreeMap<String, Record>, name: &str, r: &Record) -> Step {
    let after = after_loss(r);
    let mut recs = records.clone();
    recs.insert(name.to_owned(), after);
    let lowest = view.eligible.iter().next() == Some(&view.me);
    let acts = match after.state {
        State::Recovering => match placement(rm, view, &recs, name, &after) {
            Placement::Node(n) => n == view.me,
            // Nowhere to run it (a restricted domain with no member up): the lowest eligible
            // node still records that the owner is gone.
            _ => lowest,
        },
        // Disabled or held: the lowest eligible node writes it down.
        _ => lowest,
    };
    if acts {
        Step::TakeOver { dead: r.owner }
    } else {
        Step::Idle
    }
}

fn bump(mut r: Record) -> Record {
    r.generation = r.generation.wrapping_add(1);
    r
}

/// The owner is gone and fenced: what the record becomes.
pub fn after_loss(r: &Record) -> Record {
    let mut n = *r;
    n.last_owner = r.owner;
    n.owner = 0;
    n.want = Want::None;
    n.restarts = 0;
    match r.want {
        Want::Disable => n.state = State::Disabled,
        Want::Stop => {
            n.state = State::Stopped;
            n.flags |= FLAG_HELD;
        }
        _ => n.state = State::Recovering,
    }
    bump(n)
}

/// This node claims the service to start it.
pub fn claim(r: &Record, me: u32) -> Record {
    let mut n = *r;
    if r.owner != me && r.owner != 0 {
        n.last_owner = r.owner;
    }
    n.state = State::Starting;
    n.owner = me;
    n.want = Want::None;
    bump(n)
}

/// The resources are up.
pub fn started(r: &Record, me: u32) -> Record {
    let mut n = *r;
    n.state = State::Started;
    n.owner = me;
    n.tried = 0;
    n.target = 0;
    bump(n)
}

/// Starting failed here and the resources were stopped again: another node may try.
pub fn start_failed(r: &Record, me: u32) -> Record {
    let mut n = *r;
    n.state = State::Recovering;
    n.owner = 0;
    n.last_owner = me;
    n.target = 0;
    n.restarts = 0;
    n.add_tried(me);
    bump(n)
}

/// The owner begins stopping (and has taken on any pending request).
pub fn stopping(r: &Record) -> Record {
    bump(Record { state: State::Stopping, want: Want::None, ..*r })
}

/// The owner stopped the resources cleanly: where the service goes.
pub fn handed(r: &Record, me: u32, hand: Hand) -> Record {
    let mut n = *r;
    n.owner = 0;
    n.last_owner = me;
    n.want = Want::None;
    n.restarts = 0;
    match hand {
        Hand::Relocate(t) => {
            n.state = State::Recovering;
            n.target = t;
            if t == 0 {
                n.add_tried(me);
            }
        }
        Hand::Disable => {
            n.state = State::Disabled;
            n.target = 0;
        }
        Hand::Hold => {
            n.state = State::Stopped;
            n.flags |= FLAG_HELD;
            n.target = 0;
        }
        Hand::Release => {
            n.state = State::Stopped;
            n.target = 0;
        }
    }
    bump(n)
}

/// The owner could not stop the resources: nobody starts it until `-d`.
pub fn stop_failed(r: &Record, me: u32) -> Record {
    let mut n = *r;
    n.state = State::Failed;
    n.owner = me;
    n.want = Want::None;
    bump(n)
}

/// Restarted in place (recovery policy or `-R`).
pub fn restarted(r: &Record, me: u32, count: bool) -> Record {
    let mut n = started(r, me);
    n.want = Want::None;
    if count {
        n.restarts = n.restarts.saturating_add(1);
    }
    n
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
