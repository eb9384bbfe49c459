//! oklog's LogQL parser against Grafana's own grammar, `@grafana/lezer-logql` (npm, pinned in
//! `scripts/test`, which installs it under `target/npm`): every query of the corpus that
//! Grafana's grammar accepts parses here, and every one it rejects is a 400 here. The corpus
//! (`tests/logql/valid.txt`, `invalid.txt`) is Loki's documentation examples and the shapes
//! Grafana's query builder and features send.

use std::path::Path;
use std::process::Command;

fn lezer(corpus: &str) -> Vec<(bool, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let modules = root.join("target/npm/node_modules");
    assert!(
        modules.join("@grafana/lezer-logql").exists(),
        "{} is missing: run scripts/test, which installs Grafana's grammar",
        modules.display()
    );
    let out = Command::new("node")
        .arg(root.join("tests/logql/lezer_check.cjs"))
        .arg(&modules)
        .arg(root.join("tests/logql").join(corpus))
        .output()
        .expect("node (Node.js is on every machine; scripts/test needs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (verdict, q) = l.split_once('\t').unwrap();
            (verdict == "ok", q.to_string())
        })
        .collect()
}

#[test]
fn what_grafanas_grammar_accepts_parses_and_what_it_rejects_does_not() {
    let valid = lezer("valid.txt");
    assert!(valid.len() > 50, "the corpus: {}", valid.len());
    for (ok, q) in &valid {
        assert!(
            ok,
            "Grafana's grammar rejects a query of the valid corpus: {q}"
        );
        if let Err(e) = oklog::logql::parse(q) {
            panic!("Grafana's grammar accepts {q}, oklog does not: {e}");
        }
    }
    let invalid = lezer("invalid.txt");
    assert!(!invalid.is_empty());
    for (ok, q) in &invalid {
        assert!(
            !ok,
            "Grafana's grammar accepts a query of the invalid corpus: {q}"
        );
        assert!(
            oklog::logql::parse(q).is_err(),
            "Grafana's grammar rejects {q}, oklog parses it"
        );
    }
}
