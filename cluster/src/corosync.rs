//! Queries of the running corosync through its client libraries (votequorum, cpg), via the
//! `rust-corosync` bindings.
//!
//! Corosync's client IPC uses abstract Unix sockets, which belong to a network namespace: a
//! process talks to the corosync of the namespace it runs in.

use std::collections::BTreeMap;

use rust_corosync as cs;

use crate::conf::ClusterConf;

/// A failure talking to corosync.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CorosyncError {
    /// Corosync is not running (or not in this network namespace).
    #[error("cannot connect to corosync ({call}: {error}); is the node joined (cman_tool join)?")]
    NotRunning { call: &'static str, error: String },
    /// A library call failed.
    #[error("corosync {call} failed: {error}")]
    Call { call: &'static str, error: String },
}

fn not_running(call: &'static str) -> impl Fn(cs::CsError) -> CorosyncError {
    move |e| CorosyncError::NotRunning { call, error: e.to_string() }
}

fn failed(call: &'static str) -> impl Fn(cs::CsError) -> CorosyncError {
    move |e| CorosyncError::Call { call, error: e.to_string() }
}

/// One configured node as votequorum sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NodeStatus {
    /// Node id.
    pub nodeid: u32,
    /// Name from cluster.conf.
    pub name: String,
    /// Currently a member.
    pub member: bool,
    /// Votes votequorum counts for it.
    pub votes: u32,
}

/// The cluster as seen from this node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    /// This node's id.
    pub local_nodeid: u32,
    /// Quorate now.
    pub quorate: bool,
    /// Expected votes (votequorum's current value).
    pub expected_votes: u32,
    /// Highest expected votes seen in the cluster.
    pub highest_expected: u32,
    /// Sum of the votes of the current members.
    pub total_votes: u32,
    /// Votes needed for quorum.
    pub quorum: u32,
    /// Two-node mode is on.
    pub two_node: bool,
    /// Every configured node, in cluster.conf order.
    pub nodes: Vec<NodeStatus>,
}

impl Status {
    /// Node ids of the current members.
    pub fn members(&self) -> Vec<u32> {
        self.nodes.iter().filter(|n| n.member).map(|n| n.nodeid).collect()
    }
}

/// True when corosync answers in this namespace.
pub fn is_running() -> bool {
    let cb = cs::votequorum::Callbacks {
        quorum_notification_fn: None,
        nodelist_notification_fn: None,
        expectedvotes_notification_fn: None,
    };
    match cs::votequorum::initialize(&cb) {
        Ok(h) => {
            let _ = cs::votequorum::finalize(h);
            true
        }
        Err(_) => false,
    }
}

/// The local node id (from the cpg library).
pub fn local_nodeid() -> Result<u32, CorosyncError> {
    let model = cs::cpg::ModelData::ModelV1(cs::cpg::Model1Data {
        flags: cs::cpg::Model1Flags::None,
        deliver_fn: None,
        confchg_fn: None,
        totem_confchg_fn: None,
    });
    let h = cs::cpg::initialize(&model, 0).map_err(not_running("cpg_initialize"))?;
    let id = cs::cpg::local_get(h).map_err(failed("cpg_local_get"));
    let _ = cs::cpg::finalize(h);
    id.map(u32::from)
}

/// Queries votequorum about this node and every configured node.
pub fn status(conf: &ClusterConf) -> Result<Status, CorosyncError> {
    let local = local_nodeid()?;
    let cb = cs::votequorum::Callbacks {
        quorum_notification_fn: None,
        nodelist_notification_fn: None,
        expectedvotes_notification_fn: None,
    };
    let h = cs::votequorum::initialize(&cb).map_err(not_running("votequorum_initialize"))?;
    let result = (|| {
        let me = cs::votequorum::get_info(h, cs::NodeId::from(local)).map_err(failed("votequorum_getinfo"))?;
        let mut nodes = Vec::new();
        let mut seen: BTreeMap<u32, ()> = BTreeMap::new();
        for n in &conf.nodes {
            seen.insert(n.nodeid, ());
            let (member, votes) = match cs::votequorum::get_info(h, cs::NodeId::from(n.nodeid)) {
                Ok(info) => (matches!(info.node_state, cs::votequorum::NodeState::Member), info.node_votes),
                Err(_) => (false, n.votes),
            };
            nodes.push(NodeStatus { nodeid: n.nodeid, name: n.name.clone(), member, votes });
        }
        let total_votes = nodes.iter().filter(|n| n.member).map(|n| n.votes).sum();
        let flags = me.flags;
        Ok(Status {
            local_nodeid: local,
            quorate: flags.contains(cs::votequorum::NodeInfoFlags::VOTEQUORUM_INFO_QUORATE),
            expected_votes: me.node_expected_votes,
            highest_expected: me.highest_expected,
            total_votes,
            quorum: me.quorum,
            two_node: flags.contains(cs::votequorum::NodeInfoFlags::VOTEQUORUM_INFO_TWONODE),
            nodes,
        })
    })();
    let _ = cs::votequorum::finalize(h);
    result
}

/// Renders a status the way `cman_tool status` prints it.
pub fn render_status(conf: &ClusterConf, s: &Status) -> String {
    let me = s.nodes.iter().find(|n| n.nodeid == s.local_nodeid);
    let members: Vec<String> = s.nodes.iter().filter(|n| n.member).map(|n| n.name.clone()).collect();
    format!(
        "Cluster Name: {}\nConfig Version: {}\nNode name: {}\nNode ID: {}\nNodes: {}\nMembers: {}\n\
         Expected votes: {}\nHighest expected: {}\nTotal votes: {}\nNode votes: {}\nQuorum: {}\n\
         Quorate: {}\nTwo node: {}\n",
        conf.name,
        conf.config_version,
        me.map(|n| n.name.as_str()).unwrap_or("(not in cluster.conf)"),
        s.local_nodeid,
        members.len(),
        members.join(" "),
        s.expected_votes,
        s.highest_expected,
        s.total_votes,
        me.map(|n| n.votes).unwrap_or(0),
        s.quorum,
        if s.quorate { "Yes" } else { "No" },
        if s.two_node { "Yes" } else { "No" },
    )
}

/// Renders the membership part of `clustat`.
pub fn render_clustat(conf: &ClusterConf, s: &Status) -> String {
    let mut o = format!(
        "Cluster Status for {} (config_version {})\nMember Status: {}\n\n",
        conf.name,
        conf.config_version,
        if s.quorate { "Quorate" } else { "Inquorate" }
    );
    o.push_str(&format!(" {:<24} {:>6} {}\n", "Member Name", "ID", "Status"));
    o.push_str(&format!(" {:<24} {:>6} {}\n", "------ ----", "----", "------"));
    for n in &s.nodes {
        let mut status = if n.member { "Online".to_owned() } else { "Offline".to_owned() };
        if n.nodeid == s.local_nodeid {
            status.push_str(", Local");
        }
        o.push_str(&format!(" {:<24} {:>6} {status}\n", n.name, n.nodeid));
    }
    o
}
