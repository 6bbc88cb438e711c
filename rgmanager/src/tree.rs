//! A service's resource tree: references resolved, children sorted into the classic type
//! order, and the start and stop orders derived from it.
//!
//! Children start after their parent and stop before it. Typed children of one parent start
//! in the order of [`type_rank`] (lvm, fs, clusterfs, gnbd_export, nfsexport, nfsclient, ip,
//! script: storage first, then what serves it, then the address clients use, then the
//! application); children of the same type keep the order of cluster.conf. Stopping is the
//! exact reverse of starting.

use std::time::Duration;

use cluster::conf::{Resource, ResourceDef, ResourceKind, Rm, Service, ServiceResource};

/// A problem building a service's tree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    /// The service is not in cluster.conf.
    #[error("no service named \"{name}\" in cluster.conf")]
    NoService {
        /// The name asked for.
        name: String,
    },
    /// A `ref` names no resource in `<resources>` (the parser reports this too).
    #[error("service \"{service}\": <{tag} ref=\"{key}\"> names no resource in <resources>")]
    UnresolvedRef {
        /// The service.
        service: String,
        /// The element.
        tag: &'static str,
        /// The key referenced.
        key: String,
    },
}

/// The rank of a resource type among siblings: lower starts first.
pub fn type_rank(kind: ResourceKind) -> u8 {
    match kind {
        ResourceKind::Lvm => 1,
        ResourceKind::Fs => 2,
        ResourceKind::ClusterFs => 3,
        ResourceKind::GnbdExport => 4,
        ResourceKind::NfsExport => 5,
        ResourceKind::NfsClient => 6,
        ResourceKind::Ip => 7,
        ResourceKind::Script => 8,
    }
}

/// The status check interval of a type when cluster.conf sets none (RHCS's agents' defaults).
pub fn default_status_interval(kind: ResourceKind) -> Duration {
    Duration::from_secs(match kind {
        ResourceKind::Ip => 10,
        ResourceKind::Script => 30,
        ResourceKind::Fs | ResourceKind::ClusterFs | ResourceKind::Lvm => 60,
        ResourceKind::GnbdExport => 30,
        ResourceKind::NfsExport | ResourceKind::NfsClient => 60,
    })
}

/// One resource of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeNode {
    /// The resolved definition (a `ref` replaced by its `<resources>` entry).
    pub res: Resource,
    /// Parent index, if any.
    pub parent: Option<usize>,
    /// Child indexes, in start order.
    pub children: Vec<usize>,
    /// `__independent_subtree`.
    pub independent: bool,
    /// How often its status is checked.
    pub status_interval: Duration,
}

impl TreeNode {
    /// `type:key`, as logs and rg_test name a resource.
    pub fn label(&self) -> String {
        format!("{}:{}", self.res.kind.tag(), self.res.key)
    }
}

/// A service's resources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    /// Service name.
    pub service: String,
    /// Every resource; indexes are stable.
    pub nodes: Vec<TreeNode>,
    /// Top-level resources, in start order.
    pub roots: Vec<usize>,
}

impl Tree {
    /// Builds the tree of service `name`.
    pub fn for_service(rm: &Rm, name: &str) -> Result<Tree, TreeError> {
        let svc = rm.services.iter().find(|s| s.name == name).ok_or(TreeError::NoService { name: name.to_owned() })?;
        Tree::build(rm, svc)
    }

    /// Builds the tree of `svc`.
    pub fn build(rm: &Rm, svc: &Service) -> Result<Tree, TreeError> {
        let mut t = Tree { service: svc.name.clone(), nodes: Vec::new(), roots: Vec::new() };
        t.roots = t.add_level(rm, svc, &svc.resources, None)?;
        Ok(t)
    }

    fn add_level(
        &mut self,
        rm: &Rm,
        svc: &Service,
        level: &[ServiceResource],
        parent: Option<usize>,
    ) -> Result<Vec<usize>, TreeError> {
        let mut sorted: Vec<&ServiceResource> = level.iter().collect();
        // Stable: same-type siblings keep cluster.conf's order.
        sorted.sort_by_key(|r| type_rank(r.kind));
        let mut out = Vec::with_capacity(sorted.len());
        for r in sorted {
            let res = match &r.def {
                ResourceDef::Inline(def) => def.clone(),
                ResourceDef::Ref(key) => {
                    rm.resources.iter().find(|x| x.kind == r.kind && &x.key == key).cloned().ok_or_else(|| {
                        TreeError::UnresolvedRef { service: svc.name.clone(), tag: r.kind.tag(), key: key.clone() }
                    })?
                }
            };
            let idx = self.nodes.len();
            self.nodes.push(TreeNode {
                res,
                parent,
                children: Vec::new(),
                independent: r.independent,
                status_interval: r
                    .status_interval_s
                    .map(|s| Duration::from_secs(u64::from(s)))
                    .unwrap_or_else(|| default_status_interval(r.kind)),
            });
            let kids = self.add_level(rm, svc, &r.children, Some(idx))?;
            self.nodes[idx].children = kids;
            out.push(idx);
        }
        Ok(out)
    }

    /// Every resource in start order (a parent before its children, siblings by type).
    pub fn start_order(&self) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.nodes.len());
        for &r in &self.roots {
            self.preorder(r, &mut out);
        }
        out
    }

    /// Every resource in stop order: the reverse of [`Tree::start_order`].
    pub fn stop_order(&self) -> Vec<usize> {
        let mut v = self.start_order();
        v.reverse();
        v
    }

    /// The subtree rooted at `idx`, in start order.
    pub fn subtree_start_order(&self, idx: usize) -> Vec<usize> {
        let mut out = Vec::new();
        self.preorder(idx, &mut out);
        out
    }

    fn preorder(&self, idx: usize, out: &mut Vec<usize>) {
        out.push(idx);
        for &c in &self.nodes[idx].children {
            self.preorder(c, out);
        }
    }

    /// What a failed status check of resource `idx` restarts: the nearest enclosing
    /// independent subtree (`Some(root)`), or the whole service (`None`).
    pub fn recovery_scope(&self, idx: usize) -> Option<usize> {
        let mut cur = Some(idx);
        while let Some(i) = cur {
            if self.nodes[i].independent {
                return Some(i);
            }
            cur = self.nodes[i].parent;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn conf(rm: &str) -> Rm {
        let xml = format!(
            r#"<cluster name="t" config_version="1"><clusternodes><clusternode name="a" nodeid="1"/></clusternodes>
            <rm>{rm}</rm></cluster>"#
        );
        cluster::conf::parse(&xml).expect("valid").rm.expect("rm")
    }

    fn labels(t: &Tree, order: &[usize]) -> Vec<String> {
        order.iter().map(|&i| t.nodes[i].label()).collect()
    }

    #[test]
    fn classic_type_order_and_nesting() {
        let rm = conf(
            r#"<resources><ip address="198.18.10.1/24"/><script name="httpd" file="/bin/true"/></resources>
            <service name="www">
              <script ref="httpd"/>
              <ip ref="198.18.10.1/24"><script name="after-ip" file="/bin/true"/></ip>
              <fs name="data" device="/dev/x" mountpoint="/srv"><script name="in-fs" file="/bin/true"/></fs>
              <script name="second" file="/bin/true"/>
              <gnbd_export name="e" device="/srv/e.img"/>
            </service>"#,
        );
        let t = Tree::for_service(&rm, "www").unwrap();
        assert_eq!(
            labels(&t, &t.start_order()),
            [
                "fs:data",
                "script:in-fs",
                "gnbd_export:e",
                "ip:198.18.10.1/24",
                "script:after-ip",
                "script:httpd",
                "script:second"
            ]
        );
        assert_eq!(
            labels(&t, &t.stop_order()),
            [
                "script:second",
                "script:httpd",
                "script:after-ip",
                "ip:198.18.10.1/24",
                "gnbd_export:e",
                "script:in-fs",
                "fs:data"
            ]
        );
        assert_eq!(Tree::for_service(&rm, "nope"), Err(TreeError::NoService { name: "nope".into() }));
    }

    #[test]
    fn independent_subtree_scope_and_intervals() {
        let rm = conf(
            r#"<service name="s">
              <ip address="198.18.10.1"><action name="status" interval="2"/>
                <script name="app" file="/bin/true" __independent_subtree="1">
                  <script name="child" file="/bin/true"/>
                </script>
              </ip>
            </service>"#,
        );
        let t = Tree::for_service(&rm, "s").unwrap();
        let order = t.start_order();
        assert_eq!(labels(&t, &order), ["ip:198.18.10.1", "script:app", "script:child"]);
        assert_eq!(t.recovery_scope(order[2]), Some(order[1]));
        assert_eq!(t.recovery_scope(order[0]), None);
        assert_eq!(t.nodes[order[0]].status_interval, Duration::from_secs(2));
        assert_eq!(t.nodes[order[1]].status_interval, Duration::from_secs(30));
        assert_eq!(labels(&t, &t.subtree_start_order(order[1])), ["script:app", "script:child"]);
    }

    /// A random nesting of kinds, as cluster.conf text.
    fn arb_level(depth: u32) -> BoxedStrategy<String> {
        let kinds = prop::sample::select(vec!["ip", "script", "fs", "clusterfs", "gnbd_export"]);
        let leaf = kinds.clone().prop_map(|k| (k, String::new()));
        let node = if depth == 0 {
            leaf.boxed()
        } else {
            prop_oneof![leaf, (kinds, arb_level(depth - 1)).prop_map(|(k, inner)| (k, inner))].boxed()
        };
        prop::collection::vec(node, 0..4)
            .prop_map(|v| {
                v.into_iter()
                    .map(|(k, inner)| {
                        let attrs = match k {
                            "ip" => "address=\"198.18.9.9\"".to_owned(),
                            "script" => "name=\"n\" file=\"/bin/true\"".to_owned(),
                            "gnbd_export" => "name=\"n\" device=\"/d\"".to_owned(),
                            _ => "name=\"n\" device=\"/d\" mountpoint=\"/m\"".to_owned(),
                        };
                        format!("<{k} {attrs}>{inner}</{k}>")
                    })
                    .collect::<String>()
            })
            .boxed()
    }

    proptest! {
        /// Every resource starts after its parent and stops before it; siblings start in type
        /// order; stop order is start order reversed and both cover every resource once.
        #[test]
        fn orders_respect_parents_and_types(body in arb_level(3)) {
            let rm = conf(&format!("<service name=\"s\">{body}</service>"));
            let t = Tree::for_service(&rm, "s").unwrap();
            let start = t.start_order();
            let pos = |i: usize| start.iter().position(|&x| x == i).unwrap();
            let mut seen = start.clone();
            seen.sort_unstable();
            prop_assert_eq!(seen, (0..t.nodes.len()).collect::<Vec<_>>());
            for (i, n) in t.nodes.iter().enumerate() {
                if let Some(p) = n.parent {
                    prop_assert!(pos(p) < pos(i));
                }
                for w in n.children.windows(2) {
                    prop_assert!(type_rank(t.nodes[w[0]].res.kind) <= type_rank(t.nodes[w[1]].res.kind));
                }
            }
            let mut rev = t.stop_order();
            rev.reverse();
            prop_assert_eq!(rev, start);
        }
    }
}
