//! The SMTP archive sink end to end: archive copies reach the archiver (a [`Sink`]) through the
//! durable outbox, across an archiver outage and a restart of mailgrip; a 5xx archiver leaves the
//! copy in `failed/`; only the configured actions are sent. Waits are polls with generous
//! bounds, never timed assertions.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use common::*;
use mailgrip::config::{Action, Config};

const JOURNAL: &str = "journal@archief.example.nl";

/// A daemon on a directory the test owns, so a second one can start on the same state.
struct Daemon {
    smtp: SocketAddr,
    metrics: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Daemon {
    async fn start(dir: &Path, next_hop: SocketAddr, tweak: impl FnOnce(&mut Config)) -> Daemon {
        let mut cfg = test_config(dir, Some(next_hop));
        tweak(&mut cfg);
        let common::Running { smtp, metrics, shutdown, task } = common::serve(cfg, None).await;
        Daemon { smtp, metrics, shutdown, task }
    }

    /// Stop and wait until every task (the outbox sender included) has ended.
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(60), self.task).await.expect("daemon did not stop").unwrap();
    }

    async fn metrics_text(&self) -> String {
        http_get(self.metrics, "/metrics").await.1
    }

    async fn send(&self, to: &[&str], fixture_name: &str) -> String {
        let mut c = Client::connect(self.smtp).await.unwrap();
        c.cmd("EHLO x").await.unwrap();
        let r = c.transaction("a@example.nl", to, &fixture(fixture_name)).await;
        let _ = c.cmd("QUIT").await;
        r
    }
}

/// Every class's cheapest action is `action`.
fn force(c: &mut Config, action: Action) {
    for row in c.policy.costs.rows_mut() {
        *row = mailgrip::decide::ActionCosts { archive: 10.0, archive_restricted: 10.0, none: 10.0, review: 10.0 };
        match action {
            Action::Archive => row.archive = 0.0,
            Action::ArchiveRestricted => row.archive_restricted = 0.0,
            Action::None => row.none = 0.0,
            Action::Review => row.review = 0.0,
        }
    }
}

fn outbox_dir(dir: &Path) -> PathBuf {
    dir.join("archive-outbox")
}

/// The SMTP archive sink towards `archiver`, with one-second retries.
fn sink_to(c: &mut Config, dir: &Path, archiver: SocketAddr) {
    let s = &mut c.archive.smtp;
    s.enabled = true;
    s.next_hop = archiver.to_string();
    s.rcpt_to = vec![JOURNAL.into()];
    s.outbox_dir = outbox_dir(dir);
    s.retry_initial_secs = 1;
    s.retry_max_secs = 1;
}

/// An archiver that is down: it greets with 421 and hangs up until its mode changes. (A port
/// reserved and bound later could be taken meanwhile by any outgoing connection.)
async fn archiver_down() -> Sink {
    let archiver = Sink::start().await;
    archiver.set_mode(SinkMode::Down);
    archiver
}

/// Entry folders waiting in the outbox.
fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(outbox_dir(dir)).map(|rd| rd.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    v.retain(|p| p.is_dir() && !p.ends_with("failed") && !p.ends_with(".tmp"));
    v
}

fn failed(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(outbox_dir(dir).join("failed"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

fn state(entry: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(entry.join("state.json")).unwrap()).unwrap()
}

fn archived_emls(root: &Path) -> Vec<PathBuf> {
    files_under(root).into_iter().filter(|p| p.extension().is_some_and(|e| e == "eml")).collect()
}

/// Poll `cond` every 50 ms for up to 60 s; panic naming `what` if it never holds.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..1200 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// The archiver's copy: the original envelope as fields, then the archived message unchanged.
fn assert_journal_copy(got: &Received, archived: &[u8], rcpts: &[&str]) {
    assert_eq!(got.mail_from, "", "null sender towards the archiver");
    assert_eq!(got.rcpt_to, vec![JOURNAL.to_string()]);
    let mut head = "X-Mailgrip-Envelope-From: <a@example.nl>\r\n".to_string();
    for r in rcpts {
        head.push_str(&format!("X-Mailgrip-Envelope-To: <{r}>\r\n"));
    }
    assert!(got.data.starts_with(head.as_bytes()), "{}", String::from_utf8_lossy(&got.data[..300.min(got.data.len())]));
    assert_eq!(&got.data[head.len()..], archived, "the archived bytes follow the envelope fields unchanged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archiver_down_copy_waits_in_the_outbox_then_arrives() {
    let next = Sink::start().await;
    let archiver = archiver_down().await;
    let archiver_addr = archiver.addr;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let gw = Daemon::start(dir, next.addr, |c| {
        force(c, Action::Archive);
        sink_to(c, dir, archiver_addr);
    })
    .await;

    // The archiver being down changes nothing for the mail: relayed and archived.
    let r = gw.send(&["b@example.nl", "bcc@example.nl"], "latin1.eml").await;
    assert!(r.starts_with("250") && r.ends_with(" archive"), "{r}");
    assert_eq!(next.wait_for(1).await.len(), 1, "relayed");
    let archived = archived_emls(&dir.join("archive"));
    assert_eq!(archived.len(), 1);
    let archived = std::fs::read(&archived[0]).unwrap();

    // The copy waits in the outbox, committed with the archive copy (before the 250).
    let waiting = entries(dir);
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    assert_eq!(std::fs::read(waiting[0].join("message.eml")).unwrap(), archived);
    let s = state(&waiting[0]);
    assert_eq!(s["action"], "archive");
    assert_eq!(s["rcpt_to"], serde_json::json!(["b@example.nl", "bcc@example.nl"]));
    // It was tried, failed, and the failure is on record in the entry (and in the metrics).
    until("a failed attempt recorded in state.json", || state(&waiting[0])["attempts"].as_u64().unwrap_or(0) >= 1)
        .await;
    let m = gw.metrics_text().await;
    assert!(metric_sum(&m, "mailgrip_archive_outbox_failures_total", "kind=\"deferred\"") >= 1.0, "{m}");
    assert_eq!(metric_sum(&m, "mailgrip_archive_outbox_depth", ""), 1.0);
    assert_eq!(metric_sum(&m, "mailgrip_archive_outbox_sent_total", ""), 0.0);

    // The archiver comes up: the copy arrives, and the entry is gone.
    archiver.set_mode(SinkMode::Accept);
    until("the copy at the archiver", || !archiver.messages().is_empty()).await;
    until("an empty outbox", || entries(dir).is_empty()).await;
    let got = archiver.messages();
    assert_eq!(got.len(), 1);
    assert_journal_copy(&got[0], &archived, &["b@example.nl", "bcc@example.nl"]);
    until("sent_total = 1", || metric_now(gw.metrics, "mailgrip_archive_outbox_sent_total") == 1.0).await;
    assert!(failed(dir).is_empty());
    gw.stop().await;
}

/// A metric, read synchronously (for use inside [`until`]).
fn metric_now(metrics: SocketAddr, name: &str) -> f64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(metrics).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    metric_sum(&buf, name, "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_copy_survives_a_restart_and_is_delivered_once() {
    let next = Sink::start().await;
    let archiver = archiver_down().await;
    let archiver_addr = archiver.addr;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let tweak = |c: &mut Config| {
        force(c, Action::Archive);
        sink_to(c, dir, archiver_addr);
    };
    let first = Daemon::start(dir, next.addr, tweak).await;
    let r = first.send(&["b@example.nl"], "multipart-alternative.eml").await;
    assert!(r.starts_with("250"), "{r}");
    let waiting = entries(dir);
    assert_eq!(waiting.len(), 1);
    until("a failed attempt recorded", || state(&waiting[0])["attempts"].as_u64().unwrap_or(0) >= 1).await;
    first.stop().await;
    assert_eq!(entries(dir), waiting, "the entry outlives the daemon");

    // The archiver is back, and a new daemon starts on the same folders.
    archiver.set_mode(SinkMode::Accept);
    let second = Daemon::start(dir, next.addr, tweak).await;
    until("the copy at the archiver", || !archiver.messages().is_empty()).await;
    until("an empty outbox", || entries(dir).is_empty()).await;
    second.stop().await;
    let got = archiver.messages();
    assert_eq!(got.len(), 1, "delivered once");
    let archived = archived_emls(&dir.join("archive"));
    assert_eq!(archived.len(), 1);
    assert_journal_copy(&got[0], &std::fs::read(&archived[0]).unwrap(), &["b@example.nl"]);
    assert_eq!(next.messages().len(), 1, "the mail itself was relayed once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archiver_5xx_moves_the_copy_to_failed_and_keeps_it() {
    let next = Sink::start().await;
    let archiver = Sink::start().await;
    archiver.set_mode(SinkMode::DataReply(554));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let gw = Daemon::start(dir, next.addr, |c| {
        force(c, Action::Archive);
        sink_to(c, dir, archiver.addr);
    })
    .await;
    let r = gw.send(&["b@example.nl"], "8bit-utf8.eml").await;
    assert!(r.starts_with("250"), "a refusing archiver never affects the mail: {r}");
    until("the copy in failed/", || failed(dir).len() == 1).await;
    let kept = &failed(dir)[0];
    let archived = archived_emls(&dir.join("archive"));
    assert_eq!(archived.len(), 1, "the archive copy stays");
    assert_eq!(std::fs::read(kept.join("message.eml")).unwrap(), std::fs::read(&archived[0]).unwrap());
    let reason = std::fs::read_to_string(kept.join("reason.txt")).unwrap();
    assert!(reason.contains("refused") && reason.contains("554"), "{reason}");
    assert!(kept.join("state.json").is_file());
    assert!(entries(dir).is_empty(), "not retried");
    // The gauges follow at the end of the sender's pass.
    until("the failed gauge at 1", || metric_now(gw.metrics, "mailgrip_archive_outbox_failed") == 1.0).await;
    let m = gw.metrics_text().await;
    assert_eq!(metric_sum(&m, "mailgrip_archive_outbox_failures_total", "kind=\"refused\""), 1.0, "{m}");
    assert_eq!(metric_sum(&m, "mailgrip_archive_outbox_depth", ""), 0.0, "{m}");
    assert_eq!(metric_sum(&m, "mailgrip_archive_outbox_sent_total", ""), 0.0);
    gw.stop().await;
    assert!(archiver.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_configured_actions_are_sent() {
    let next = Sink::start().await;
    let archiver = Sink::start().await;
    // (action decided, archive.smtp.actions, sent?)
    let cases: [(Action, &[&str], bool); 5] = [
        (Action::Review, &["archive", "archive-restricted"], false),
        (Action::None, &["archive", "archive-restricted"], false),
        (Action::ArchiveRestricted, &["archive"], false),
        (Action::Archive, &["archive-restricted"], false),
        (Action::ArchiveRestricted, &["archive-restricted"], true),
    ];
    for (action, actions, sent) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let gw = Daemon::start(dir, next.addr, |c| {
            force(c, action);
            sink_to(c, dir, archiver.addr);
            c.archive.smtp.actions = actions.iter().map(|a| a.to_string()).collect();
        })
        .await;
        let r = gw.send(&["b@example.nl"], "latin1.eml").await;
        assert!(r.starts_with("250") && r.ends_with(action.as_str()), "{r}");
        if sent {
            until("the copy at the archiver", || archiver.messages().len() == 1).await;
            until("an empty outbox", || entries(dir).is_empty()).await;
        } else {
            // Entries are committed before the 250: none now means none ever.
            assert!(entries(dir).is_empty(), "{action:?} with actions {actions:?} made an outbox entry");
            assert_eq!(std::fs::read_dir(outbox_dir(dir).join(".tmp")).unwrap().count(), 0);
        }
        gw.stop().await;
    }
    let got = archiver.messages();
    assert_eq!(got.len(), 1);
    assert!(String::from_utf8_lossy(&got[0].data).contains("X-Mailgrip-Action: archive-restricted\r\n"));
    assert_eq!(next.messages().len(), cases.len(), "every mail relayed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reviewer_archiving_a_held_copy_puts_it_in_the_outbox() {
    let next = Sink::start().await;
    let archiver = archiver_down().await;
    let archiver_addr = archiver.addr;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let gw = Daemon::start(dir, next.addr, |c| {
        force(c, Action::Review);
        sink_to(c, dir, archiver_addr);
    })
    .await;
    let r = gw.send(&["b@example.nl", "c@example.nl"], "latin1.eml").await;
    assert!(r.starts_with("250") && r.ends_with("review"), "{r}");
    gw.stop().await;
    assert!(entries(dir).is_empty(), "held for review: not sent yet");
    let id = r.split_whitespace().nth(3).unwrap().to_string();
    // The CLI, configured by environment like the daemon (lists comma-separated).
    let out = Command::new(env!("CARGO_BIN_EXE_mailgrip"))
        .args(["review", "decide", &id, "--action", "archive", "--reviewer", "alice"])
        .env("MAILGRIP__REVIEW__DIR", dir.join("review"))
        .env("MAILGRIP__ARCHIVE__DIR", dir.join("archive"))
        .env("MAILGRIP__ARCHIVE__RESTRICTED_DIR", dir.join("archive-restricted"))
        .env("MAILGRIP__AUDIT__PATH", dir.join("audit/audit.jsonl"))
        .env("MAILGRIP__AUDIT__REVIEW_PATH", dir.join("audit/review.jsonl"))
        .env("MAILGRIP__MODEL__DIR", repo().join("tests/fixtures/tiny-model"))
        .env("MAILGRIP__ARCHIVE__SMTP__ENABLED", "true")
        .env("MAILGRIP__ARCHIVE__SMTP__NEXT_HOP", archiver_addr.to_string())
        .env("MAILGRIP__ARCHIVE__SMTP__RCPT_TO", format!("{JOURNAL},second@archief.example.nl"))
        .env("MAILGRIP__ARCHIVE__SMTP__OUTBOX_DIR", outbox_dir(dir))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let waiting = entries(dir);
    assert_eq!(waiting.len(), 1);
    assert!(waiting[0].ends_with(&id));
    let s = state(&waiting[0]);
    assert_eq!(s["action"], "archive");
    assert_eq!(s["mail_from"], "a@example.nl");
    assert_eq!(s["rcpt_to"], serde_json::json!(["b@example.nl", "c@example.nl"]));
    let archived = archived_emls(&dir.join("archive"));
    assert_eq!(archived.len(), 1);
    assert_eq!(std::fs::read(waiting[0].join("message.eml")).unwrap(), std::fs::read(&archived[0]).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_older_than_max_age_is_given_up_and_kept() {
    let next = Sink::start().await;
    let archiver = Sink::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // An entry left by an earlier run, six days old (max_age_hours = 120).
    let entry = outbox_dir(dir).join("0190aaaabbbbccccddddeeeeffff0000");
    std::fs::create_dir_all(&entry).unwrap();
    std::fs::write(entry.join("message.eml"), fixture("latin1.eml")).unwrap();
    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() - 6 * 86400;
    let state = serde_json::json!({
        "id": "0190aaaabbbbccccddddeeeeffff0000", "action": "archive", "mail_from": "a@example.nl",
        "rcpt_to": ["b@example.nl"], "body_8bitmime": false, "smtputf8": false, "created": created,
        "attempts": 9, "next_attempt": created + 3600, "last_error": "next hop unreachable: refused"
    });
    std::fs::write(entry.join("state.json"), serde_json::to_vec(&state).unwrap()).unwrap();
    let gw = Daemon::start(dir, next.addr, |c| sink_to(c, dir, archiver.addr)).await;
    until("the expired copy in failed/", || failed(dir).len() == 1).await;
    let kept = &failed(dir)[0];
    assert_eq!(std::fs::read(kept.join("message.eml")).unwrap(), fixture("latin1.eml"));
    let reason = std::fs::read_to_string(kept.join("reason.txt")).unwrap();
    assert!(reason.contains("expired") && reason.contains("max_age_hours = 120"), "{reason}");
    assert!(entries(dir).is_empty());
    let m = gw.metrics_text().await;
    assert_eq!(metric_sum(&m, "mailgrip_archive_outbox_failures_total", "kind=\"expired\""), 1.0, "{m}");
    gw.stop().await;
    assert!(archiver.messages().is_empty(), "never sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_the_next_hop_refuses_leaves_no_outbox_entry() {
    let next = Sink::start().await;
    next.set_mode(SinkMode::DataReply(554));
    let archiver = Sink::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let gw = Daemon::start(dir, next.addr, |c| {
        force(c, Action::Archive);
        sink_to(c, dir, archiver.addr);
    })
    .await;
    let r = gw.send(&["b@example.nl"], "latin1.eml").await;
    assert!(r.starts_with("554"), "{r}");
    // Not delivered, so not archived, so not journaled: the staged entry went with the copy.
    assert!(archived_emls(&dir.join("archive")).is_empty());
    assert!(entries(dir).is_empty());
    assert_eq!(std::fs::read_dir(outbox_dir(dir).join(".tmp")).unwrap().count(), 0);
    gw.stop().await;
    assert!(archiver.messages().is_empty());
}
