//! The archivist's loop end to end: mail through `serve` is held for review, an archivist decides
//! with the CLI, the archive copy appears with MDTO sidecars valid against the XSD, the audit
//! chains verify, and a single altered byte is caught.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// Review is the cheapest action for every class: everything is held.
fn hold_everything(c: &mut mailgrip::config::Config) {
    for row in c.policy.costs.rows_mut() {
        row.review = 0.0;
    }
}

fn cli(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mailgrip"))
        .args(args)
        .env("MAILGRIP__REVIEW__DIR", dir.join("review"))
        .env("MAILGRIP__ARCHIVE__DIR", dir.join("archive"))
        .env("MAILGRIP__ARCHIVE__RESTRICTED_DIR", dir.join("archive-restricted"))
        .env("MAILGRIP__AUDIT__PATH", dir.join("audit/audit.jsonl"))
        .env("MAILGRIP__AUDIT__REVIEW_PATH", dir.join("audit/review.jsonl"))
        .env("MAILGRIP__MODEL__DIR", repo().join("tests/fixtures/tiny-model"))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_mail_is_decided_archived_with_mdto_and_audited() {
    let sink = Sink::start().await;
    let gw = start(Some(sink.addr), hold_everything).await;
    let dir = gw.dir.path().to_path_buf();
    let mut c = Client::connect(gw.smtp).await.unwrap();
    c.cmd("EHLO x").await.unwrap();
    for f in ["multipart-alternative.eml", "8bit-utf8.eml"] {
        let r = c.transaction("a@example.nl", &["b@example.nl"], &fixture(f)).await;
        assert!(r.starts_with("250") && r.contains("review"), "{r}");
    }
    let got = sink.wait_for(2).await;
    assert_eq!(got.len(), 2, "held for review, but always delivered");
    for m in &got {
        assert!(String::from_utf8_lossy(&m.data).contains("X-Mailgrip-Action: review\r\n"));
    }
    // Held copies are private to the service user.
    use std::os::unix::fs::PermissionsExt;
    let review_dir = dir.join("review");
    assert_eq!(std::fs::metadata(&review_dir).unwrap().permissions().mode() & 0o777, 0o700);
    for f in files_under(&review_dir) {
        assert_eq!(std::fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o600, "{}", f.display());
    }
    let m = gw.metrics_text().await;
    assert_eq!(metric_sum(&m, "mailgrip_review_queue_depth", ""), 2.0, "{m}");
    assert_eq!(metric_sum(&m, "mailgrip_decisions_total", "action=\"review\",mode=\"enforce\""), 2.0);

    // The archivist's CLI, as a separate process beside the daemon.
    let (ok, out, err) = cli(&dir, &["review", "list", "--format", "jsonl"]);
    assert!(ok, "{err}");
    let items: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(items.len(), 2);
    let (first, second) = (items[0]["id"].as_str().unwrap().to_string(), items[1]["id"].as_str().unwrap().to_string());
    let (ok, out, err) = cli(
        &dir,
        &["review", "decide", &first, "--action", "archive", "--class", "functioneel", "--reviewer", "alice"],
    );
    assert!(ok, "{out}{err}");
    let (ok, _, err) =
        cli(&dir, &["review", "decide", &second, "--action", "none", "--class", "prive", "--reviewer", "bob"]);
    assert!(ok, "{err}");
    let (ok, _, _) = cli(&dir, &["review", "decide", &second, "--action", "none", "--reviewer", "bob"]);
    assert!(!ok, "a decided copy is gone from the queue");
    let (ok, _, _) = cli(&dir, &["review", "decide", "../../etc/passwd", "--action", "none", "--reviewer", "eve"]);
    assert!(!ok, "ids cannot walk out of the queue");

    // The archive copy and its MDTO sidecars.
    let archived = files_under(&dir.join("archive"));
    let eml =
        archived.iter().find(|p| p.file_name().unwrap() == format!("{first}.eml").as_str()).expect("archive copy");
    let info = eml.with_file_name(format!("{first}.mdto.xml"));
    let bestand = eml.with_file_name(format!("{first}.eml.mdto.xml"));
    validate(&[info.clone(), bestand.clone()]).expect("MDTO sidecars must validate against the XSD");
    let xml = std::fs::read_to_string(&info).unwrap();
    assert!(xml.contains("<begripLabel>functioneel</begripLabel>"), "corrected class in classificatie");
    assert!(xml.contains("alt-1@minbzk.nl"), "Message-ID as identificatie");
    assert!(
        std::fs::read_to_string(&bestand)
            .unwrap()
            .contains(&format!("<omvang>{}</omvang>", std::fs::metadata(eml).unwrap().len()))
    );
    assert!(!archived.iter().any(|p| p.to_string_lossy().contains(&second)), "`none` leaves no copy");
    assert!(files_under(&review_dir).iter().all(|p| !p.to_string_lossy().ends_with(".eml")), "queue empty");

    // Corrected labels are training data.
    let (ok, out, _) = cli(&dir, &["review", "export"]);
    assert!(ok);
    let rows: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["label"], "functioneel");
    assert_eq!(rows[1]["label"], "prive");
    assert!(rows[0]["text"].as_str().unwrap().contains("Woo-termijnen"));

    // Metrics see the queue drain and the reviewer decisions.
    let m = gw.metrics_text().await;
    assert_eq!(metric_sum(&m, "mailgrip_review_queue_depth", ""), 0.0);
    assert_eq!(metric_sum(&m, "mailgrip_review_decisions", "corrected=\"prive\""), 1.0, "{m}");

    // Both audit chains verify; one altered byte is detected and named.
    gw.shutdown.cancel();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let audit = dir.join("audit/audit.jsonl");
    let (ok, out, err) = cli(&dir, &["audit", "verify", audit.to_str().unwrap()]);
    assert!(ok && out.contains("2 records intact"), "{out}{err}");
    let review_chain = dir.join("audit/review.jsonl");
    let (ok, out, _) = cli(&dir, &["audit", "verify", review_chain.to_str().unwrap()]);
    assert!(ok && out.contains("2 records intact"), "{out}");
    let text = std::fs::read_to_string(&audit).unwrap();
    assert!(!text.contains("Woo-termijnen") && !text.contains("minbzk"), "no message content in the audit trail");
    let mut bytes = std::fs::read(&audit).unwrap();
    let pos = text.find("\"class\":\"").unwrap() + 9;
    bytes[pos] ^= 0x01;
    std::fs::write(&audit, bytes).unwrap();
    let (ok, out, _) = cli(&dir, &["audit", "verify", audit.to_str().unwrap()]);
    assert!(!ok && out.contains("BROKEN") && out.contains("audit.jsonl:"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_mode_tags_and_audits_but_routes_nothing() {
    let sink = Sink::start().await;
    let gw = start(Some(sink.addr), |c| {
        hold_everything(c);
        c.policy.mode = mailgrip::config::PolicyMode::Shadow;
    })
    .await;
    let mut c = Client::connect(gw.smtp).await.unwrap();
    c.cmd("EHLO x").await.unwrap();
    let r = c.transaction("a@example.nl", &["b@example.nl"], &fixture("latin1.eml")).await;
    assert!(r.starts_with("250"), "{r}");
    let got = sink.wait_for(1).await;
    let text = String::from_utf8_lossy(&got[0].data).into_owned();
    assert!(text.contains("X-Mailgrip-Action: review\r\n"), "{text}");
    assert!(text.contains(" shadow\r\n"), "policy header names the mode: {text}");
    assert!(files_under(&gw.dir.path().join("review")).iter().all(|p| p.extension().is_none_or(|e| e != "eml")));
    let m = gw.metrics_text().await;
    assert_eq!(metric_sum(&m, "mailgrip_decisions_total", "mode=\"shadow\""), 1.0);
    let audit = std::fs::read_to_string(gw.dir.path().join("audit/audit.jsonl")).unwrap();
    assert!(audit.contains("\"mode\":\"shadow\""), "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archived_copies_carry_valid_mdto() {
    let sink = Sink::start().await;
    let gw = start(Some(sink.addr), |c| {
        c.policy.strategy = mailgrip::config::Strategy::Classes;
        c.archive.classes = mailgrip::classify::LABELS.iter().map(|s| s.to_string()).collect();
    })
    .await;
    let mut c = Client::connect(gw.smtp).await.unwrap();
    c.cmd("EHLO x").await.unwrap();
    for f in ["attachments.eml", "empty-body.eml", "broken-mime.eml", "windows-1252.eml"] {
        let r = c.transaction("a@example.nl", &["b@example.nl"], &fixture(f)).await;
        assert!(r.starts_with("250"), "{r}");
    }
    let xml: Vec<PathBuf> = files_under(&gw.archive_dir())
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".mdto.xml") && !p.to_string_lossy().contains("/.tmp/"))
        .collect();
    assert_eq!(xml.len(), 8, "two MDTO files per archived copy: {xml:?}");
    validate(&xml).expect("every sidecar validates");
}
