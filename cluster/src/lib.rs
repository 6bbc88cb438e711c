//! Cluster infrastructure: the `cluster.conf` model, corosync glue (membership, quorum, group
//! messaging) and the fence daemon.
//!
//! - [`conf`]: the cluster.conf schema (RHCS subset), its validating parser ([`conf::parse`])
//!   reporting every problem with element, line and attribute, and a writer.
#![forbid(unsafe_code)]

pub mod conf;

pub use conf::{parse as parse_conf, ClusterConf, ConfError, ConfErrors};
