//! End-to-end tests of `serve`: real SMTP in, a real SMTP listener as next hop, real fixtures.

mod common;

use std::time::Duration;

use common::*;
use sha2::{Digest, Sha256};

const FIXTURES: &[&str] = &[
    "multipart-alternative.eml",
    "html-only.eml",
    "latin1.eml",
    "windows-1252.eml",
    "8bit-utf8.eml",
    "smtputf8.eml",
    "attachments.eml",
    "empty-body.eml",
    "broken-mime.eml",
];

/// The `classes` strategy with every class listed: each scored message must leave a copy.
fn archive_everything(c: &mut mailgrip::config::Config) {
    c.policy.strategy = mailgrip::config::Strategy::Classes;
    c.archive.classes = mailgrip::classify::LABELS.iter().map(|s| s.to_string()).collect();
}

const TAGS: [&str; 6] = [
    "X-Mailgrip-Class: ",
    "X-Mailgrip-Scores: ",
    "X-Mailgrip-Model: ",
    "X-Mailgrip-Id: ",
    "X-Mailgrip-Action: ",
    "X-Mailgrip-Policy: ",
];

fn assert_tagged_once(data: &[u8]) -> Vec<String> {
    let (tags, _) = split_tags(data);
    let text = String::from_utf8_lossy(data);
    for t in TAGS {
        assert_eq!(text.matches(t).count(), 1, "{t} must appear exactly once in:\n{}", &text[..text.len().min(600)]);
        assert!(tags.iter().any(|l| l.starts_with(t)), "{t} must be among the prepended headers: {tags:?}");
    }
    tags
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_arrives_tagged_once_with_original_bytes_and_is_archived() {
    let sink = Sink::start().await;
    // Archive every class, so each scored message must leave an archive copy.
    let gw = start(Some(sink.addr), |c| {
        archive_everything(c);
    })
    .await;
    let mut c = Client::connect(gw.smtp).await.unwrap();
    assert!(c.greeting.starts_with("220 "), "{}", c.greeting);
    let ehlo = c.cmd("EHLO postfix.test").await.unwrap();
    for ext in ["PIPELINING", "8BITMIME", "SMTPUTF8", "SIZE", "ENHANCEDSTATUSCODES", "CHUNKING"] {
        assert!(ehlo.contains(ext), "EHLO must advertise {ext}: {ehlo}");
    }
    for name in FIXTURES {
        let raw = fixture(name);
        let utf8 = *name == "smtputf8.eml";
        let from = if utf8 { "zoë@voorbeeld.nl" } else { "sender@example.nl" };
        let params = if utf8 { " BODY=8BITMIME SMTPUTF8" } else { " BODY=8BITMIME" };
        let r = c.cmd(&format!("MAIL FROM:<{from}>{params}")).await.unwrap();
        assert!(r.starts_with("250"), "{name}: {r}");
        let rcpt = if utf8 { "jürgen@bürgerbüro.example" } else { "rcpt@example.nl" };
        assert!(c.cmd(&format!("RCPT TO:<{rcpt}>")).await.unwrap().starts_with("250"));
        let r = c.data(&raw).await;
        assert!(r.starts_with("250 2.0.0"), "{name}: {r}");
    }
    let got = sink.wait_for(FIXTURES.len()).await;
    assert_eq!(got.len(), FIXTURES.len(), "every message must reach the next hop");
    let mut classified = 0;
    for (name, msg) in FIXTURES.iter().zip(&got) {
        let tags = assert_tagged_once(&msg.data);
        let (_, rest) = split_tags(&msg.data);
        assert_eq!(rest, fixture(name), "{name}: original bytes must follow the added headers unchanged");
        if *name == "smtputf8.eml" {
            assert_eq!(msg.mail_from, "zoë@voorbeeld.nl");
            assert_eq!(msg.rcpt_to, vec!["jürgen@bürgerbüro.example"]);
        }
        let class = tags[0].trim_start_matches("X-Mailgrip-Class: ");
        assert!(mailgrip::classify::LABELS.contains(&class), "{name}: class {class}");
        classified += 1;
    }
    // The envelope flags survived the relay.
    let mails = sink.mail_lines.lock().unwrap().clone();
    assert!(mails.iter().all(|l| l.contains("BODY=8BITMIME")), "{mails:?}");
    assert!(mails.iter().any(|l| l.contains("SMTPUTF8")), "{mails:?}");

    // Archive: one .eml + .json per classified message, the .eml identical to what was relayed.
    let mut emls = Vec::new();
    for entry in files_under(&gw.archive_dir()) {
        if entry.extension().is_some_and(|e| e == "eml")
            && !entry.strip_prefix(gw.archive_dir()).unwrap().starts_with(".tmp")
        {
            emls.push(entry);
        }
    }
    assert_eq!(emls.len(), classified, "archive copies: {emls:?}");
    for eml in &emls {
        let bytes = std::fs::read(eml).unwrap();
        assert!(got.iter().any(|m| m.data == bytes), "archive copy must equal the relayed message");
        let sidecar: serde_json::Value =
            serde_json::from_slice(&std::fs::read(eml.with_extension("json")).unwrap()).unwrap();
        assert_eq!(sidecar["sha256"], hex::encode(Sha256::digest(&bytes)));
        assert_eq!(sidecar["model"], "tiny-test");
        assert_eq!(sidecar["model_version"], "0.0.1");
        assert_eq!(sidecar["envelope"]["rcpt_to"].as_array().unwrap().len(), 1);
        assert_eq!(sidecar["scores"].as_object().unwrap().len(), 5);
        let id = eml.file_stem().unwrap().to_string_lossy().to_string();
        assert_eq!(sidecar["id"], id.as_str());
        assert!(String::from_utf8_lossy(&bytes).contains(&format!("X-Mailgrip-Id: {id}\r\n")));
    }

    // The metrics moved.
    let m = gw.metrics_text().await;
    assert_eq!(metric_sum(&m, "mailgrip_messages_total", "outcome=\"relayed\""), FIXTURES.len() as f64, "{m}");
    assert_eq!(metric_sum(&m, "mailgrip_archived_total", ""), classified as f64);
    assert!(metric_sum(&m, "mailgrip_classification_seconds_count", "") >= classified as f64);
    assert!(metric_sum(&m, "mailgrip_inference_seconds_count", "") >= 1.0);
    assert!(metric_sum(&m, "mailgrip_relay_seconds_count", "mode=\"smtp\"") >= FIXTURES.len() as f64);
    assert!(metric_sum(&m, "mailgrip_batch_size_count", "") >= 1.0);
    assert_eq!(metric_sum(&m, "mailgrip_model_info", "name=\"tiny-test\""), 1.0);
    assert!(m.contains("mailgrip_sessions_in_flight 1"), "this session is still open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_headers_are_removed() {
    let sink = Sink::start().await;
    let gw = start(Some(sink.addr), |_| {}).await;
    let mut c = Client::connect(gw.smtp).await.unwrap();
    c.cmd("EHLO x").await.unwrap();
    let r = c.transaction("mallory@example.org", &["b@example.nl"], &fixture("forged-tags.eml")).await;
    assert!(r.starts_with("250"), "{r}");
    let got = sink.wait_for(1).await;
    assert_tagged_once(&got[0].data);
    let text = String::from_utf8(got[0].data.clone()).unwrap();
    assert!(!text.contains("functioneel=1.0"), "forged scores must be gone: {text}");
    assert!(!text.contains("prive=0.0\r\n"), "continuation of the forged field must be gone");
    assert!(
        text.contains("From: mallory@example.org\r\nTo: b@example.nl\r\nSubject: gewoon archiveren\r\n\r\nTekst.\r\n")
    );
    let m = gw.metrics_text().await;
    assert_eq!(metric_sum(&m, "mailgrip_errors_total", "error_type=\"forged_header_removed\""), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_transactions_multiple_recipients_rset_and_pipelining() {
    let sink = Sink::start().await;
    let gw = start(Some(sink.addr), |_| {}).await;
    let mut c = Client::connect(gw.smtp).await.unwrap();
    c.cmd("EHLO x").await.unwrap();
    let msg = fixture("multipart-alternative.eml");
    let r = c.transaction("a@example.nl", &["one@example.nl", "two@example.nl", "three@example.nl"], &msg).await;
    assert!(r.starts_with("250"), "{r}");
    // An aborted transaction leaves nothing behind.
    assert!(c.cmd("MAIL FROM:<x@example.nl>").await.unwrap().starts_with("250"));
    assert!(c.cmd("RCPT TO:<never@example.nl>").await.unwrap().starts_with("250"));
    assert!(c.cmd("RSET").await.unwrap().starts_with("250"));
    // A pipelined transaction: all commands in one write, replies in order.
    c.send(b"MAIL FROM:<>\r\nRCPT TO:<four@example.nl>\r\nDATA\r\n").await;
    assert!(c.reply().await.unwrap().starts_with("250"));
    assert!(c.reply().await.unwrap().starts_with("250"));
    assert!(c.reply().await.unwrap().starts_with("354"));
    c.send(&dot_stuff(&fixture("latin1.eml"))).await;
    assert!(c.reply().await.unwrap().starts_with("250"));
    assert!(c.cmd("QUIT").await.unwrap().starts_with("221"));
    let got = sink.wait_for(2).await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].rcpt_to, vec!["one@example.nl", "two@example.nl", "three@example.nl"]);
    assert_eq!(got[1].mail_from, "", "null sender preserved");
    assert_eq!(got[1].rcpt_to, vec!["four@example.nl"]);
    assert!(got.iter().all(|m| !m.rcpt_to.contains(&"never@example.nl".to_string())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bdat_with_pipelined_chunks() {
    let sink = Sink::start().await;
    let gw = start(Some(sink.addr), |_| {}).await;
    let mut c = Client::connect(gw.smtp).await.unwrap();
    c.cmd("EHLO x").await.unwrap();
    let msg = fixture("attachments.eml");
    let (a, b) = msg.split_at(100);
    let mut batch = b"MAIL FROM:<a@example.nl> BODY=8BITMIME\r\nRCPT TO:<b@example.nl>\r\n".to_vec();
    batch.extend_from_slice(format!("BDAT {}\r\n", a.len()).as_bytes());
    batch.extend_from_slice(a);
    batch.extend_from_slice(format!("BDAT {} LAST\r\n", b.len()).as_bytes());
    batch.extend_from_slice(b);
    batch.extend_from_slice(b"NOOP\r\n");
    c.send(&batch).await;
    for expect in ["250", "250", "250 2.0.0 100 octets", "250 2.0.0 Ok", "250"] {
        let r = c.reply().await.unwrap();
        assert!(r.starts_with(expect), "expected {expect}, got {r}");
    }
    let got = sink.wait_for(1).await;
    let (_, rest) = split_tags(&got[0].data);
    assert_eq!(rest, msg, "BDAT body must arrive byte for byte");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_megabyte_message_arrives_intact() {
    let sink = Sink::start().await;
    let gw = start(Some(sink.addr), |_| {}).await;
    let mut msg =
        b"From: a@example.nl\r\nTo: b@example.nl\r\nSubject: groot bestand\r\nContent-Type: text/plain\r\n\r\n"
            .to_vec();
    let line =
        b"Dit is een lange regel tekst in een heel groot bericht, met een punt aan het eind.\r\n.begint met punt\r\n";
    while msg.len() < 20 * 1024 * 1024 {
        msg.extend_from_slice(line);
    }
    let mut c = Client::connect(gw.smtp).await.unwrap();
    c.cmd("EHLO x").await.unwrap();
    let r = c.transaction("a@example.nl", &["b@example.nl"], &msg).await;
    assert!(r.starts_with("250"), "{r}");
    let got = sink.wait_for(1).await;
    let (_, rest) = split_tags(&got[0].data);
    assert_eq!(Sha256::digest(&rest), Sha256::digest(&msg));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_relay_attempt_from_disallowed_network_is_refused() {
    let sink = Sink::start().await;
    let gw = start(Some(sink.addr), |c| c.smtp.allowed_clients = vec!["192.0.2.0/24".into()]).await;
    let mut c = Client::connect(gw.smtp).await.unwrap();
    assert!(c.greeting.starts_with("554 5.7.1"), "{}", c.greeting);
    // Whatever the client tries next goes nowhere.
    let _ = c.cmd("EHLO x").await;
    let _ = c.cmd("MAIL FROM:<spam@example.com>").await;
    let _ = c.cmd("RCPT TO:<victim@elsewhere.example>").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(sink.messages().is_empty());
    let m = gw.metrics_text().await;
    assert!(metric_sum(&m, "mailgrip_smtp_connections_total", "result=\"denied\"") >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_hop_down_tempfails_and_nothing_is_lost() {
    // A port with nothing listening.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let gw = start(Some(dead), archive_everything).await;
    let mut c = Client::connect(gw.smtp).await.unwrap();
    c.cmd("EHLO x").await.unwrap();
    let r = c.transaction("a@example.nl", &["b@example.nl"], &fixture("latin1.eml")).await;
    assert!(r.starts_with("451 4.4.1"), "next hop down must tempfail, got {r}");
    // No archive copy of a message that was not delivered.
    assert!(files_under(&gw.archive_dir()).iter().all(|p| p.extension().is_none_or(|e| e != "eml")));
    let (status, body) = http_get(gw.metrics, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    let m = gw.metrics_text().await;
    assert_eq!(metric_sum(&m, "mailgrip_messages_total", "outcome=\"tempfailed\""), 1.0);
    assert!(metric_sum(&m, "mailgrip_errors_total", "stage=\"relay\"") >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_hop_replies_are_propagated() {
    let sink = Sink::start().await;
    let gw = start(Some(sink.addr), |_| {}).await;
    let (status, _) = http_get(gw.metrics, "/readyz").await;
    assert_eq!(status, 200);
    assert_eq!(http_get(gw.metrics, "/healthz").await.0, 200);
    let mut c = Client::connect(gw.smtp).await.unwrap();
    c.cmd("EHLO x").await.unwrap();
    sink.set_mode(SinkMode::DataReply(452));
    let r = c.transaction("a@example.nl", &["b@example.nl"], &fixture("latin1.eml")).await;
    assert!(r.starts_with("452"), "a 4xx of the next hop stays a 4xx: {r}");
    sink.set_mode(SinkMode::RcptReply(550));
    let r = c.transaction("a@example.nl", &["b@example.nl"], &fixture("latin1.eml")).await;
    assert!(r.starts_with("550"), "a permanent refusal is propagated: {r}");
    sink.set_mode(SinkMode::Accept);
    let r = c.transaction("a@example.nl", &["b@example.nl"], &fixture("latin1.eml")).await;
    assert!(r.starts_with("250"), "the pooled connection recovered: {r}");
    assert_eq!(sink.wait_for(1).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_and_recipient_caps() {
    let sink = Sink::start().await;
    let gw = start(Some(sink.addr), |c| {
        c.smtp.max_message_size = 2000;
        c.smtp.max_recipients = 2;
    })
    .await;
    let mut c = Client::connect(gw.smtp).await.unwrap();
    let ehlo = c.cmd("EHLO x").await.unwrap();
    assert!(ehlo.contains("SIZE 2000"), "{ehlo}");
    assert!(c.cmd("MAIL FROM:<a@example.nl> SIZE=5000").await.unwrap().starts_with("552 5.3.4"));
    assert!(c.cmd("MAIL FROM:<a@example.nl>").await.unwrap().starts_with("250"));
    assert!(c.cmd("RCPT TO:<1@example.nl>").await.unwrap().starts_with("250"));
    assert!(c.cmd("RCPT TO:<2@example.nl>").await.unwrap().starts_with("250"));
    assert!(c.cmd("RCPT TO:<3@example.nl>").await.unwrap().starts_with("452 4.5.3"));
    let big = vec![b'x'; 5000];
    let r = c.data(&big).await;
    assert!(r.starts_with("552 5.3.4"), "{r}");
    // The session is still in sync and usable.
    let r = c.transaction("a@example.nl", &["b@example.nl"], b"Subject: klein\r\n\r\nkort\r\n").await;
    assert!(r.starts_with("250"), "{r}");
    let got = sink.wait_for(1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].rcpt_to, vec!["b@example.nl"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cap_answers_421() {
    let sink = Sink::start().await;
    let gw = start(Some(sink.addr), |c| c.smtp.max_connections = 2).await;
    // start() used and closed one probe session; give it a moment to release its permit.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _a = Client::connect(gw.smtp).await.unwrap();
    let _b = Client::connect(gw.smtp).await.unwrap();
    let c = Client::connect(gw.smtp).await.unwrap();
    assert!(c.greeting.starts_with("421 4.3.2"), "{}", c.greeting);
    drop(_a);
    // A freed slot is usable again.
    let mut ok = false;
    for _ in 0..100 {
        let c = Client::connect(gw.smtp).await.unwrap();
        if c.greeting.starts_with("220") {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "a slot must free up when a session ends");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_client_is_timed_out() {
    let sink = Sink::start().await;
    let gw = start(Some(sink.addr), |c| c.smtp.command_timeout_secs = 1).await;
    let mut c = Client::connect(gw.smtp).await.unwrap();
    c.cmd("EHLO x").await.unwrap();
    c.send(b"MAIL FROM:<a@exa").await; // half a command, then silence
    let r = c.reply().await.unwrap();
    assert!(r.starts_with("421 4.4.2"), "{r}");
    assert!(c.reply().await.is_err(), "connection closed after the timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_order_is_enforced() {
    let sink = Sink::start().await;
    let gw = start(Some(sink.addr), |_| {}).await;
    let mut c = Client::connect(gw.smtp).await.unwrap();
    assert!(c.cmd("MAIL FROM:<a@example.nl>").await.unwrap().starts_with("503"));
    c.cmd("EHLO x").await.unwrap();
    assert!(c.cmd("RCPT TO:<a@example.nl>").await.unwrap().starts_with("503"));
    assert!(c.cmd("DATA").await.unwrap().starts_with("503"));
    assert!(c.cmd("BOGUS").await.unwrap().starts_with("500"));
    assert!(c.cmd("MAIL FROM:<a@example.nl>").await.unwrap().starts_with("250"));
    assert!(c.cmd("MAIL FROM:<a@example.nl>").await.unwrap().starts_with("503"));
    assert!(c.cmd("DATA").await.unwrap().starts_with("554"), "DATA without recipients");
    assert!(sink.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dir_relay_writes_message_and_envelope() {
    let gw = start(None, |_| {}).await;
    let mut c = Client::connect(gw.smtp).await.unwrap();
    c.cmd("EHLO x").await.unwrap();
    let r = c.transaction("a@example.nl", &["b@example.nl", "c@example.nl"], &fixture("html-only.eml")).await;
    assert!(r.starts_with("250"), "{r}");
    let outbox = gw.dir.path().join("outbox");
    let files = files_under(&outbox);
    let eml = files.iter().find(|p| p.extension().is_some_and(|e| e == "eml")).expect("relayed .eml");
    let data = std::fs::read(eml).unwrap();
    assert_tagged_once(&data);
    assert_eq!(split_tags(&data).1, fixture("html-only.eml"));
    let env_path = eml.with_extension("envelope.json");
    let env: serde_json::Value = serde_json::from_slice(&std::fs::read(env_path).unwrap()).unwrap();
    assert_eq!(env["rcpt_to"], serde_json::json!(["b@example.nl", "c@example.nl"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xforward_only_from_trusted_clients() {
    let sink = Sink::start().await;
    let gw = start(Some(sink.addr), |_| {}).await;
    let mut c = Client::connect(gw.smtp).await.unwrap();
    let ehlo = c.cmd("EHLO x").await.unwrap();
    assert!(ehlo.contains("XFORWARD"), "{ehlo}");
    assert!(c.cmd("XFORWARD NAME=client.example ADDR=192.0.2.7 IDENT=4ABC123").await.unwrap().starts_with("250"));
    let r = c.transaction("a@example.nl", &["b@example.nl"], &fixture("latin1.eml")).await;
    assert!(r.starts_with("250"), "{r}");
    drop(gw);
    let gw = start(Some(sink.addr), |c| c.smtp.xforward_clients = vec!["192.0.2.0/24".into()]).await;
    let mut c = Client::connect(gw.smtp).await.unwrap();
    let ehlo = c.cmd("EHLO x").await.unwrap();
    assert!(!ehlo.contains("XFORWARD"), "{ehlo}");
    assert!(c.cmd("XFORWARD ADDR=192.0.2.7").await.unwrap().starts_with("550"));
}
