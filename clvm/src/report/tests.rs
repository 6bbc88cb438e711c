//! Reports of states stock lvm2 cannot show on this machine (active LVs: it has no
//! device-mapper here), checked against lvm2's rules: attr characters, lv_active, kernel
//! fields, copy_percent, lvdisplay's kernel lines.

use super::*;
use crate::label::{format_uuid, DiskLocn, Label, PvHeader, PvHeaderExtension, ID_LEN};
use crate::mda::MdaHeader;
use crate::vg::{Area, Extra, LogicalVolume, PhysicalVolume, Segment, VolumeGroup};

fn uuid(tag: &str) -> [u8; ID_LEN] {
    let mut u = [b'0'; ID_LEN];
    for (i, b) in tag.bytes().enumerate().take(ID_LEN) {
        u[ID_LEN - tag.len().min(ID_LEN) + i] = b;
    }
    u
}

fn pv_source(dev: &str, tag: &str, vg: Option<&str>) -> PvSource {
    PvSource {
        device: dev.to_owned(),
        dev_size: 64 << 20,
        devno: Some((7, 0)),
        label: Label::new(PvHeader {
            uuid: uuid(tag),
            device_size: 64 << 20,
            data_areas: vec![DiskLocn { offset: 1 << 20, size: 0 }],
            metadata_areas: vec![DiskLocn { offset: 4096, size: 1044480 }],
            extension: Some(PvHeaderExtension { version: 2, flags: 1, bootloader_areas: vec![] }),
        }),
        mdas: vec![MdaHeader::new(4096, 1044480)],
        vg: vg.map(str::to_owned),
    }
}

fn lv(name: &str, visible: bool, segments: Vec<Segment>) -> LogicalVolume {
    let mut status = vec!["READ".to_owned(), "WRITE".to_owned()];
    if visible {
        status.push("VISIBLE".into());
    }
    LogicalVolume {
        name: name.into(),
        id: format_uuid(&uuid(name)),
        status,
        flags: vec![],
        creation_time: Some(0),
        creation_host: Some("n1".into()),
        segments,
        extra: Extra::default(),
    }
}

fn source() -> Source {
    let pv = |name: &str, tag: &str| PhysicalVolume {
        name: name.into(),
        id: format_uuid(&uuid(tag)),
        device: None,
        status: vec!["ALLOCATABLE".into()],
        flags: vec![],
        dev_size: Some(131072),
        pe_start: 2048,
        pe_count: 15,
        extra: Extra::default(),
    };
    let area = |n: &str, s| Area { name: n.into(), start: s };
    let mut m = Segment::striped(0, 1, None, vec![]);
    m.segtype = "mirror".into();
    m.stripe_count = None;
    m.mirror_count = Some(2);
    m.mirror_log = Some("mir_mlog".into());
    m.region_size = Some(1024);
    m.mirrors = vec![area("mir_mimage_0", 0), area("mir_mimage_1", 0)];
    let vg = VolumeGroup {
        name: "vg".into(),
        id: format_uuid(&uuid("vg")),
        seqno: 7,
        format: Some("lvm2".into()),
        status: vec!["RESIZEABLE".into(), "READ".into(), "WRITE".into(), "CLUSTERED".into()],
        flags: vec![],
        extent_size: 8192,
        max_lv: 0,
        max_pv: 0,
        metadata_copies: Some(0),
        physical_volumes: vec![pv("pv0", "a"), pv("pv1", "b")],
        logical_volumes: vec![
            lv("lin", true, vec![Segment::striped(0, 2, None, vec![area("pv0", 0)])]),
            lv("mir", true, vec![m]),
            lv("mir_mlog", false, vec![Segment::striped(0, 1, None, vec![area("pv1", 2)])]),
            lv("mir_mimage_0", false, vec![Segment::striped(0, 1, None, vec![area("pv0", 2)])]),
            lv("mir_mimage_1", false, vec![Segment::striped(0, 1, None, vec![area("pv1", 3)])]),
        ],
        extra: Extra::default(),
    };
    Source {
        pvs: vec![pv_source("/dev/gnbd/a", "a", Some("vg")), pv_source("/dev/gnbd/b", "b", Some("vg"))],
        vgs: vec![vg],
    }
}

/// lin active and open, the mirror active (100% in sync), its images and log open under it.
fn state(_vg: &str, lv: &str) -> LvState {
    match lv {
        "lin" => {
            LvState::Active(ActiveLv { open: true, devno: Some((7, 9)), read_ahead: Some(256), ..ActiveLv::default() })
        }
        "mir" => LvState::Active(ActiveLv { sync_percent: Some(100.0), ..ActiveLv::default() }),
        _ => LvState::Active(ActiveLv { open: true, sync_percent: Some(100.0), ..ActiveLv::default() }),
    }
}

fn lvs(argv: &[&str], st: &dyn Fn(&str, &str) -> LvState) -> String {
    report(&ReportArgs::parse(Command::Lvs, argv).unwrap(), &source(), st).unwrap().stdout
}

#[test]
fn active_lvs_attrs() {
    let out = lvs(&["-a", "-o", "lv_name,lv_attr,lv_active,copy_percent,lv_kernel_major,lv_device_open"], &state);
    assert_eq!(
        out,
        "  LV             Attr       Active Cpy%Sync KMaj DevOpen   \n\
         \x20 lin            -wi-ao---- active             7       open\n\
         \x20 mir            mwi-a-m--- active 100.00     -1           \n\
         \x20 [mir_mimage_0] iwi-aom--- active            -1       open\n\
         \x20 [mir_mimage_1] iwi-aom--- active            -1       open\n\
         \x20 [mir_mlog]     lwi-aom--- active            -1       open\n"
    );
}

#[test]
fn inactive_lvs_attrs() {
    let out = lvs(&["-a", "-o", "lv_name,lv_attr,lv_active,lv_device_open", "--noheadings"], &|_, _| LvState::Inactive);
    assert_eq!(
        out,
        "  lin            -wi-------           unknown\n\
         \x20 mir            mwi---m---           unknown\n\
         \x20 [mir_mimage_0] Iwi---m---           unknown\n\
         \x20 [mir_mimage_1] Iwi---m---           unknown\n\
         \x20 [mir_mlog]     lwi---m---           unknown\n"
    );
}

#[test]
fn clustered_vg_attr() {
    let out = report(&ReportArgs::parse(Command::Vgs, &["--noheadings"]).unwrap(), &source(), &state).unwrap().stdout;
    assert_eq!(out, "  vg   2   2   0 wz--nc 120.00m 100.00m\n");
}

#[test]
fn lvdisplay_of_an_active_lv() {
    let args = DisplayArgs::parse(DisplayCommand::Lv, &["vg/lin"]).unwrap();
    let out = display(&args, &source(), &state).unwrap().stdout;
    assert!(
        out.contains(
            "  LV Status              available\n  # open                 1\n  LV Size                8.00 MiB\n"
        ),
        "{out}"
    );
    assert!(
        out.ends_with(
            "  Read ahead sectors     auto\n  - currently set to     256\n  Block device           7:9\n   \n"
        ),
        "{out}"
    );
    let out = display(&args, &source(), &|_, _| LvState::Inactive).unwrap().stdout;
    assert!(out.contains("  LV Status              NOT available\n  LV Size"), "{out}");
}

#[test]
fn every_field_renders_for_every_row_type() {
    // No field may panic or be missing on any object: the whole table on each report.
    for (cmd, extra) in
        [(Command::Pvs, "pv_all,vg_all"), (Command::Vgs, "vg_all"), (Command::Lvs, "lv_all,vg_all,seg_all")]
    {
        for st in [LvState::Unknown, LvState::Inactive] {
            let args = ReportArgs::parse(cmd, &["-a", "-o", extra]).unwrap();
            let out = report(&args, &source(), &|_, _| st).unwrap();
            assert!(!out.stdout.is_empty());
        }
    }
    let args = ReportArgs::parse(Command::Pvs, &["-o", "pvseg_all,lv_all,seg_all,pv_all,vg_all"]).unwrap();
    assert!(!report(&args, &source(), &state).unwrap().stdout.is_empty());
}

#[test]
fn every_field_id_resolves_to_itself() {
    for (i, f) in all_fields().iter().enumerate() {
        for prefix in ["pv_", "vg_", "lv_", "seg_", "pvseg_"] {
            let got = lookup(f.id, prefix).map(|r| r.def().id);
            // An exact id can only be shadowed by an earlier field with the same canonical name.
            assert_eq!(got, Some(f.id), "field {i} {} with prefix {prefix}", f.id);
        }
    }
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn case_and_underscores_do_not_matter(i in 0usize..218, flips in proptest::collection::vec(any::<bool>(), 32), extra in 0usize..4) {
            let f = &all_fields()[i % all_fields().len()];
            let mut name: String = f
                .id
                .chars()
                .zip(flips.iter().cycle())
                .map(|(c, &up)| if up { c.to_ascii_uppercase() } else { c })
                .collect();
            let at = extra.min(name.len());
            name.insert(at, '_');
            let got = lookup(&name, "lv_").map(|r| r.def().id);
            prop_assert_eq!(got, Some(f.id));
        }

        #[test]
        fn selection_parser_never_panics(s in "[a-z_=!<>~&|#,()'\" 0-9.m-]{0,40}") {
            let _ = parse_selection(&s, "lv_");
        }
    }
}

#[test]
fn json_std_types_values() {
    let args = ReportArgs::parse(
        Command::Lvs,
        &[
            "--reportformat",
            "json_std",
            "-o",
            "lv_name,seg_count,lv_tags,lv_size,copy_percent,lv_device_open",
            "vg/lin",
        ],
    )
    .unwrap();
    let mut src = source();
    src.vgs[0].logical_volumes[0].extra.nodes.push((
        None,
        crate::text::Node::Pair {
            key: "tags".into(),
            value: crate::text::Value::Array(vec![
                crate::text::Value::Str("b\"q".into()),
                crate::text::Value::Str("a".into()),
            ]),
        },
    ));
    let out = report(&args, &src, &|_, _| LvState::Inactive).unwrap().stdout;
    assert_eq!(
        out,
        "  {\n      \"report\": [\n          {\n              \"lv\": [\n                  \
         {\"lv_name\":\"lin\", \"seg_count\":1, \"lv_tags\":[\"a\",\"b\\\"q\"], \"lv_size\":\"8.00m\", \
         \"copy_percent\":null, \"lv_device_open\":-1}\n              ]\n          }\n      ]\n  }\n"
    );
    let args =
        ReportArgs::parse(Command::Lvs, &["--binary", "-o", "lv_name,lv_device_open,lv_active_locally", "vg/lin"])
            .unwrap();
    let out = report(&args, &src, &state).unwrap().stdout;
    assert_eq!(out, "  LV   DevOpen    ActLocal  \n  lin           1          1\n");
}
