use super::*;
use crate::format::text::{parse, write};
use proptest::prelude::*;

/// The metadata text stock `lvcreate -an -Zn -L 8M -i 2` (LVM2 2.03.16) left in a PV's
/// metadata area, NUL excluded.
const STOCK_MDA: &str = include_str!("../../tests/data/stock_mda_text.txt");
/// `vgcfgbackup` of the same VG.
const STOCK_BACKUP: &str = include_str!("../../tests/data/stock_backup.vg");

#[test]
fn reads_stock_metadata_text() {
    let root = parse(STOCK_MDA.as_bytes()).expect("stock text parses");
    let vg = VolumeGroup::from_root(&root).expect("holds a VG");
    assert_eq!(vg.name, "vgexp");
    assert_eq!(vg.seqno, 2);
    assert_eq!(vg.extent_size, 8192);
    assert_eq!(vg.status, ["RESIZEABLE", "READ", "WRITE"]);
    assert_eq!(vg.physical_volumes.len(), 2);
    assert_eq!(vg.pv("pv1").map(|p| (p.pe_start, p.pe_count)), Some((2048, 15)));
    let lv = vg.lv("lv0").expect("lv0");
    assert_eq!(lv.creation_host.as_deref(), Some("vm"));
    let seg = &lv.segments[0];
    assert_eq!((seg.segtype.as_str(), seg.stripe_count, seg.stripe_size), ("striped", Some(2), Some(128)));
    assert_eq!(seg.stripes, [Area { name: "pv0".into(), start: 0 }, Area { name: "pv1".into(), start: 0 }]);
    assert_eq!(root.get("contents"), Some(&Value::Str("Text Format Volume Group".into())));
}

/// A VG stock LVM2 wrote comes back as the same tree (same keys, same order, same values).
#[test]
fn stock_vg_roundtrips_losslessly() {
    for text in [STOCK_MDA, STOCK_BACKUP] {
        let root = parse(text.as_bytes()).expect("parses");
        let s = root.sections().next().expect("a VG section");
        let vg = VolumeGroup::from_section(s).expect("a VG");
        assert_eq!(&vg.to_section(), s);
    }
}

#[test]
fn unknown_keys_survive_in_place() {
    let text = "vg {\n\tid = \"x\"\n\tseqno = 1\n\tsystem_id = \"node1\"\n\tstatus = []\n\textent_size = 8\n\
        \tlock_type = \"dlm\"\n\tphysical_volumes {\n\t}\n\ttags = [\"a\"]\n}\n";
    let root = parse(text.as_bytes()).expect("parses");
    let vg = VolumeGroup::from_root(&root).expect("vg");
    assert_eq!(vg.extra.nodes.len(), 3);
    let again = write(&Section { name: String::new(), nodes: vec![Node::Section(vg.to_section())] });
    let back = parse(again.as_bytes()).expect("reparses");
    let keys = |s: &Section| -> Vec<String> {
        s.nodes
            .iter()
            .map(|n| match n {
                Node::Pair { key, .. } => key.clone(),
                Node::Section(s) => s.name.clone(),
            })
            .collect()
    };
    let vg_back = back.section("vg").expect("vg");
    for k in ["system_id", "lock_type", "tags"] {
        assert!(keys(vg_back).contains(&k.to_owned()), "{k} kept");
    }
    assert_eq!(keys(vg_back)[..4], ["id", "seqno", "system_id", "status"]);
}

#[test]
fn bad_vgs_are_refused_with_context() {
    let e = VolumeGroup::from_root(&parse(b"vg { id = \"x\" seqno = -1 extent_size = 8 }").expect("parses"));
    assert_eq!(
        e.map(|_| ()).map_err(|e| e.to_string()),
        Err("volume group vg: key \"seqno\" must be a non-negative integer".into())
    );
    let e = VolumeGroup::from_root(&parse(b"a = 1").expect("parses"));
    assert_eq!(e.map(|_| ()), Err(VgError::NoVg));
    let lv = "vg { id = \"x\" seqno = 1 extent_size = 8 logical_volumes { l { id = \"y\" segment_count = 2 \
        segment1 { start_extent = 0 extent_count = 1 type = \"striped\" stripes = [\"pv0\"] } } } }";
    assert!(VolumeGroup::from_root(&parse(lv.as_bytes()).expect("parses")).is_err());
}

fn name() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9_]{0,8}"
}

fn areas() -> impl Strategy<Value = Vec<Area>> {
    proptest::collection::vec((name(), 0u64..1 << 40).prop_map(|(name, start)| Area { name, start }), 0..4)
}

fn segment() -> impl Strategy<Value = Segment> {
    (
        (0u64..1 << 40, 1u64..1 << 40, prop_oneof![Just("striped"), Just("mirror"), Just("raid1")]),
        (proptest::option::of(1u64..16), proptest::option::of(8u64..4096), areas()),
        (proptest::option::of(1u64..4), proptest::option::of(1u64..1 << 20), proptest::option::of(name()), areas()),
        (proptest::option::of(1u64..8), proptest::collection::vec(name(), 0..4)),
    )
        .prop_map(|((start_extent, extent_count, t), (sc, ss, stripes), (mc, rs, log, mirrors), (dc, raids))| {
            Segment {
                start_extent,
                extent_count,
                segtype: t.to_owned(),
                stripe_count: sc,
                stripe_size: ss,
                stripes,
                mirror_count: mc,
                region_size: rs,
                mirror_log: log,
                mirrors,
                device_count: dc,
                raids,
                extra: Extra::default(),
            }
        })
}

fn flags() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec("[A-Z_]{1,10}", 0..4)
}

fn pv() -> impl Strategy<Value = PhysicalVolume> {
    (
        name(),
        name(),
        proptest::option::of("/dev/[a-z0-9]{1,8}"),
        flags(),
        flags(),
        proptest::option::of(any::<u32>()),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(|(name, id, device, status, flags, dev_size, pe_start, pe_count)| PhysicalVolume {
            name,
            id,
            device,
            status,
            flags,
            dev_size: dev_size.map(u64::from),
            pe_start: pe_start.into(),
            pe_count: pe_count.into(),
            extra: Extra::default(),
        })
}

fn lv() -> impl Strategy<Value = LogicalVolume> {
    (
        name(),
        name(),
        flags(),
        flags(),
        proptest::option::of(any::<i64>()),
        proptest::option::of(".{0,10}"),
        proptest::collection::vec(segment(), 0..3),
    )
        .prop_map(|(name, id, status, flags, creation_time, creation_host, segments)| LogicalVolume {
            name,
            id,
            status,
            flags,
            creation_time,
            creation_host,
            segments,
            extra: Extra::default(),
        })
}

fn vg() -> impl Strategy<Value = VolumeGroup> {
    (
        (name(), name(), 0u64..1 << 62, proptest::option::of(Just("lvm2".to_owned())), flags(), flags()),
        (1u64..1 << 32, any::<u16>(), any::<u16>(), proptest::option::of(0u64..4)),
        (proptest::collection::vec(pv(), 0..4), proptest::collection::vec(lv(), 0..4)),
    )
        .prop_map(|((name, id, seqno, format, status, flags), (es, mlv, mpv, mc), (pvs, lvs))| VolumeGroup {
            name,
            id,
            seqno,
            format,
            status,
            flags,
            extent_size: es,
            max_lv: mlv.into(),
            max_pv: mpv.into(),
            metadata_copies: mc,
            physical_volumes: pvs,
            logical_volumes: lvs,
            extra: Extra::default(),
        })
}

proptest! {
    #[test]
    fn vg_text_roundtrips(vg in vg()) {
        let root = Section { name: String::new(), nodes: vec![Node::Section(vg.to_section())] };
        let text = write(&root);
        let back = VolumeGroup::from_root(&parse(text.as_bytes()).expect("our text parses"));
        prop_assert_eq!(back.expect("our VG reads back"), vg);
    }

    #[test]
    fn garbage_tree_never_panics(s in "[a-z_0-9{}\\[\\]=,\" \n-]{0,300}") {
        if let Ok(root) = parse(s.as_bytes()) {
            let _ = VolumeGroup::from_root(&root);
        }
    }
}
