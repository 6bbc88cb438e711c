//! Resource agents and running a service's tree on this node.
//!
//! Every agent has three actions, as RHCS's resource agents do: `start` (idempotent: a
//! resource already up is success), `stop` (idempotent: a resource already down is success)
//! and `status` (success while the resource is healthy). The agents:
//!
//! | type | start | stop | status |
//! |---|---|---|---|
//! | `ip` | `ip addr add` on the interface holding the subnet, gratuitous ARP | `ip addr del` | address present (and link up with `monitor_link`) |
//! | `script` | `FILE start` (LSB) | `FILE stop` | `FILE status`: 0 running, anything else down |
//! | `fs`, `clusterfs` | `mount` (`mount.gfs` for gfs) | `umount`, killing users with `force_unmount` | mounted |
//! | `gnbd_export` | `gnbd_export -e NAME -d DEVICE` | `gnbd_export -r NAME -O` | listed by `gnbd_export -l` |
//! | `lvm` | `clvm lvchange -aey VG/LV` (`vgchange` without `lv_name`) | `-an` | every LV active in `clvm lvs` |
//!
//! `nfsexport` and `nfsclient` are parsed but not run: starting one fails with a
//! clear message. Every command runs with a time limit ([`Env`]).

mod exec;
mod fs;
mod gnbd;
mod ip;
mod lvm;
mod script;

use std::time::Duration;

use cluster::conf::{Resource, ResourceKind};

use crate::tree::Tree;

pub use exec::{run, Outcome};

/// An agent action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Bring the resource up.
    Start,
    /// Take it down.
    Stop,
    /// Check it.
    Status,
}

impl Action {
    /// The action's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Status => "status",
        }
    }
}

/// Why an agent action failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    /// The resource type is parsed but not run by this suite.
    #[error("resource type {tag} is not supported by this rgmanager")]
    Unsupported {
        /// The element name.
        tag: &'static str,
    },
    /// A required attribute is missing or invalid.
    #[error("{attr}: {problem}")]
    Config {
        /// The attribute.
        attr: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// A command could not be run.
    #[error("cannot run {program}: {reason}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        reason: String,
    },
    /// A command ran too long and was killed.
    #[error("{program} {action} did not finish within {secs} s and was killed")]
    Timeout {
        /// The program.
        program: String,
        /// Its first argument.
        action: String,
        /// The limit.
        secs: u64,
    },
    /// A command failed.
    #[error("{command} exited with {code}{}", if .output.is_empty() { String::new() } else { format!(": {}", .output) })]
    Failed {
        /// The command line.
        command: String,
        /// Its exit code (-1: killed by a signal).
        code: i32,
        /// The last line it printed, if any.
        output: String,
    },
    /// The resource is not healthy.
    #[error("{0}")]
    Down(String),
}

/// What agents need from their surroundings.
#[derive(Debug, Clone)]
pub struct Env {
    /// Limit for start and stop commands.
    pub start_stop_timeout: Duration,
    /// Limit for status commands.
    pub status_timeout: Duration,
}

impl Default for Env {
    fn default() -> Env {
        Env { start_stop_timeout: Duration::from_secs(60), status_timeout: Duration::from_secs(30) }
    }
}

/// Runs `action` of resource `res`.
pub fn act(env: &Env, res: &Resource, action: Action) -> Result<(), AgentError> {
    match res.kind {
        ResourceKind::Ip => ip::act(env, res, action),
        ResourceKind::Script => script::act(env, res, action),
        ResourceKind::Fs | ResourceKind::ClusterFs => fs::act(env, res, action),
        ResourceKind::GnbdExport => gnbd::act(env, res, action),
        ResourceKind::Lvm => lvm::act(env, res, action),
        ResourceKind::NfsExport | ResourceKind::NfsClient => {
            if action == Action::Stop {
                // Nothing of it can be up.
                Ok(())
            } else {
                Err(AgentError::Unsupported { tag: res.kind.tag() })
            }
        }
    }
}

/// A resource's action failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{action} of {label} failed: {error}")]
pub struct ResourceFailure {
    /// Index in the tree.
    pub index: usize,
    /// `type:key`.
    pub label: String,
    /// start, stop or status.
    pub action: &'static str,
    /// Why.
    pub error: AgentError,
}

fn failure(tree: &Tree, index: usize, action: Action, error: AgentError) -> ResourceFailure {
    ResourceFailure { index, label: tree.nodes[index].label(), action: action.as_str(), error }
}

/// A start failed; what was started was stopped again (`undo`: failures of that).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartFailure {
    /// The start that failed.
    pub failed: ResourceFailure,
    /// Failures stopping what had started.
    pub undo: Vec<ResourceFailure>,
}

impl std::fmt::Display for StartFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.failed)?;
        for u in &self.undo {
            write!(f, "; then {u}")?;
        }
        Ok(())
    }
}

impl std::error::Error for StartFailure {}

/// Starts `order` (a start order, or part of one) in turn. When one fails, what was started
/// is stopped again in reverse and the failure is returned (with any failure to stop).
pub fn start_list(env: &Env, tree: &Tree, order: &[usize]) -> Result<(), Box<StartFailure>> {
    for (pos, &i) in order.iter().enumerate() {
        tracing::info!(service = %tree.service, resource = %tree.nodes[i].label(), "starting");
        if let Err(e) = act(env, &tree.nodes[i].res, Action::Start) {
            let f = failure(tree, i, Action::Start, e);
            tracing::warn!(service = %tree.service, "{f}");
            let mut back: Vec<usize> = order[..=pos].to_vec();
            back.reverse();
            let undo = stop_list(env, tree, &back).err().unwrap_or_default();
            return Err(Box::new(StartFailure { failed: f, undo }));
        }
    }
    Ok(())
}

/// Stops `order` (a stop order, or part of one), going on after failures; returns them all.
pub fn stop_list(env: &Env, tree: &Tree, order: &[usize]) -> Result<(), Vec<ResourceFailure>> {
    let mut errs = Vec::new();
    for &i in order {
        tracing::info!(service = %tree.service, resource = %tree.nodes[i].label(), "stopping");
        if let Err(e) = act(env, &tree.nodes[i].res, Action::Stop) {
            let f = failure(tree, i, Action::Stop, e);
            tracing::warn!(service = %tree.service, "{f}");
            errs.push(f);
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs)
    }
}

/// Checks one resource.
pub fn status_one(env: &Env, tree: &Tree, index: usize) -> Result<(), ResourceFailure> {
    act(env, &tree.nodes[index].res, Action::Status).map_err(|e| failure(tree, index, Action::Status, e))
}

/// Checks every resource in start order; the first failure.
pub fn status_all(env: &Env, tree: &Tree) -> Result<(), ResourceFailure> {
    tree.start_order().into_iter().try_for_each(|i| status_one(env, tree, i))
}

/// A boolean attribute ("1", "yes", "true", "on").
pub(crate) fn flag(res: &Resource, attr: &str) -> bool {
    res.attrs.get(attr).is_some_and(|v| matches!(v.as_str(), "1" | "yes" | "true" | "on"))
}

/// A required attribute.
pub(crate) fn need<'a>(res: &'a Resource, attr: &'static str) -> Result<&'a str, AgentError> {
    res.attrs
        .get(attr)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or(AgentError::Config { attr, problem: "missing".into() })
}
