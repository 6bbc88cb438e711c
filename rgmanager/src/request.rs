//! Operator requests (`clusvcadm`) as changes of a service's record, made under its DLM lock
//! by whichever node receives the request; the owner carries out what needs its resources
//! (stop, restart, relocate) when it next evaluates the service. Refusals carry rgmanager's
//! return codes ([`RgError`]).

use serde::{Deserialize, Serialize};

use crate::record::{Record, State, Want, FLAG_FROZEN, FLAG_HELD};

/// rgmanager's return codes (RG_E*), as clusvcadm prints them and exits with (the absolute
/// value is the exit status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum RgError {
    /// RG_EFAIL (-1).
    #[error("Failure")]
    Fail,
    /// RG_EABORT (-2).
    #[error("Aborted; service failed")]
    Abort,
    /// RG_ENOSERVICE (-4).
    #[error("Service does not exist")]
    NoService,
    /// RG_EDEPEND (-7).
    #[error("Operation violates dependency rule")]
    Depend,
    /// RG_EINVAL (-8).
    #[error("Invalid operation for resource")]
    Invalid,
    /// RG_EQUORUM (-9).
    #[error("Operation requires quorum")]
    Quorum,
    /// RG_ERUN (-10).
    #[error("Service is already running")]
    Running,
    /// RG_EFROZEN (-11).
    #[error("Service is frozen")]
    Frozen,
    /// RG_ENODE (-12).
    #[error("Target node dead / nonexistent")]
    Node,
    /// RG_EDOMAIN (-15).
    #[error("Service not runnable: restricted failover domain offline")]
    Domain,
    /// RG_EEXCL (-16).
    #[error("Service not runnable: cannot run exclusively")]
    Exclusive,
    /// RG_ERELO (-17).
    #[error("Failed; service running on original owner")]
    Relocate,
    /// RG_EAGAIN (-6): timed out waiting for the outcome.
    #[error("Temporary failure; try again")]
    Again,
}

impl RgError {
    /// The RG_E* value.
    pub fn code(self) -> i32 {
        match self {
            RgError::Fail => -1,
            RgError::Abort => -2,
            RgError::NoService => -4,
            RgError::Again => -6,
            RgError::Depend => -7,
            RgError::Invalid => -8,
            RgError::Quorum => -9,
            RgError::Running => -10,
            RgError::Frozen => -11,
            RgError::Node => -12,
            RgError::Domain => -15,
            RgError::Exclusive => -16,
            RgError::Relocate => -17,
        }
    }

    /// clusvcadm's exit status for it.
    pub fn exit_status(self) -> u8 {
        u8::try_from(-self.code()).expect("codes are -1..=-17")
    }
}

/// An operator request on one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// `-e [-m NODE]`.
    Enable,
    /// `-d`.
    Disable,
    /// `-r [-m NODE]`.
    Relocate,
    /// `-R`.
    Restart,
    /// `-s`.
    Stop,
    /// `-Z`.
    Freeze,
    /// `-U`.
    Unfreeze,
}

/// What the record becomes for request `op` with target node `target` (0: none), given
/// whether its owner is a live member. The caller checks that `target` is a member.
pub fn apply(r: &Record, op: Op, target: u32, owner_alive: bool) -> Result<Record, RgError> {
    let mut n = *r;
    n.generation = n.generation.wrapping_add(1);
    let running = matches!(r.state, State::Starting | State::Started | State::Stopping) && owner_alive;
    if r.frozen() && !matches!(op, Op::Unfreeze | Op::Freeze) {
        return Err(RgError::Frozen);
    }
    match op {
        Op::Freeze => n.flags |= FLAG_FROZEN,
        Op::Unfreeze => n.flags &= !FLAG_FROZEN,
        Op::Enable => match r.state {
            State::Failed => return Err(RgError::Invalid),
            _ if running => {
                if target == 0 || target == r.owner {
                    return Err(RgError::Running);
                }
                n.want = Want::Relocate;
                n.target = target;
            }
            _ => {
                n.state = State::Stopped;
                n.flags &= !FLAG_HELD;
                n.tried = 0;
                n.target = target;
                n.want = Want::None;
            }
        },
        Op::Disable => {
            if running {
                n.want = Want::Disable;
            } else {
                if r.state == State::Failed {
                    n.last_owner = r.owner;
                }
                n.state = State::Disabled;
                n.owner = 0;
                n.want = Want::None;
                n.target = 0;
            }
        }
        Op::Relocate => {
            if running {
                if target == r.owner {
                    return Err(RgError::Running);
                }
                n.want = Want::Relocate;
                n.target = target;
            } else {
                return apply(r, Op::Enable, target, owner_alive);
            }
        }
        Op::Restart => {
            if !running {
                return Err(RgError::Invalid);
            }
            n.want = Want::Restart;
        }
        Op::Stop => {
            if running {
                n.want = Want::Stop;
            } else if r.state == State::Failed {
                return Err(RgError::Invalid);
            } else {
                n.state = if r.state == State::Disabled { State::Disabled } else { State::Stopped };
                n.flags |= FLAG_HELD;
                n.owner = 0;
            }
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{claim, started, stop_failed};

    fn running() -> Record {
        started(&claim(&Record::default(), 1), 1)
    }

    #[test]
    fn requests_on_a_running_service_go_to_the_owner() {
        let r = running();
        assert_eq!(apply(&r, Op::Disable, 0, true).unwrap().want, Want::Disable);
        assert_eq!(apply(&r, Op::Stop, 0, true).unwrap().want, Want::Stop);
        assert_eq!(apply(&r, Op::Restart, 0, true).unwrap().want, Want::Restart);
        let m = apply(&r, Op::Relocate, 2, true).unwrap();
        assert_eq!((m.want, m.target), (Want::Relocate, 2));
        assert_eq!(apply(&r, Op::Enable, 0, true), Err(RgError::Running));
        assert_eq!(apply(&r, Op::Relocate, 1, true), Err(RgError::Running));
        assert_eq!(apply(&r, Op::Enable, 3, true).unwrap().want, Want::Relocate);
    }

    #[test]
    fn requests_on_a_stopped_service_change_the_record() {
        let d = apply(&running(), Op::Disable, 0, false).unwrap();
        assert_eq!((d.state, d.owner), (State::Disabled, 0));
        let e = apply(&d, Op::Enable, 2, false).unwrap();
        assert_eq!((e.state, e.target, e.held()), (State::Stopped, 2, false));
        let s = apply(&e, Op::Stop, 0, false).unwrap();
        assert!(s.held());
        assert_eq!(apply(&s, Op::Restart, 0, false), Err(RgError::Invalid));
        let f = stop_failed(&running(), 1);
        assert_eq!(apply(&f, Op::Enable, 0, true), Err(RgError::Invalid));
        let d = apply(&f, Op::Disable, 0, true).unwrap();
        assert_eq!((d.state, d.owner, d.last_owner), (State::Disabled, 0, 1));
        let z = apply(&running(), Op::Freeze, 0, true).unwrap();
        assert_eq!(apply(&z, Op::Relocate, 2, true), Err(RgError::Frozen));
        assert!(!apply(&z, Op::Unfreeze, 0, true).unwrap().frozen());
        assert_eq!(RgError::NoService.exit_status(), 4);
    }
}
