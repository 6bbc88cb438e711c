//! `cluster.conf`: the model of the classic RHCS XML schema (the subset this suite uses), its
//! parser and validator, and a writer ([`ClusterConf::to_xml`]) that the parser reads back.
//!
//! Parsing never stops at the first problem: [`parse`](parse()) returns every error it finds, each
//! naming the element (with its line), the attribute and the problem, so an operator can fix a
//! file in one pass. Unknown elements and attributes are errors, never silently ignored.
//! Fence device and fence method device elements are the exception by design: their extra
//! attributes are the agent's options and are passed to the agent as `key=value` lines.
//! The schema and every rule checked: `docs/cluster-conf.md`.
//!
//! Where things are: this file holds the model and the error types every check reports
//! with; [`parse`](parse()) and [`load`] (in `parse.rs`) read and validate the XML, checking
//! each element as it is read and the references across sections at the end; `write.rs`
//! holds the writer, [`ClusterConf::to_xml`].

use std::collections::BTreeMap;
use std::fmt;

mod parse;
mod write;

pub use parse::{load, parse};

/// Largest cluster.conf accepted, in bytes.
pub const MAX_CONF_BYTES: usize = 4 << 20;
/// Largest node id corosync accepts in a nodelist.
pub const MAX_NODEID: u32 = 0x7fff_ffff;

/// A parsed and validated cluster.conf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConf {
    /// `<cluster name>`: the cluster name (also corosync's `totem.cluster_name`).
    pub name: String,
    /// `<cluster config_version>`: increases with every change.
    pub config_version: u64,
    /// `<cman>`: quorum settings.
    pub cman: Cman,
    /// `<totem>`: corosync protocol settings.
    pub totem: Totem,
    /// `<fence_daemon>`: fenced delays.
    pub fence_daemon: FenceDaemon,
    /// `<clusternodes>`, in file order.
    pub nodes: Vec<ClusterNode>,
    /// `<fencedevices>`, in file order.
    pub fence_devices: Vec<FenceDevice>,
    /// `<rm>`: the service manager's configuration, if present.
    pub rm: Option<Rm>,
}

/// `<cman expected_votes two_node>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cman {
    /// Expected votes; `None` means the sum of all nodes' votes.
    pub expected_votes: Option<u32>,
    /// Two-node mode: either node alone is quorate (needs exactly two nodes of one vote).
    pub two_node: bool,
    /// Key file (absolute path, the same on every node) that authenticates and encrypts
    /// corosync's traffic; `None` sends it in clear.
    pub keyfile: Option<String>,
}

/// `<totem token>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totem {
    /// Token timeout in milliseconds (corosync's `token`); `None` means corosync's default.
    pub token_ms: Option<u32>,
}

/// `<fence_daemon post_fail_delay post_join_delay>` (both in seconds, as in RHCS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceDaemon {
    /// Seconds to wait after a member fails before fencing it (it may come back).
    pub post_fail_delay_s: u32,
    /// Seconds to wait after the domain forms before fencing members that have not joined.
    pub post_join_delay_s: u32,
}

impl Default for FenceDaemon {
    fn default() -> Self {
        FenceDaemon { post_fail_delay_s: 0, post_join_delay_s: 6 }
    }
}

/// `<clusternode name nodeid votes>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    /// Node name, unique in the cluster.
    pub name: String,
    /// Node id, unique, 1..=0x7fffffff.
    pub nodeid: u32,
    /// Votes this node contributes to quorum (default 1).
    pub votes: u32,
    /// Address of the node's first corosync link; `None` means the name is resolved.
    pub addr: Option<String>,
    /// `<altname name>`: addresses of further corosync links, in order.
    pub altnames: Vec<String>,
    /// `<fence><method>`: fence methods, tried in order.
    pub fence: Vec<FenceMethod>,
}

impl ClusterNode {
    /// The address corosync uses for this node's first link.
    pub fn ring0_addr(&self) -> &str {
        self.addr.as_deref().unwrap_or(&self.name)
    }
}

/// `<method name>`: a fence method succeeds when every one of its devices succeeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceMethod {
    /// Method name (for logs).
    pub name: String,
    /// `<device name ...>`: devices, all of which must succeed.
    pub devices: Vec<DeviceRef>,
}

/// `<device name ...attributes>` inside a fence method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRef {
    /// Name of a `<fencedevice>`.
    pub name: String,
    /// Per-node agent options (`port`, `nodename`, ...).
    pub options: BTreeMap<String, String>,
}

/// `<fencedevice name agent ...attributes>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceDevice {
    /// Device name, unique.
    pub name: String,
    /// Agent program: found on PATH or in the agent directory.
    pub agent: String,
    /// Agent options shared by every node.
    pub options: BTreeMap<String, String>,
}

/// `<rm>`: failover domains, resources and services.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rm {
    /// `<failoverdomains>`.
    pub failover_domains: Vec<FailoverDomain>,
    /// `<resources>`: shared resource definitions, referenced from services by `ref`.
    pub resources: Vec<Resource>,
    /// `<service>` elements.
    pub services: Vec<Service>,
}

/// `<failoverdomain name ordered restricted nofailback>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverDomain {
    /// Domain name, unique.
    pub name: String,
    /// Nodes are preferred by priority (1 is highest).
    pub ordered: bool,
    /// Services may run only on the domain's nodes.
    pub restricted: bool,
    /// A service does not move back when a more preferred node returns.
    pub nofailback: bool,
    /// `<failoverdomainnode name priority>`.
    pub nodes: Vec<DomainNode>,
}

/// `<failoverdomainnode name priority>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainNode {
    /// A clusternode name.
    pub name: String,
    /// Priority, 1 (highest) to 100 (default 1).
    pub priority: u32,
}

/// The resource types the service manager knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceKind {
    /// `<ip address monitor_link>`: a floating IP address (keyed by `address`).
    Ip,
    /// `<script name file>`: an init-style script.
    Script,
    /// `<fs name device mountpoint fstype options force_unmount>`: a local filesystem.
    Fs,
    /// `<clusterfs name device mountpoint fstype options>`: a cluster filesystem.
    ClusterFs,
    /// `<nfsexport name>`.
    NfsExport,
    /// `<nfsclient name target options>`.
    NfsClient,
    /// `<lvm name vg_name lv_name>`: exclusive activation of a logical volume.
    Lvm,
    /// `<gnbd_export name device state_dir readonly cached>`: an export on this node's
    /// gnbd_serv.
    GnbdExport,
}

impl ResourceKind {
    /// All kinds.
    pub const ALL: [ResourceKind; 8] = [
        ResourceKind::Ip,
        ResourceKind::Script,
        ResourceKind::Fs,
        ResourceKind::ClusterFs,
        ResourceKind::NfsExport,
        ResourceKind::NfsClient,
        ResourceKind::Lvm,
        ResourceKind::GnbdExport,
    ];

    /// The element name.
    pub fn tag(self) -> &'static str {
        match self {
            ResourceKind::Ip => "ip",
            ResourceKind::Script => "script",
            ResourceKind::Fs => "fs",
            ResourceKind::ClusterFs => "clusterfs",
            ResourceKind::NfsExport => "nfsexport",
            ResourceKind::NfsClient => "nfsclient",
            ResourceKind::Lvm => "lvm",
            ResourceKind::GnbdExport => "gnbd_export",
        }
    }

    /// Parses an element name.
    pub fn from_tag(tag: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.tag() == tag)
    }

    /// The attribute naming the resource (`address` for ip, `name` otherwise).
    pub fn key_attr(self) -> &'static str {
        match self {
            ResourceKind::Ip => "address",
            _ => "name",
        }
    }

    /// Attributes that must be present in a full definition (besides the key).
    pub fn required(self) -> &'static [&'static str] {
        match self {
            ResourceKind::Ip | ResourceKind::NfsExport => &[],
            ResourceKind::Script => &["file"],
            ResourceKind::Fs | ResourceKind::ClusterFs => &["device", "mountpoint"],
            ResourceKind::NfsClient => &["target"],
            ResourceKind::Lvm => &["vg_name"],
            ResourceKind::GnbdExport => &["device"],
        }
    }

    /// Every attribute a definition may carry (besides the key).
    pub fn allowed(self) -> &'static [&'static str] {
        match self {
            ResourceKind::Ip => &["monitor_link", "sleeptime"],
            ResourceKind::Script => &["file"],
            ResourceKind::Fs => &["device", "mountpoint", "fstype", "options", "force_unmount", "self_fence"],
            ResourceKind::ClusterFs => &["device", "mountpoint", "fstype", "options", "force_unmount"],
            ResourceKind::NfsExport => &[],
            ResourceKind::NfsClient => &["target", "options"],
            ResourceKind::Lvm => &["vg_name", "lv_name"],
            ResourceKind::GnbdExport => &["device", "state_dir", "readonly", "cached"],
        }
    }
}

/// A resource definition: kind, key (address or name) and its attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// Resource type.
    pub kind: ResourceKind,
    /// The key attribute's value (`address` for ip, `name` otherwise).
    pub key: String,
    /// The other attributes.
    pub attrs: BTreeMap<String, String>,
}

/// A resource inside a service: a reference to `<resources>` or an inline definition, with
/// child resources started after it and stopped before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceResource {
    /// Resource type.
    pub kind: ResourceKind,
    /// `Ref(key)` for `<ip ref="..."/>`, `Inline(def)` for a full definition.
    pub def: ResourceDef,
    /// Nested resources.
    pub children: Vec<ServiceResource>,
    /// `__independent_subtree="1"`: a failed status check of this subtree restarts only the
    /// subtree, not the whole service.
    pub independent: bool,
    /// `<action name="status" interval="SECS"/>`: the status check interval, overriding the
    /// agent's default.
    pub status_interval_s: Option<u32>,
}

/// How a service names its resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceDef {
    /// `ref="KEY"`: a resource of the same kind defined in `<resources>`.
    Ref(String),
    /// A full definition in place.
    Inline(Resource),
}

/// Recovery policy of a service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Recovery {
    /// Restart in place, then relocate.
    #[default]
    Restart,
    /// Move to another node.
    Relocate,
    /// Stop and leave disabled.
    Disable,
    /// Restart in place; when the restarts run out, disable instead of relocating.
    RestartDisable,
}

impl Recovery {
    /// The attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            Recovery::Restart => "restart",
            Recovery::Relocate => "relocate",
            Recovery::Disable => "disable",
            Recovery::RestartDisable => "restart-disable",
        }
    }
}

/// `<service name domain autostart exclusive recovery>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Service name, unique.
    pub name: String,
    /// Failover domain name.
    pub domain: Option<String>,
    /// Start when the cluster forms (default true).
    pub autostart: bool,
    /// Run only on a node running no other service.
    pub exclusive: bool,
    /// Recovery policy.
    pub recovery: Recovery,
    /// Restarts allowed within `restart_expire_time_s` before a restart becomes a relocation
    /// (0: no limit).
    pub max_restarts: u32,
    /// The sliding window for `max_restarts`, in seconds (0: restarts never expire).
    pub restart_expire_time_s: u32,
    /// `depend="service:NAME"`: runs only while that service runs.
    pub depend: Option<String>,
    /// `depend_mode="soft"`: the dependency is checked at start only (default hard: the
    /// service is stopped when the one it depends on stops).
    pub depend_soft: bool,
    /// Top-level resources.
    pub resources: Vec<ServiceResource>,
}

impl ClusterConf {
    /// Total votes of all configured nodes.
    pub fn total_votes(&self) -> u32 {
        self.nodes.iter().map(|n| n.votes).fold(0u32, u32::saturating_add)
    }

    /// Expected votes: `<cman expected_votes>` or the sum of all votes.
    pub fn expected_votes(&self) -> u32 {
        self.cman.expected_votes.unwrap_or_else(|| self.total_votes())
    }

    /// The node with this name.
    pub fn node(&self, name: &str) -> Option<&ClusterNode> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The node with this id.
    pub fn node_by_id(&self, nodeid: u32) -> Option<&ClusterNode> {
        self.nodes.iter().find(|n| n.nodeid == nodeid)
    }

    /// The fence device with this name.
    pub fn fence_device(&self, name: &str) -> Option<&FenceDevice> {
        self.fence_devices.iter().find(|d| d.name == name)
    }
}

/// One problem found in a cluster.conf.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct ConfError {
    /// The element, as `<clusternode name="node2">`, or `document`.
    pub element: String,
    /// Line of the element's start (1-based), when known.
    pub line: Option<u32>,
    /// The attribute concerned, if any.
    pub attr: Option<String>,
    /// What is wrong and, where useful, what to do.
    pub problem: String,
}

impl ConfError {
    fn render(&self) -> String {
        let mut s = String::new();
        if let Some(line) = self.line {
            s.push_str(&format!("line {line}: "));
        }
        s.push_str(&self.element);
        if let Some(a) = &self.attr {
            s.push_str(&format!(" attribute {a}"));
        }
        s.push_str(": ");
        s.push_str(&self.problem);
        s
    }
}

/// Every problem found in a cluster.conf (never empty).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfErrors(pub Vec<ConfError>);

impl fmt::Display for ConfErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// A cluster.conf using every section, for the parser's and the writer's tests.
#[cfg(test)]
const GOOD: &str = r#"<?xml version="1.0"?>
<cluster name="alpha" config_version="3">
  <cman expected_votes="3"/>
  <totem token="1000"/>
  <fence_daemon post_fail_delay="0" post_join_delay="3"/>
  <clusternodes>
    <clusternode name="node1" nodeid="1" votes="1" addr="198.18.0.1">
      <altname name="10.1.0.1"/>
      <fence>
        <method name="storage">
          <device name="gnbd" nodename="node1"/>
        </method>
        <method name="human">
          <device name="manual" nodename="node1"/>
        </method>
      </fence>
    </clusternode>
    <clusternode name="node2" nodeid="2"/>
    <clusternode name="node3" nodeid="3"/>
  </clusternodes>
  <fencedevices>
    <fencedevice name="gnbd" agent="fence_gnbd" servers="gnbd1 gnbd2"/>
    <fencedevice name="manual" agent="fence_manual"/>
  </fencedevices>
  <rm>
    <failoverdomains>
      <failoverdomain name="web" ordered="1" restricted="0">
        <failoverdomainnode name="node1" priority="1"/>
        <failoverdomainnode name="node2" priority="2"/>
      </failoverdomain>
    </failoverdomains>
    <resources>
      <ip address="198.18.10.1/24" monitor_link="1"/>
      <script name="httpd" file="/etc/init.d/httpd"/>
    </resources>
    <service name="www" domain="web" recovery="relocate" max_restarts="3" restart_expire_time="300">
      <ip ref="198.18.10.1/24">
        <action name="status" interval="5"/>
        <script ref="httpd" __independent_subtree="1"/>
      </ip>
      <fs name="data" device="/dev/gnbd/data" mountpoint="/srv/www" fstype="ext4"/>
    </service>
    <service name="export" depend="service:www" depend_mode="soft" recovery="restart-disable">
      <gnbd_export name="data" device="/srv/data.img" readonly="1"/>
    </service>
  </rm>
</cluster>
"#;
