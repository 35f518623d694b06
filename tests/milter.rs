//! Milter mode end to end: a real milter client (`miltr-client`) holds whole conversations with
//! a running gateway, as Postfix's smtpd would, and the modifications it gets back are applied
//! the way an MTA applies them. The tests run milter-only (`smtp.listen = ""`).

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use miltr_client::Client as MilterClient;
use miltr_common::actions::Action;
use miltr_common::commands::{Connect, Family, Header};
use miltr_common::modifications::{ModificationAction, ModificationResponse};
use miltr_common::optneg::OptNeg;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::compat::TokioAsyncReadCompatExt;
use tokio_util::sync::CancellationToken;

use mailgrip::config::{Config, Strategy};
use mailgrip::ingress::milter::OnMilterError;

/// A gateway serving only milter connections (and metrics).
struct MilterGateway {
    milter: SocketAddr,
    metrics: SocketAddr,
    shutdown: CancellationToken,
    dir: tempfile::TempDir,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for MilterGateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start_milter(tweak: impl FnOnce(&mut Config, &std::path::Path)) -> MilterGateway {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path(), None);
    cfg.smtp.listen = String::new();
    cfg.milter.listen = "127.0.0.1:0".into();
    tweak(&mut cfg, dir.path());
    cfg.validate().expect("test config must validate");
    let milter = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (milter_addr, metrics_addr) = (milter.local_addr().unwrap(), metrics.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let s = shutdown.clone();
    let listeners = mailgrip::Listeners { milter: Some(milter), metrics: Some(metrics), ..Default::default() };
    let task = tokio::spawn(async move { mailgrip::run(cfg, listeners, s).await.expect("gateway failed") });
    MilterGateway { milter: milter_addr, metrics: metrics_addr, shutdown, dir, task: Some(task) }
}

/// The `classes` strategy with every class listed: each scored message leaves an archive copy.
fn archive_everything(c: &mut Config) {
    c.policy.strategy = Strategy::Classes;
    c.archive.classes = mailgrip::classify::LABELS.iter().map(|s| s.to_string()).collect();
}

/// A message as a milter client sees it: header fields (value without the space after the colon,
/// folded lines joined by LF, as Postfix sends them) and the body with CRLF line ends.
struct Msg {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Msg {
    fn new(headers: &[(&str, &str)], body: &[u8]) -> Msg {
        Msg { headers: headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(), body: body.to_vec() }
    }

    /// Wire form, with CRLF line ends throughout.
    fn wire(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (n, v) in &self.headers {
            out.extend_from_slice(format!("{n}: {}\r\n", v.replace('\n', "\r\n")).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }

    /// Apply modifications as Postfix's cleanup does: a change with an empty value deletes the
    /// `index`-th field of that name (case-insensitive, 1-based); an insert at `index` puts the
    /// field before the `index`-th field (0 = top); an add appends.
    fn apply(&mut self, response: &ModificationResponse) {
        for m in response.modifications() {
            match m {
                ModificationAction::ChangeHeader(c) => {
                    let name = c.name().to_string();
                    let pos = self
                        .headers
                        .iter()
                        .enumerate()
                        .filter(|(_, (n, _))| n.eq_ignore_ascii_case(&name))
                        .nth(c.index() as usize - 1)
                        .map(|(i, _)| i)
                        .unwrap_or_else(|| panic!("no occurrence {} of {name}", c.index()));
                    assert!(c.value().is_empty(), "we only ever delete, got {c:?}");
                    self.headers.remove(pos);
                }
                ModificationAction::InsertHeader(h) => {
                    self.headers.insert(h.index() as usize, (h.name().to_string(), h.value().to_string()))
                }
                ModificationAction::AddHeader(h) => self.headers.push((h.name().to_string(), h.value().to_string())),
                ModificationAction::Quarantine(_) => {}
                other => panic!("unexpected modification {other:?}"),
            }
        }
    }

    fn count(&self, name: &str) -> usize {
        self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).count()
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// One full milter conversation for one message; returns the end-of-message response.
async fn converse(addr: SocketAddr, msg: &Msg) -> ModificationResponse {
    tokio::time::timeout(Duration::from_secs(60), async {
        let stream = TcpStream::connect(addr).await.unwrap().compat();
        let client = MilterClient::new(OptNeg::default());
        let mut conn = client.connect_via(stream).await.expect("option negotiation");
        conn.connect(Connect::new(b"client.example", Family::Inet, Some(40000), b"192.0.2.7")).await.unwrap();
        conn.helo(&b"client.example"[..]).await.unwrap();
        conn.mail(&b"<a@example.nl>"[..]).await.unwrap();
        conn.recipient(&b"<b@example.nl>"[..]).await.unwrap();
        conn.recipient(&b"<c@example.nl>"[..]).await.unwrap();
        conn.data().await.unwrap();
        for (n, v) in &msg.headers {
            conn.header(Header::new(n.as_bytes(), v.as_bytes())).await.unwrap();
        }
        conn.end_of_header().await.unwrap();
        // Postfix sends the body in chunks; so do we.
        for chunk in msg.body.chunks(7) {
            conn.body(chunk).await.unwrap();
        }
        let response = conn.end_of_body().await.expect("end of message");
        conn.quit().await.unwrap();
        response
    })
    .await
    .expect("milter conversation timed out")
}

fn forged() -> Msg {
    Msg::new(
        &[
            ("X-Mailgrip-Class", "functioneel"),
            ("Received", "from client.example\n\tby gw.test.invalid"),
            ("X-Mailgrip-Action", "archive"),
            ("From", "mallory@example.org"),
            ("To", "b@example.nl"),
            ("Subject", "gewoon archiveren"),
            ("x-mailgrip-scores", "functioneel=1.0;\n prive=0.0"),
            ("X-MAILGRIP-CLASS", "tweede vervalsing"),
        ],
        b"Tekst.\r\nX-Mailgrip-Class: in de body blijft staan\r\n",
    )
}

const TAGS: [&str; 6] = [
    "X-Mailgrip-Class",
    "X-Mailgrip-Scores",
    "X-Mailgrip-Model",
    "X-Mailgrip-Id",
    "X-Mailgrip-Action",
    "X-Mailgrip-Policy",
];

fn archived_emls(dir: &std::path::Path) -> Vec<PathBuf> {
    files_under(dir).into_iter().filter(|p| p.extension().is_some_and(|e| e == "eml")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_are_added_forged_fields_deleted_and_the_copy_is_archived() {
    let gw = start_milter(|c, _| archive_everything(c)).await;
    let mut msg = forged();
    let response = converse(gw.milter, &msg).await;
    assert!(matches!(response.final_action(), Action::Continue(_)), "{:?}", response.final_action());
    // Deletions come before our insertions, last occurrence of a name first.
    let kinds: Vec<_> = response
        .modifications()
        .iter()
        .map(|m| match m {
            ModificationAction::ChangeHeader(c) => format!("del {} {}", c.name(), c.index()),
            ModificationAction::InsertHeader(h) => format!("ins {} {}", h.index(), h.name()),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        kinds[..4],
        ["del X-MAILGRIP-CLASS 2", "del x-mailgrip-scores 1", "del X-Mailgrip-Action 1", "del X-Mailgrip-Class 1"],
        "{kinds:?}"
    );
    assert_eq!(kinds[4], "ins 0 X-Mailgrip-Class", "{kinds:?}");

    msg.apply(&response);
    for t in TAGS {
        assert_eq!(msg.count(t), 1, "{t} exactly once: {:?}", msg.headers);
    }
    assert_eq!(msg.headers[0].0, "X-Mailgrip-Class", "ours on top, as the content filter writes them");
    assert_ne!(msg.get("X-Mailgrip-Class"), Some("tweede vervalsing"));
    assert!(!msg.headers.iter().any(|(_, v)| v.contains("prive=0.0")), "forged folded field gone whole");
    assert_eq!(msg.get("Received"), Some("from client.example\n\tby gw.test.invalid"), "other fields untouched");
    assert_eq!(msg.get("X-Mailgrip-Action"), Some("archive"), "policy 'classes' with all classes archives");

    // The archive copy is exactly what the MTA now holds and delivers.
    let emls = archived_emls(&gw.dir.path().join("archive"));
    assert_eq!(emls.len(), 1, "{emls:?}");
    let id = msg.get("X-Mailgrip-Id").unwrap().to_string();
    assert!(emls[0].ends_with(format!("{id}.eml")), "{emls:?}");
    assert_eq!(String::from_utf8(std::fs::read(&emls[0]).unwrap()).unwrap(), String::from_utf8(msg.wire()).unwrap());
    let sidecar: serde_json::Value =
        serde_json::from_slice(&std::fs::read(emls[0].with_extension("json")).unwrap()).unwrap();
    let env = &sidecar["envelope"];
    assert_eq!(env["mail_from"], "a@example.nl", "{sidecar}");
    assert_eq!(env["rcpt_to"], serde_json::json!(["b@example.nl", "c@example.nl"]));
    assert!(env["xforward"].to_string().contains("192.0.2.7"), "client address kept: {env}");

    let m = http_get(gw.metrics, "/metrics").await.1;
    assert_eq!(metric_sum(&m, "mailgrip_messages_total", "outcome=\"accepted\""), 1.0, "{m}");
    assert_eq!(metric_sum(&m, "mailgrip_archived_total", "store=\"archive\""), 1.0);
    assert_eq!(metric_sum(&m, "mailgrip_errors_total", "error_type=\"forged_header_removed\""), 1.0);
    assert_eq!(metric_sum(&m, "mailgrip_errors_total", "stage=\"milter\""), 0.0, "{m}");
    assert!(metric_sum(&m, "mailgrip_processing_seconds_count", "") >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_connections_each_get_their_own_decision() {
    let gw = start_milter(|_, _| {}).await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let addr = gw.milter;
        tasks.push(tokio::spawn(async move {
            let mut msg = Msg::new(
                &[("From", "a@example.nl"), ("Subject", &format!("bericht {i}"))],
                format!("Hallo {i}, tot morgen.\r\n").as_bytes(),
            );
            let response = converse(addr, &msg).await;
            msg.apply(&response);
            msg
        }));
    }
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        let msg = t.await.unwrap();
        for tag in TAGS {
            assert_eq!(msg.count(tag), 1, "{tag}: {:?}", msg.headers);
        }
        ids.insert(msg.get("X-Mailgrip-Id").unwrap().to_string());
    }
    assert_eq!(ids.len(), 8, "one decision id per message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_is_quarantined_when_asked() {
    let review_all = |c: &mut Config| {
        let row = mailgrip::decide::ActionCosts { archive: 10.0, archive_restricted: 10.0, none: 10.0, review: 0.0 };
        c.policy.costs = mailgrip::decide::CostMatrix {
            functioneel: row,
            prive: row,
            niet_functioneel: row,
            personeelsvertrouwelijk: row,
            partijpolitiek: row,
        };
    };
    let msg = Msg::new(&[("From", "a@example.nl"), ("Subject", "twijfel")], b"Tekst.\r\n");
    let gw = start_milter(|c, _| {
        review_all(c);
        c.milter.quarantine_review = true;
    })
    .await;
    let response = converse(gw.milter, &msg).await;
    let quarantine: Vec<_> = response
        .modifications()
        .iter()
        .filter_map(|m| match m {
            // miltr-client keeps the NUL that ends the reason on the wire.
            ModificationAction::Quarantine(q) => Some(q.reason().trim_end_matches('\0').to_string()),
            _ => None,
        })
        .collect();
    let mut tagged = Msg::new(&[], b"");
    tagged.apply(&response);
    assert_eq!(tagged.get("X-Mailgrip-Action"), Some("review"));
    let id = tagged.get("X-Mailgrip-Id").unwrap();
    assert_eq!(quarantine, [format!("mailgrip review {id}")]);
    assert!(gw.dir.path().join("review").join(format!("{id}.eml")).exists(), "the held copy is in the review queue");

    // Off (the default): review mail is tagged but not quarantined.
    let gw = start_milter(|c, _| review_all(c)).await;
    let response = converse(gw.milter, &msg).await;
    assert!(!response.modifications().iter().any(|m| matches!(m, ModificationAction::Quarantine(_))));
}

/// The archive store cannot be written (its folder's parent is a file): `analyze` answers 451.
fn broken_archive(c: &mut Config, dir: &std::path::Path) {
    archive_everything(c);
    std::fs::write(dir.join("not-a-dir"), b"").unwrap();
    c.archive.dir = dir.join("not-a-dir/archive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_error_accept_passes_untagged_but_still_strips_forged_fields() {
    let gw = start_milter(broken_archive).await;
    let mut msg = forged();
    let response = converse(gw.milter, &msg).await;
    assert!(matches!(response.final_action(), Action::Continue(_)), "{:?}", response.final_action());
    assert!(
        response.modifications().iter().all(|m| matches!(m, ModificationAction::ChangeHeader(_))),
        "only deletions: {:?}",
        response.modifications()
    );
    msg.apply(&response);
    assert!(!msg.headers.iter().any(|(n, _)| n.to_ascii_lowercase().starts_with("x-mailgrip-")), "{:?}", msg.headers);
    assert_eq!(msg.count("Subject"), 1);
    let m = http_get(gw.metrics, "/metrics").await.1;
    assert_eq!(metric_sum(&m, "mailgrip_errors_total", "error_type=\"untagged\",stage=\"milter\""), 1.0, "{m}");
    assert_eq!(metric_sum(&m, "mailgrip_errors_total", "stage=\"archive\""), 1.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_mail_passes_untagged_with_forged_fields_deleted() {
    let gw = start_milter(|c, _| c.smtp.max_message_size = 300).await;
    let mut msg = forged();
    msg.body = "Lange tekst. ".repeat(50).into_bytes();
    let response = converse(gw.milter, &msg).await;
    assert!(matches!(response.final_action(), Action::Continue(_)), "{:?}", response.final_action());
    msg.apply(&response);
    assert!(!msg.headers.iter().any(|(n, _)| n.to_ascii_lowercase().starts_with("x-mailgrip-")), "{:?}", msg.headers);
    let m = http_get(gw.metrics, "/metrics").await.1;
    assert_eq!(metric_sum(&m, "mailgrip_errors_total", "error_type=\"too_large\",stage=\"milter\""), 1.0, "{m}");
    assert_eq!(metric_sum(&m, "mailgrip_decisions_total", ""), 0.0, "not classified");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_error_tempfail_answers_the_4xx() {
    let gw = start_milter(|c, dir| {
        broken_archive(c, dir);
        c.milter.on_error = OnMilterError::Tempfail;
    })
    .await;
    let response = converse(gw.milter, &forged()).await;
    match response.final_action() {
        Action::Replycode(r) => {
            assert_eq!(r.rcode().code(), [4, 5, 1]);
            assert_eq!(r.xcode().as_ref().map(|x| x.code()), Some([4, 3, 0]));
            assert!(r.message().starts_with("archive store unavailable"), "{}", r.message());
        }
        other => panic!("expected a 451 reply code, got {other:?}"),
    }
    assert!(response.modifications().is_empty(), "no changes to a message that is not taken");
    let m = http_get(gw.metrics, "/metrics").await.1;
    assert_eq!(metric_sum(&m, "mailgrip_errors_total", "error_type=\"tempfailed\",stage=\"milter\""), 1.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_listeners_in_one_process() {
    let sink = Sink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path(), Some(sink.addr));
    cfg.milter.listen = "127.0.0.1:0".into();
    let smtp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let milter = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (smtp_addr, milter_addr) = (smtp.local_addr().unwrap(), milter.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let s = shutdown.clone();
    let task = tokio::spawn(async move {
        let listeners = mailgrip::Listeners { smtp: Some(smtp), milter: Some(milter), ..Default::default() };
        mailgrip::run(cfg, listeners, s).await.unwrap()
    });
    let mut msg = Msg::new(&[("From", "a@example.nl"), ("Subject", "via milter")], b"Hallo.\r\n");
    msg.apply(&converse(milter_addr, &msg).await);
    assert_eq!(msg.count("X-Mailgrip-Class"), 1);
    let mut c = Client::connect(smtp_addr).await.unwrap();
    c.cmd("EHLO x").await.unwrap();
    let r = c.transaction("a@example.nl", &["b@example.nl"], b"Subject: via smtp\r\n\r\nHallo.\r\n").await;
    assert!(r.starts_with("250"), "{r}");
    assert_eq!(sink.wait_for(1).await.len(), 1);
    c.cmd("QUIT").await.unwrap();
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), task).await.expect("both listeners stop on shutdown").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_the_message_in_flight_then_closes_idle_connections() {
    let mut gw = start_milter(|_, _| {}).await;
    let client = MilterClient::new(OptNeg::default());
    // An idle connection (between messages) and one in the middle of a message.
    let mut idle = client.connect_via(TcpStream::connect(gw.milter).await.unwrap().compat()).await.unwrap();
    idle.connect(Connect::new(b"idle.example", Family::Inet, Some(40001), b"192.0.2.8")).await.unwrap();
    let mut busy = client.connect_via(TcpStream::connect(gw.milter).await.unwrap().compat()).await.unwrap();
    busy.connect(Connect::new(b"client.example", Family::Inet, Some(40000), b"192.0.2.7")).await.unwrap();
    busy.mail(&b"<a@example.nl>"[..]).await.unwrap();
    busy.recipient(&b"<b@example.nl>"[..]).await.unwrap();
    busy.data().await.unwrap();
    busy.header(Header::new(b"Subject", b"net op tijd")).await.unwrap();

    gw.shutdown.cancel();
    // The message in flight is finished and tagged.
    busy.end_of_header().await.unwrap();
    busy.body(&b"Hallo.\r\n"[..]).await.unwrap();
    let response = tokio::time::timeout(Duration::from_secs(30), busy.end_of_body()).await.unwrap().unwrap();
    let mut msg = Msg::new(&[("Subject", "net op tijd")], b"Hallo.\r\n");
    msg.apply(&response);
    assert_eq!(msg.count("X-Mailgrip-Class"), 1, "{:?}", msg.headers);
    // Then both connections are closed and run returns, well within the grace period.
    let task = gw.task.take().unwrap();
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("run returns once no message is in flight")
        .unwrap();
    assert!(idle.helo(&b"again"[..]).await.is_err(), "the idle connection was closed");
    assert!(TcpStream::connect(gw.milter).await.is_err(), "the listener is closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_is_closed_after_the_session_timeout() {
    let gw = start_milter(|c, _| c.smtp.session_timeout_secs = 1).await;
    let client = MilterClient::new(OptNeg::default());
    let mut conn = client.connect_via(TcpStream::connect(gw.milter).await.unwrap().compat()).await.unwrap();
    conn.connect(Connect::new(b"slow.example", Family::Inet, Some(40002), b"192.0.2.9")).await.unwrap();
    // Commands keep being answered until the connection is closed.
    tokio::time::timeout(Duration::from_secs(30), async {
        while conn.helo(&b"slow.example"[..]).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("closed after smtp.session_timeout_secs");
    let m = http_get(gw.metrics, "/metrics").await.1;
    assert_eq!(metric_sum(&m, "mailgrip_errors_total", "error_type=\"timeout\",stage=\"milter\""), 1.0, "{m}");
}

#[test]
fn config_needs_some_listener() {
    let err = Config::load_with_env(None, [("MAILGRIP__SMTP__LISTEN".to_string(), String::new())]).unwrap_err();
    assert!(err.to_string().starts_with("smtp.listen:"), "{err}");
    let cfg = Config::load_with_env(
        None,
        [
            ("MAILGRIP__SMTP__LISTEN".to_string(), String::new()),
            ("MAILGRIP__MILTER__LISTEN".to_string(), "127.0.0.1:8891".to_string()),
        ],
    )
    .unwrap();
    assert_eq!(cfg.smtp_listen(), None);
    assert_eq!(cfg.milter_listen(), Some("127.0.0.1:8891".parse().unwrap()));
    let err =
        Config::load_with_env(None, [("MAILGRIP__MILTER__LISTEN".to_string(), "nonsense".to_string())]).unwrap_err();
    assert!(err.to_string().starts_with("milter.listen:"), "{err}");
}
