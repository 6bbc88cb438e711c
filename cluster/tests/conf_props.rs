//! Property tests of the cluster.conf parser: every valid model written with `to_xml` reads
//! back unchanged, and no input (however broken) makes the parser panic.

use std::collections::BTreeMap;

use cluster::conf::*;
use proptest::prelude::*;

fn ident() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9_-]{0,8}"
}

fn value() -> impl Strategy<Value = String> {
    "[ -~\t\u{e9}\u{20ac}]{0,12}"
}

fn options() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map("[a-z][a-z0-9_]{0,6}", value(), 0..4)
        .prop_map(|m| m.into_iter().filter(|(k, _)| !["name", "agent"].contains(&k.as_str())).collect())
}

fn kind() -> impl Strategy<Value = ResourceKind> {
    prop::sample::select(ResourceKind::ALL.to_vec())
}

fn resource(k: ResourceKind, i: usize) -> impl Strategy<Value = Resource> {
    let attrs = prop::collection::vec(value(), k.allowed().len());
    (attrs, any::<bool>()).prop_map(move |(vals, b)| {
        let mut attrs = BTreeMap::new();
        for (i, (a, v)) in k.allowed().iter().zip(vals).enumerate() {
            let v = match *a {
                "monitor_link" | "force_unmount" | "self_fence" | "readonly" | "cached" => {
                    if b { "1" } else { "0" }.to_owned()
                }
                "mountpoint" => format!("/mnt/{}", v.replace(['/', ' '], "_")),
                _ if k.required().contains(a) => format!("x{v}"),
                _ => v,
            };
            if k.required().contains(a) || i % 2 == 0 {
                attrs.insert(a.to_string(), v);
            }
        }
        let key =
            if k == ResourceKind::Ip { format!("198.18.{}.{}/24", i / 250, i % 250 + 1) } else { format!("r{i}") };
        Resource { kind: k, key, attrs }
    })
}

fn conf() -> impl Strategy<Value = ClusterConf> {
    let nodes = prop::collection::vec(
        (
            1u32..=4,
            prop::option::of("198\\.18\\.[0-9]\\.[0-9]{1,2}"),
            prop::collection::vec("[a-z0-9.]{1,10}", 0..2),
            prop::collection::vec(prop::collection::vec((0usize..3, options()), 1..3), 0..3),
        ),
        1..6,
    );
    let devices = prop::collection::vec((ident(), options()), 1..4);
    let rm = prop::option::of((
        prop::collection::vec((any::<[bool; 3]>(), prop::collection::vec((0usize..6, 1u32..=100), 0..4)), 0..3),
        prop::collection::vec(kind(), 0..5),
        prop::collection::vec(
            (
                prop::option::of(0usize..3),
                any::<[bool; 2]>(),
                0u8..3,
                prop::collection::vec((kind(), any::<bool>()), 0..4),
            ),
            0..3,
        ),
    ));
    (
        "[A-Za-z0-9_.-]{1,16}",
        any::<u64>(),
        prop::option::of(1u32..50),
        prop::option::of(100u32..100_000),
        (0u32..100, 0u32..100),
        nodes,
        devices,
        (any::<bool>(), prop::option::of("/[a-z/]{1,12}")),
        rm,
    )
        .prop_map(|(name, version, expected, token, delays, nodes, devices, two, rm)| {
            ((name, version, expected, token, delays, nodes, devices, two), rm)
        })
        .prop_flat_map(|(base, rm)| {
            // Resources need per-kind strategies; draw them here.
            let kinds: Vec<ResourceKind> = rm.as_ref().map(|r| r.1.clone()).unwrap_or_default();
            let res: Vec<_> = kinds.iter().enumerate().map(|(i, k)| resource(*k, i)).collect();
            (Just(base), Just(rm), res)
        })
        .prop_map(|((name, version, expected, token, delays, nodes, devices, two), rm, resources)| {
            let devices: Vec<FenceDevice> = devices
                .into_iter()
                .enumerate()
                .map(|(i, (n, options))| FenceDevice { name: format!("{n}{i}"), agent: format!("fence_{n}"), options })
                .collect();
            let (two, keyfile) = two;
            let two_node = two && nodes.len() == 2;
            let nodes: Vec<ClusterNode> = nodes
                .into_iter()
                .enumerate()
                .map(|(i, (votes, addr, altnames, methods))| ClusterNode {
                    name: format!("node{i}"),
                    nodeid: (i as u32 + 1) * 7,
                    votes: if two_node { 1 } else { votes },
                    addr,
                    altnames,
                    fence: methods
                        .into_iter()
                        .enumerate()
                        .map(|(m, devs)| FenceMethod {
                            name: format!("m{m}"),
                            devices: devs
                                .into_iter()
                                .map(|(d, options)| DeviceRef {
                                    name: devices[d % devices.len()].name.clone(),
                                    options,
                                })
                                .collect(),
                        })
                        .collect(),
                })
                .collect();
            let rm = rm.map(|(domains, _, services)| {
                let failover_domains: Vec<FailoverDomain> = domains
                    .into_iter()
                    .enumerate()
                    .map(|(i, (f, dn))| {
                        let mut seen = std::collections::BTreeSet::new();
                        FailoverDomain {
                            name: format!("dom{i}"),
                            ordered: f[0],
                            restricted: f[1],
                            nofailback: f[2],
                            nodes: dn
                                .into_iter()
                                .filter_map(|(n, priority)| {
                                    let name = nodes[n % nodes.len()].name.clone();
                                    seen.insert(name.clone()).then_some(DomainNode { name, priority })
                                })
                                .collect(),
                        }
                    })
                    .collect();
                let services = services
                    .into_iter()
                    .enumerate()
                    .map(|(i, (dom, f, rec, res))| Service {
                        name: format!("svc{i}"),
                        domain: dom.filter(|d| *d < failover_domains.len()).map(|d| format!("dom{d}")),
                        autostart: f[0],
                        exclusive: f[1],
                        recovery: [Recovery::Restart, Recovery::Relocate, Recovery::Disable, Recovery::RestartDisable]
                            [(rec as usize + i) % 4],
                        max_restarts: (i % 4) as u32,
                        restart_expire_time_s: (i * 37 % 600) as u32,
                        depend: (i > 0 && f[0]).then(|| "svc0".to_string()),
                        depend_soft: i > 0 && f[0] && f[1],
                        resources: res
                            .into_iter()
                            .enumerate()
                            .map(|(j, (k, nest))| {
                                // Reference a defined resource of this kind when one exists.
                                let def = match resources.iter().find(|r| r.kind == k) {
                                    Some(r) if nest => ResourceDef::Ref(r.key.clone()),
                                    _ => ResourceDef::Inline(Resource {
                                        kind: k,
                                        key: if k == ResourceKind::Ip {
                                            format!("198.19.0.{}", j + 1)
                                        } else {
                                            format!("in{j}")
                                        },
                                        attrs: k.required().iter().map(|a| (a.to_string(), format!("/v{j}"))).collect(),
                                    }),
                                };
                                let children = if nest {
                                    vec![ServiceResource {
                                        kind: ResourceKind::Script,
                                        def: ResourceDef::Inline(Resource {
                                            kind: ResourceKind::Script,
                                            key: format!("child{j}"),
                                            attrs: [("file".to_string(), "/bin/true".to_string())].into(),
                                        }),
                                        children: vec![],
                                        independent: j % 2 == 0,
                                        status_interval_s: None,
                                    }]
                                } else {
                                    vec![]
                                };
                                ServiceResource {
                                    kind: k,
                                    def,
                                    children,
                                    independent: false,
                                    status_interval_s: (j % 3 == 0).then_some(j as u32 + 1),
                                }
                            })
                            .collect(),
                    })
                    .collect();
                Rm { failover_domains, resources: resources.clone(), services }
            });
            ClusterConf {
                name,
                config_version: version,
                cman: Cman { expected_votes: if two_node { Some(1) } else { expected }, two_node, keyfile },
                totem: Totem { token_ms: token },
                fence_daemon: FenceDaemon { post_fail_delay_s: delays.0, post_join_delay_s: delays.1 },
                nodes,
                fence_devices: devices,
                rm,
            }
        })
        .prop_filter("some node must have votes", |c| c.total_votes() > 0)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn to_xml_parses_back(c in conf()) {
        let xml = c.to_xml();
        match parse(&xml) {
            Ok(back) => prop_assert_eq!(back, c),
            Err(e) => prop_assert!(false, "{}\n{}", e, xml),
        }
    }

    #[test]
    fn arbitrary_text_never_panics(s in "\\PC{0,400}") {
        let _ = parse(&s);
    }

    #[test]
    fn mutated_valid_files_never_panic(c in conf(), cut in any::<prop::sample::Index>(), junk in "[<>/=\" a-z]{0,8}") {
        let xml = c.to_xml();
        let at = cut.index(xml.len() + 1);
        let at = (0..=at).rev().find(|i| xml.is_char_boundary(*i)).unwrap_or(0);
        let mutated = format!("{}{}{}", &xml[..at], junk, &xml[at..]);
        if let Err(e) = parse(&mutated) {
            prop_assert!(!e.0.is_empty());
            for err in &e.0 {
                prop_assert!(!err.problem.is_empty());
            }
        }
    }
}
