//! The example configurations parse, and every broken file in `tests/broken/` is refused with
//! exactly the errors listed in its `<!-- expect: ... -->` comments (in order).

use std::path::PathBuf;

fn dir(sub: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(sub)
}

fn files(sub: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir(sub))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "conf"))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no .conf files in {sub}");
    v
}

#[test]
fn examples_parse() {
    for f in files("examples") {
        let c = cluster::conf::load(&f).unwrap_or_else(|e| panic!("{}:\n{e}", f.display()));
        assert!(!c.nodes.is_empty());
        assert_eq!(cluster::conf::parse(&c.to_xml()).unwrap(), c, "{}", f.display());
    }
}

#[test]
fn broken_files_get_precise_errors() {
    let mut failures = Vec::new();
    for f in files("tests/broken") {
        let text = std::fs::read_to_string(&f).unwrap();
        let expected: Vec<&str> =
            text.lines().filter_map(|l| l.strip_prefix("<!-- expect: ").and_then(|l| l.strip_suffix(" -->"))).collect();
        assert!(!expected.is_empty(), "{} lists no expected errors", f.display());
        let got = match cluster::conf::parse(&text) {
            Ok(_) => vec!["(accepted)".to_owned()],
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        };
        let ok = got.len() == expected.len() && got.iter().zip(&expected).all(|(g, e)| g.starts_with(e));
        if !ok {
            failures.push(format!(
                "{}:\n  expected:\n    {}\n  got:\n    {}",
                f.display(),
                expected.join("\n    "),
                got.join("\n    ")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
