//! The daemon's control socket side: status (live, or the last round's snapshot) and
//! operator requests turned into record changes.

use std::collections::{BTreeMap, BTreeSet};

use daemon::control::ControlError;
use tracing::{info, warn};

use super::Daemon;
use crate::api::{NodeStatus, OpReply, Request, ServiceStatus, Status};
use crate::engine;
use crate::place::{PlaceInput, Placement};
use crate::record::State;
use crate::request::{self, Op, RgError};

impl Daemon {
    pub(super) fn status(&mut self) -> Status {
        let names: Vec<String> = self.rm.services.iter().map(|s| s.name.clone()).collect();
        if self.view.quorate {
            for name in &names {
                if let Ok(Some(r)) = self.store.read(name) {
                    self.records.insert(name.clone(), r);
                }
            }
        }
        Status {
            cluster: self.conf.name.clone(),
            local_nodeid: self.me(),
            quorate: self.view.quorate,
            nodes: self.node_statuses(),
            services: names.iter().map(|n| self.service_status(n)).collect(),
            locked: self.locked,
        }
    }

    /// Publishes the state as of now (no DLM access) for status requests while busy.
    pub(super) fn publish(&self) {
        let mut st = Status {
            cluster: self.conf.name.clone(),
            local_nodeid: self.me(),
            quorate: self.view.quorate,
            nodes: Vec::new(),
            services: self.rm.services.iter().map(|s| self.service_status(&s.name)).collect(),
            locked: self.locked,
        };
        st.nodes = self.node_statuses();
        if let Ok(v) = serde_json::to_value(&st) {
            *self.snapshot.lock().expect("snapshot lock") = Some(v);
        }
    }

    fn node_statuses(&self) -> Vec<NodeStatus> {
        self.view
            .nodes
            .iter()
            .map(|(id, n)| NodeStatus {
                id: *id,
                name: n.clone(),
                member: self.view.members.contains(id),
                rgmanager: self.view.eligible.contains(id)
                    || (*id == self.me() && !self.locked && self.store.announced()),
                local: *id == self.me(),
            })
            .collect()
    }

    fn service_status(&self, name: &str) -> ServiceStatus {
        let r = self.records.get(name).copied().unwrap_or_else(|| engine::initial(&self.rm, name));
        let svc = self.rm.services.iter().find(|s| s.name == name);
        ServiceStatus {
            name: name.to_owned(),
            state: r.state,
            owner: (r.owner != 0).then(|| self.name_of(r.owner).unwrap_or_else(|| r.owner.to_string())),
            last_owner: (r.last_owner != 0)
                .then(|| self.name_of(r.last_owner).unwrap_or_else(|| r.last_owner.to_string())),
            frozen: r.frozen(),
            held: r.held(),
            want: r.want,
            restarts: r.restarts,
            generation: r.generation,
            autostart: svc.is_none_or(|s| s.autostart),
            domain: svc.and_then(|s| s.domain.clone()),
        }
    }

    pub(super) fn handle(&mut self, req: Request) -> Result<serde_json::Value, ControlError> {
        let json = |v: &dyn erased::Ser| v.to_value();
        match req {
            Request::Status => Ok(json(&self.status())),
            Request::Lock | Request::Unlock => {
                self.locked = matches!(req, Request::Lock);
                let r = if self.locked { self.store.withdraw() } else { self.store.announce(self.me()).map(|_| ()) };
                r.map_err(|e| ControlError::failed(format!("dlm_controld: {e}")))?;
                Ok(serde_json::Value::Null)
            }
            Request::Service { action, service, node } => {
                let reply = match self.service_op(action, &service, node.as_deref()) {
                    Ok(r) => OpReply { code: 0, message: "Success".into(), service: Some(self.service_status(&r)) },
                    Err(e) => OpReply {
                        code: e.code(),
                        message: e.to_string(),
                        service: self
                            .rm
                            .services
                            .iter()
                            .any(|s| s.name == service)
                            .then(|| self.service_status(&service)),
                    },
                };
                Ok(json(&reply))
            }
        }
    }

    fn service_op(&mut self, op: Op, name: &str, node: Option<&str>) -> Result<String, RgError> {
        let svc = self.rm.services.iter().find(|s| s.name == name).ok_or(RgError::NoService)?.clone();
        if !self.view.quorate {
            return Err(RgError::Quorum);
        }
        let target = match node {
            None => 0,
            Some(n) => {
                let id = self
                    .view
                    .nodes
                    .iter()
                    .find(|(_, x)| x == n)
                    .map(|(i, _)| *i)
                    .or_else(|| n.parse::<u32>().ok().filter(|i| self.view.nodes.iter().any(|(x, _)| x == i)))
                    .ok_or(RgError::Node)?;
                if !self.view.eligible.contains(&id) {
                    return Err(RgError::Node);
                }
                let domain = svc.domain.as_ref().and_then(|d| self.rm.failover_domains.iter().find(|x| &x.name == d));
                let (load, tried) = (BTreeMap::new(), BTreeSet::new());
                let input = PlaceInput {
                    service: name,
                    domain,
                    exclusive: svc.exclusive,
                    nodes: &self.view.nodes,
                    eligible: &self.view.eligible,
                    load: &load,
                    tried: &tried,
                    target: id,
                };
                if input.rank(id).is_none() {
                    return Err(RgError::Domain);
                }
                if svc.exclusive
                    && engine::loads(&self.rm, &self.records, name).get(&id).is_some_and(|l| l.services > 0)
                {
                    return Err(RgError::Exclusive);
                }
                id
            }
        };
        let members = self.view.members.clone();
        let init = engine::initial(&self.rm, name);
        // Enabling (or relocating) a service somewhere it cannot run fails at once, with
        // the reason, rather than leaving it stopped.
        if matches!(op, Op::Enable | Op::Relocate) {
            let cur = self.records.get(name).copied().unwrap_or(init);
            let running =
                matches!(cur.state, State::Starting | State::Started | State::Stopping) && members.contains(&cur.owner);
            if let Ok(mut next) = request::apply(&cur, op, target, running) {
                if running {
                    // Placement away from the current owner.
                    next.add_tried(cur.owner);
                }
                let mut recs = self.records.clone();
                recs.insert(name.to_owned(), next);
                match engine::placement(&self.rm, &self.view, &recs, name, &next) {
                    Placement::NoDomainMember if !running => return Err(RgError::Domain),
                    Placement::NoExclusiveNode if !running => return Err(RgError::Exclusive),
                    Placement::NoNode if !running => return Err(RgError::Node),
                    Placement::NoDomainMember
                    | Placement::NoExclusiveNode
                    | Placement::NoNode
                    | Placement::AllTried
                        if running && target == 0 =>
                    {
                        return Err(RgError::Relocate)
                    }
                    _ => {}
                }
            }
        }
        let mut outcome = Err(RgError::Fail);
        let res = self.store.transact(name, |fresh| {
            let cur = fresh.unwrap_or(init);
            outcome = request::apply(&cur, op, target, members.contains(&cur.owner));
            outcome.ok()
        });
        match res {
            Ok(Some(r)) => {
                self.records.insert(name.to_owned(), r);
                info!(service = name, ?op, target, "request recorded");
                Ok(name.to_owned())
            }
            Ok(None) => Err(outcome.err().unwrap_or(RgError::Fail)),
            Err(e) => {
                warn!(service = name, error = %e, "cannot change the record");
                Err(RgError::Fail)
            }
        }
    }
}

/// Serialising replies of different types through one `handle`.
mod erased {
    pub trait Ser {
        fn to_value(&self) -> serde_json::Value;
    }
    impl<T: serde::Serialize> Ser for T {
        fn to_value(&self) -> serde_json::Value {
            serde_json::to_value(self).expect("replies serialise")
        }
    }
}
