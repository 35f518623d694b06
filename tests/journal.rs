//! Exchange journal mode end to end: reports built to Microsoft's documented format arrive by
//! SMTP; the attached original is archived byte for byte with the report's envelope (BCC
//! included), nothing reaches the next hop, and ordinary mail still flows.

mod common;

use common::*;

const EXCHANGE: &str = "MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@minbzk.nl";
const EXO: &str = "MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@gemeentevoorbeeld.onmicrosoft.com";
const JOURNAL: &str = "journal@mailgrip.minbzk.nl";
const JOURNAL_EXO: &str = "journal@mailgrip.gemeentevoorbeeld.nl";

fn journal_fixture(name: &str) -> Vec<u8> {
    std::fs::read(repo().join("tests/fixtures/journal").join(name)).unwrap()
}

fn journal_on(c: &mut mailgrip::config::Config) {
    // Archive every class, so each unwrapped original must leave a copy.
    c.policy.strategy = mailgrip::config::Strategy::Classes;
    c.archive.classes = mailgrip::classify::LABELS.iter().map(|s| s.to_string()).collect();
    c.journal.enabled = true;
    c.journal.senders = vec![EXCHANGE.into(), EXO.into()];
    c.journal.recipients = vec![JOURNAL.into(), JOURNAL_EXO.into()];
}

/// Committed archive copies (.eml) with their sidecars.
fn archived(gw: &Gateway) -> Vec<(Vec<u8>, serde_json::Value)> {
    let root = gw.archive_dir();
    let mut out: Vec<_> = files_under(&root)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "eml") && !p.strip_prefix(&root).unwrap().starts_with(".tmp"))
        .map(|p| {
            let sidecar: serde_json::Value =
                serde_json::from_slice(&std::fs::read(p.with_extension("json")).unwrap()).unwrap();
            (std::fs::read(&p).unwrap(), sidecar)
        })
        .collect();
    out.sort_by_key(|(_, s)| s["id"].as_str().unwrap().to_string());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_reports_are_archived_with_their_envelope_and_never_relayed() {
    let sink = Sink::start().await;
    let gw = start(Some(sink.addr), journal_on).await;
    let mut c = Client::connect(gw.smtp).await.unwrap();
    c.cmd("EHLO exch01.minbzk.nl").await.unwrap();
    let sent = [
        ("bcc-expanded.eml", EXCHANGE, JOURNAL),
        ("base64.eml", EXCHANGE, JOURNAL),
        ("plain.eml", EXCHANGE, JOURNAL),
        ("exchange-online.eml", EXO, JOURNAL_EXO),
    ];
    for (name, from, to) in sent {
        let r = c.transaction(from, &[to], &journal_fixture(name)).await;
        assert!(r.starts_with("250 2.0.0") && r.ends_with(" journaled"), "{name}: {r}");
    }
    // Every journal transaction was answered before this ordinary message was sent, and journal
    // mode relays nothing, so the one message at the next hop must be this one.
    let ordinary = fixture("multipart-alternative.eml");
    let r = c.transaction("sender@example.nl", &["rcpt@example.nl"], &ordinary).await;
    assert!(r.starts_with("250 2.0.0") && !r.contains("journaled"), "{r}");
    let got = sink.wait_for(1).await;
    assert_eq!(got.len(), 1, "only the ordinary message may reach the next hop");
    assert_eq!(split_tags(&got[0].data).1, ordinary);
    assert_eq!(got[0].rcpt_to, vec!["rcpt@example.nl"]);

    let copies = archived(&gw);
    assert_eq!(copies.len(), sent.len() + 1, "four originals and the ordinary message");
    let journaled: Vec<_> = copies.iter().filter(|(_, s)| s["envelope"]["journal"].is_object()).collect();
    assert_eq!(journaled.len(), sent.len());
    let (advies, latin) = (journal_fixture("original-advies.eml"), journal_fixture("original-8bit.eml"));
    for (eml, sidecar) in &journaled {
        let (tags, rest) = split_tags(eml);
        let expected = if sidecar["message_id"] == "latin-1@gemeentevoorbeeld.nl" { &latin } else { &advies };
        assert_eq!(&rest, expected, "the archive copy is the attached original, byte for byte, after our headers");
        let id = sidecar["id"].as_str().unwrap();
        assert!(tags.contains(&format!("X-Mailgrip-Id: {id}")), "{tags:?}");
        assert!(!String::from_utf8_lossy(eml).contains("X-MS-Journal-Report"), "the report itself is not archived");
        assert_eq!(sidecar["envelope"]["journal"]["report_rcpt_to"].as_array().unwrap().len(), 1);
    }

    // The report's envelope, BCC and expanded group included, is in the sidecar.
    let bcc = journaled
        .iter()
        .map(|(_, s)| &s["envelope"])
        .find(|e| e["journal"]["recipients"].as_array().unwrap().len() == 6)
        .expect("the bcc-expanded report's copy");
    assert_eq!(bcc["mail_from"], "j.devries@minbzk.nl");
    assert_eq!(bcc["journal"]["report_mail_from"], EXCHANGE);
    assert_eq!(bcc["journal"]["report_rcpt_to"][0], JOURNAL);
    assert_eq!(bcc["journal"]["message_id"], "<advies-1@minbzk.nl>");
    let rcpt: Vec<&str> = bcc["rcpt_to"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(
        rcpt,
        [
            "a.bakker@minfin.nl",
            "p.visser@minbzk.nl",
            "s.dekker@minbzk.nl",
            "l.mulder@minbzk.nl",
            "r.bos@minbzk.nl",
            "vervanger@minbzk.nl"
        ]
    );
    let r = &bcc["journal"]["recipients"];
    assert_eq!(r[2], serde_json::json!({"type": "bcc", "address": "s.dekker@minbzk.nl"}));
    assert_eq!(
        r[3],
        serde_json::json!({"type": "to", "address": "l.mulder@minbzk.nl", "expanded": "team-woo@minbzk.nl"})
    );
    assert_eq!(
        r[5],
        serde_json::json!({"type": "cc", "address": "vervanger@minbzk.nl", "forwarded": "p.visser@minbzk.nl"})
    );
    let exo = journaled
        .iter()
        .map(|(_, s)| &s["envelope"])
        .find(|e| e["journal"]["report_mail_from"] == EXO)
        .expect("the Exchange Online report's copy");
    assert_eq!(exo["journal"]["recipients"][0]["type"], "recipient");
    assert_eq!(
        exo["journal"]["recipients"][2],
        serde_json::json!({"type": "bcc", "address": "griffier@gemeentevoorbeeld.nl"})
    );

    let m = gw.metrics_text().await;
    assert_eq!(metric_sum(&m, "mailgrip_journal_reports_total", "result=\"unwrapped\""), 4.0, "{m}");
    assert_eq!(metric_sum(&m, "mailgrip_messages_total", "outcome=\"journaled\""), 4.0);
    assert_eq!(metric_sum(&m, "mailgrip_messages_total", "outcome=\"relayed\""), 1.0);
    assert_eq!(metric_sum(&m, "mailgrip_archived_total", ""), 5.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_reports_are_deferred_and_untrusted_ones_flow_as_ordinary_mail() {
    let sink = Sink::start().await;
    let gw = start(Some(sink.addr), journal_on).await;
    let mut c = Client::connect(gw.smtp).await.unwrap();
    c.cmd("EHLO exch01.minbzk.nl").await.unwrap();

    let r = c.transaction(EXCHANGE, &[JOURNAL], &journal_fixture("malformed-no-sender.eml")).await;
    assert!(r.starts_with("451 4.6.0") && r.contains("Sender"), "{r}");
    assert!(c.cmd("RSET").await.unwrap().starts_with("250"));

    // From a sender not in journal.senders: not trusted, so handled like any other message
    // (relayed to its envelope recipient, the report left as it is).
    let report = journal_fixture("plain.eml");
    let r = c.transaction("mallory@example.org", &[JOURNAL], &report).await;
    assert!(r.starts_with("250 2.0.0") && !r.contains("journaled"), "{r}");
    let got = sink.wait_for(1).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(split_tags(&got[0].data).1, report);
    assert_eq!(got[0].rcpt_to, vec![JOURNAL]);
    assert!(archived(&gw).iter().all(|(_, s)| s["envelope"]["journal"].is_null()), "nothing unwrapped");

    let m = gw.metrics_text().await;
    assert_eq!(metric_sum(&m, "mailgrip_journal_reports_total", "result=\"malformed\""), 1.0, "{m}");
    assert_eq!(metric_sum(&m, "mailgrip_journal_reports_total", "result=\"untrusted\""), 1.0);
    assert_eq!(metric_sum(&m, "mailgrip_journal_reports_total", "result=\"unwrapped\""), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_journal_mode_off_a_report_is_ordinary_mail() {
    let sink = Sink::start().await;
    let gw = start(Some(sink.addr), |_| {}).await;
    let mut c = Client::connect(gw.smtp).await.unwrap();
    c.cmd("EHLO x").await.unwrap();
    let report = journal_fixture("bcc-expanded.eml");
    let r = c.transaction(EXCHANGE, &[JOURNAL], &report).await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    let got = sink.wait_for(1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(split_tags(&got[0].data).1, report);
    let m = gw.metrics_text().await;
    assert_eq!(metric_sum(&m, "mailgrip_journal_reports_total", ""), 0.0, "{m}");
}
