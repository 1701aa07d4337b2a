//! Golden tests: every broken rules file under fixtures/broken produces exactly the
//! diagnostics in the .out file next to it. Run with WEIR_BLESS=1 to rewrite them.

use std::path::Path;
use std::sync::Arc;

use weir_rules::{SourceFile, load_sources};

#[test]
fn broken_rule_files_give_the_expected_diagnostics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/broken");
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixtures")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 10,
        "expected the broken fixtures, found {}",
        cases.len()
    );
    let bless = std::env::var_os("WEIR_BLESS").is_some();
    let mut failures = Vec::new();
    for case in cases {
        let name = case
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("?")
            .to_string();
        let text = std::fs::read_to_string(&case).expect("read");
        let files = [SourceFile {
            name: name.clone(),
            path: case.clone(),
            text: Arc::from(text),
        }];
        let diags = match load_sources(&files, "localhost", &weir_storage::Catalog) {
            Ok(_) => {
                failures.push(format!("{name}: expected errors, but the rules loaded"));
                continue;
            }
            Err(d) => d,
        };
        let got: String = diags
            .iter()
            .map(|d| format!("{}\n{}\n", d, d.render(false)))
            .collect();
        let golden = case.with_extension("out");
        if bless {
            std::fs::write(&golden, &got).expect("write golden");
            continue;
        }
        let want = std::fs::read_to_string(&golden).unwrap_or_default();
        if got != want {
            failures.push(format!(
                "{name}: diagnostics differ from {}\n--- got ---\n{got}\n--- want ---\n{want}",
                golden.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn rules_spread_over_files_resolve_across_them() {
    let a = SourceFile {
        name: "a.toml".into(),
        path: "a.toml".into(),
        text: Arc::from("[[endpoint]]\nname = \"archive\"\ntype = \"parquet\"\n"),
    };
    let b = SourceFile {
        name: "b.toml".into(),
        path: "b.toml".into(),
        text: Arc::from(
            "[[route]]\nname = \"r\"\nendpoints = [\"archive\"]\n[fallback]\nendpoints = [\"archive\"]\n",
        ),
    };
    let set = load_sources(&[a.clone(), b.clone()], "hub", &weir_storage::Catalog).expect("loads");
    assert_eq!(set.routes.len(), 1);
    let twice = load_sources(
        &[
            a,
            b.clone(),
            SourceFile {
                name: "c.toml".into(),
                ..b
            },
        ],
        "hub",
        &weir_storage::Catalog,
    )
    .expect_err("duplicates");
    let text: Vec<String> = twice.iter().map(ToString::to_string).collect();
    assert!(
        text.iter()
            .any(|t| t.contains("route \"r\" is defined twice")),
        "{text:?}"
    );
    assert!(
        text.iter().any(|t| t.contains("only one [fallback]")),
        "{text:?}"
    );
}
