//! Every service of the example configurations (cluster/examples) builds a resource tree,
//! and its start order puts parents before children.

use rgmanager::tree::Tree;

#[test]
fn example_services_build_trees() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../cluster/examples");
    let mut seen = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_none_or(|x| x != "conf") {
            continue;
        }
        let conf = cluster::conf::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let Some(rm) = conf.rm else { continue };
        for s in &rm.services {
            let t = Tree::build(&rm, s).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let order = t.start_order();
            assert_eq!(order.len(), t.nodes.len());
            for (pos, &i) in order.iter().enumerate() {
                if let Some(p) = t.nodes[i].parent {
                    assert!(order[..pos].contains(&p), "{}: {} before its parent", path.display(), t.nodes[i].label());
                }
            }
            seen += 1;
        }
    }
    assert!(seen >= 6, "only {seen} services in the examples");
}

#[test]
fn ha_storage_example_orders_export_before_its_ip() {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../cluster/examples/ha-storage.conf");
    let rm = cluster::conf::load(&path).unwrap().rm.unwrap();
    let t = Tree::for_service(&rm, "export").unwrap();
    let labels: Vec<String> = t.start_order().iter().map(|&i| t.nodes[i].label()).collect();
    assert_eq!(labels, ["gnbd_export:volume", "ip:198.18.0.100/24"]);
    let db = Tree::for_service(&rm, "db").unwrap();
    let metrics = db.nodes.iter().position(|n| n.res.key == "metrics").unwrap();
    assert_eq!(db.recovery_scope(metrics), Some(metrics));
}
