//! The parser's checks across sections, run once every section is read: fence device
//! references, failover domains and resource references resolve, votes and two-node mode
//! make sense. Each problem is reported on the element that holds the reference.

use super::{Node, Parser};
use crate::conf::{ClusterConf, ResourceDef, ServiceResource};

impl<'a, 'i> Parser<'a, 'i> {
    /// Checks across sections: references resolve, votes and two-node mode make sense.
    pub(super) fn cross_checks(&mut self, root: Node<'a, 'i>, conf: &ClusterConf) {
        let find = |tag: &str, attr: &str, value: &str| {
            root.descendants().find(|d| d.tag_name().name() == tag && d.attribute(attr) == Some(value))
        };
        for node in &conf.nodes {
            for m in &node.fence {
                for d in &m.devices {
                    if conf.fence_device(&d.name).is_none() {
                        let el = find("clusternode", "name", &node.name).unwrap_or(root);
                        let dn = el
                            .descendants()
                            .find(|x| x.tag_name().name() == "device" && x.attribute("name") == Some(&d.name))
                            .unwrap_or(el);
                        self.err(
                            dn,
                            Some("name"),
                            format!(
                                "node \"{}\" method \"{}\" names fence device \"{}\", which no <fencedevice> defines",
                                node.name, m.name, d.name
                            ),
                        );
                    }
                }
            }
        }
        let cman_el = root.children().find(|c| c.tag_name().name() == "cman").unwrap_or(root);
        if conf.cman.two_node {
            if conf.nodes.len() != 2 {
                self.err(
                    cman_el,
                    Some("two_node"),
                    format!("two_node=\"1\" needs exactly 2 clusternodes, found {}", conf.nodes.len()),
                );
            }
            if conf.nodes.iter().any(|n| n.votes != 1) {
                self.err(cman_el, Some("two_node"), "two_node=\"1\" needs both nodes to have votes=\"1\"");
            }
            if conf.cman.expected_votes.is_some_and(|e| e != 1) {
                self.err(cman_el, Some("expected_votes"), "with two_node=\"1\", expected_votes must be 1");
            }
        }
        if !conf.nodes.is_empty() && conf.total_votes() == 0 {
            self.err(root, None, "every node has votes=\"0\"; the cluster could never be quorate");
        }
        if let Some(rm) = &conf.rm {
            for d in &rm.failover_domains {
                for dn in &d.nodes {
                    if conf.node(&dn.name).is_none() {
                        let el = find("failoverdomainnode", "name", &dn.name).unwrap_or(root);
                        self.err(
                            el,
                            Some("name"),
                            format!(
                                "failover domain \"{}\" names node \"{}\", which is not a clusternode",
                                d.name, dn.name
                            ),
                        );
                    }
                }
            }
            for s in &rm.services {
                let el = find("service", "name", &s.name).unwrap_or(root);
                if let Some(dom) = &s.domain {
                    if !rm.failover_domains.iter().any(|d| &d.name == dom) {
                        self.err(el, Some("domain"), format!("no <failoverdomain> is named \"{dom}\""));
                    }
                }
                if let Some(dep) = &s.depend {
                    if dep == &s.name {
                        self.err(el, Some("depend"), "a service cannot depend on itself");
                    } else if !rm.services.iter().any(|o| &o.name == dep) {
                        self.err(el, Some("depend"), format!("no <service> is named \"{dep}\""));
                    }
                }
                let mut stack: Vec<&ServiceResource> = s.resources.iter().collect();
                while let Some(r) = stack.pop() {
                    if let ResourceDef::Ref(key) = &r.def {
                        if !rm.resources.iter().any(|x| x.kind == r.kind && &x.key == key) {
                            let rel = el
                                .descendants()
                                .find(|x| x.tag_name().name() == r.kind.tag() && x.attribute("ref") == Some(key))
                                .unwrap_or(el);
                            self.err(
                                rel,
                                Some("ref"),
                                format!("no <{}> in <resources> has {}=\"{key}\"", r.kind.tag(), r.kind.key_attr()),
                            );
                        }
                    }
                    stack.extend(r.children.iter());
                }
            }
        }
    }
}
