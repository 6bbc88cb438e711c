//! rgmanager: the HA service manager. It keeps the services of cluster.conf's `<rm>` running:
//! starts each on one node chosen by its failover domain, checks its resources' status,
//! recovers it by its policy (restart in place within a sliding window, relocate, disable),
//! moves it when its node dies (after fenced reports the node fenced) and back when a better
//! node returns, and carries out the operator's `clusvcadm` requests.
//!
//! | module | owns |
//! |---|---|
//! | [`tree`] | a service's resource tree: references resolved, start and stop order |
//! | [`place`] | the failover-domain placement rule (ordered, restricted, nofailback, exclusive) |
//! | [`policy`] | recovery policies and the restart window |
//! | [`record`] | the cluster-wide service record kept in the DLM lock value block, and its codec |
//! | [`engine`] | the sans-IO service state machine: what this node does for each service |
//! | [`request`] | operator requests (`clusvcadm`) as record changes, and rgmanager's return codes |
//! | [`agent`] | resource agents (ip, script, fs/clusterfs, gnbd_export) and running a tree |
//! | [`api`] | the daemon's control socket: requests, replies, client |
//! | [`daemon`] | the `rgmanager` daemon: DLM locks, fenced events, the evaluation loop |
//! | [`clustat`] | `clustat`'s rendering (membership and services) |
//!
//! ```
//! use rgmanager::tree::Tree;
//! let conf = cluster::conf::parse(r#"<cluster name="c" config_version="1">
//!   <clusternodes><clusternode name="a" nodeid="1"/></clusternodes>
//!   <rm><service name="www"><ip address="198.18.10.1/24"><script name="httpd" file="/bin/true"/></ip>
//!   </service></rm></cluster>"#).unwrap();
//! let tree = Tree::for_service(conf.rm.as_ref().unwrap(), "www").unwrap();
//! let order: Vec<String> = tree.start_order().iter().map(|&i| tree.nodes[i].label()).collect();
//! assert_eq!(order, ["ip:198.18.10.1/24", "script:httpd"]);
//! ```
#![forbid(unsafe_code)]

pub mod agent;
pub mod api;
pub mod clustat;
pub mod daemon;
pub mod engine;
pub mod place;
pub mod policy;
pub mod record;
pub mod request;
pub mod tree;
