//! `mailgrip policy simulate` on the corpus test split, with the committed baseline model.

mod common;

use std::process::Command;

use common::repo;

#[test]
fn simulate_on_the_corpus_test_split() {
    let out_dir = tempfile::tempdir().unwrap();
    let corpus = repo().join("models/corpus");
    let out = Command::new(env!("CARGO_BIN_EXE_mailgrip"))
        .args(["policy", "simulate", "--split", "test", "--labels"])
        .arg(corpus.join("labels.csv"))
        .arg("--out")
        .arg(out_dir.path())
        .arg(corpus.join("eml"))
        .env("MAILGRIP__MODEL__DIR", repo().join("models/mailgrip-baseline"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let test_rows =
        std::fs::read_to_string(corpus.join("labels.csv")).unwrap().lines().filter(|l| l.contains(",test,")).count();
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.path().join("simulate.json")).unwrap()).unwrap();
    assert_eq!(report["n"], test_rows, "every test-split mail is simulated");
    let rate = |k: &str| report["configured"][k].as_f64().unwrap();
    for k in ["privacy_leak", "record_loss", "review"] {
        assert!((0.0..=1.0).contains(&rate(k)), "{k}");
    }
    // The sweep is a trade-off: more review never means more errors.
    let sweep = report["sweep"].as_array().unwrap();
    let first = &sweep[0]["rates"];
    let last = &sweep[sweep.len() - 1]["rates"];
    assert!(first["review"].as_f64() >= last["review"].as_f64(), "cheap review, more review");
    let errors = |r: &serde_json::Value| r["privacy_leak"].as_f64().unwrap() + r["record_loss"].as_f64().unwrap();
    assert!(errors(first) <= errors(last), "more review, fewer errors");
    assert!(std::fs::read_to_string(out_dir.path().join("tradeoff.svg")).unwrap().starts_with("<svg"));
    println!("{stdout}");
}
