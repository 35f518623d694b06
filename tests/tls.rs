//! STARTTLS on both sides, with a test CA made at test time: the ingress upgrade (and the
//! CVE-2011-0411 injection it must not fall for), `smtp.require_tls`, and `relay.tls` towards a
//! next hop that does or does not offer STARTTLS.

mod common;

use common::tls::{Pki, SinkTls, TlsClient, TlsSink};
use common::*;
use mailgrip::config::{Config, RelayMode, RelayTls};

const FROM: &str = "j.devries@minbzk.nl";
const TO: &str = "a.bakker@minfin.nl";

fn message() -> Vec<u8> {
    b"From: J. de Vries <j.devries@minbzk.nl>\r\nTo: a.bakker@minfin.nl\r\n\
      Subject: Advies wetsvoorstel Woo-termijnen\r\nMessage-ID: <tls-1@minbzk.nl>\r\n\r\n\
      Beste Anna,\r\n\r\nHierbij ons advies over de beslistermijnen. Graag uw reactie voor vrijdag.\r\n\
      .Een regel die met een punt begint.\r\n"
        .to_vec()
}

fn ingress_tls(pki: &Pki) -> impl FnOnce(&mut Config) {
    let (cert, key) = (pki.cert.clone(), pki.key.clone());
    move |c: &mut Config| {
        c.smtp.tls_cert = cert;
        c.smtp.tls_key = key;
    }
}

/// Committed archive copies (staged ones live in `.tmp`).
fn committed_copies(gw: &Gateway) -> usize {
    files_under(&gw.archive_dir())
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "eml") && !p.to_string_lossy().contains(".tmp"))
        .count()
}

#[tokio::test]
async fn starttls_then_pipelined_bdat_is_relayed_over_verified_tls() {
    let pki = Pki::new();
    let sink = TlsSink::start(pki.acceptor(), SinkTls::Offer).await;
    let (ca, cert, key) = (pki.ca.clone(), pki.cert.clone(), pki.key.clone());
    let gw = start(Some(sink.addr), move |c| {
        c.smtp.tls_cert = cert;
        c.smtp.tls_key = key;
        c.relay.tls = RelayTls::Required;
        c.relay.tls_ca = ca;
        // relay.tls_server_name stays empty: the next hop is verified as 127.0.0.1 (an IP SAN).
    })
    .await;

    let plain = Client::connect(gw.smtp).await.unwrap();
    let (mut c, ehlo) = TlsClient::upgrade(plain, &pki).await;
    assert!(ehlo.lines().any(|l| l.ends_with("STARTTLS")), "STARTTLS advertised before TLS: {ehlo}");
    let ehlo = c.cmd("EHLO client.test").await.unwrap();
    assert!(ehlo.starts_with("250-"), "{ehlo}");
    assert!(!ehlo.contains("STARTTLS"), "STARTTLS advertised again inside TLS: {ehlo}");
    for cap in ["PIPELINING", "CHUNKING", "XFORWARD"] {
        assert!(ehlo.contains(cap), "{cap} missing over TLS: {ehlo}");
    }

    // One write: XFORWARD, MAIL, RCPT and two BDAT chunks with their data.
    let msg = message();
    let (a, b) = msg.split_at(msg.len() / 2);
    let mut batch =
        format!("XFORWARD NAME=ws12.minbzk.nl ADDR=192.0.2.7\r\nMAIL FROM:<{FROM}>\r\nRCPT TO:<{TO}>\r\n").into_bytes();
    batch.extend_from_slice(format!("BDAT {}\r\n", a.len()).as_bytes());
    batch.extend_from_slice(a);
    batch.extend_from_slice(format!("BDAT {} LAST\r\n", b.len()).as_bytes());
    batch.extend_from_slice(b);
    c.send(&batch).await;
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(c.reply().await.unwrap());
    }
    assert!(got[..4].iter().all(|r| r.starts_with("250 ")), "{got:?}");
    assert!(got[4].starts_with("250 2.0.0 Ok: "), "end of BDAT: {got:?}");
    assert!(c.cmd("QUIT").await.unwrap().starts_with("221"));

    let arrived = sink.wait_for(1).await;
    assert_eq!(arrived.len(), 1);
    let m = &arrived[0];
    assert!(m.tls, "the next hop got the message in plain text");
    assert!(m.ehlo_in_session, "no EHLO after the relay's STARTTLS");
    assert_eq!((m.message.mail_from.as_str(), m.message.rcpt_to.clone()), (FROM, vec![TO.to_string()]));
    assert!(m.xforward.iter().any(|x| x.contains("ADDR=192.0.2.7")), "XFORWARD not passed on: {:?}", m.xforward);
    let (tags, body) = split_tags(&m.message.data);
    assert!(tags.iter().any(|t| t.starts_with("X-Mailgrip-Class: ")), "{tags:?}");
    assert_eq!(body, msg, "body changed on the way");

    let metrics = gw.metrics_text().await;
    let label = format!("version=\"{}\"", c.version.replace('_', "."));
    assert_eq!(metric_sum(&metrics, "mailgrip_smtp_tls_sessions_total", &label), 1.0, "{label}\n{metrics}");
}

#[tokio::test]
async fn input_pipelined_after_starttls_is_discarded_not_executed() {
    let pki = Pki::new();
    let sink = Sink::start().await;
    let gw = start(Some(sink.addr), ingress_tls(&pki)).await;

    let mut plain = Client::connect(gw.smtp).await.unwrap();
    assert!(plain.cmd("EHLO client.test").await.unwrap().contains("STARTTLS"));
    // The attack: plain-text commands behind STARTTLS in the same packet, which a vulnerable
    // server would run as if they came inside the TLS session.
    plain.send(b"STARTTLS\r\nMAIL FROM:<injected@evil.example>\r\nRCPT TO:<victim@minfin.nl>\r\n").await;
    let r = plain.reply().await.unwrap();
    assert!(r.starts_with("220 "), "{r}");
    let tcp = plain.stream.into_inner();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = pki.connector().connect(name, tcp).await.expect("handshake");
    let mut c = TlsClient { stream: tokio::io::BufReader::new(tls), version: String::new() };

    // Had the injected commands run, their replies would come first, and MAIL would be nested.
    let ehlo = c.cmd("EHLO client.test").await.unwrap();
    assert!(ehlo.starts_with("250-mailgrip"), "first reply inside TLS: {ehlo}");
    let r = c.cmd("RCPT TO:<x@minfin.nl>").await.unwrap();
    assert!(r.starts_with("503"), "an envelope survived STARTTLS: {r}");
    let r = c.cmd(&format!("MAIL FROM:<{FROM}>")).await.unwrap();
    assert!(r.starts_with("250"), "{r}");
    assert!(c.cmd(&format!("RCPT TO:<{TO}>")).await.unwrap().starts_with("250"));
    assert!(c.cmd("DATA").await.unwrap().starts_with("354"));
    c.send(&dot_stuff(&message())).await;
    assert!(c.reply().await.unwrap().starts_with("250 2.0.0 Ok"));

    let arrived = sink.wait_for(1).await;
    assert_eq!(arrived.len(), 1);
    assert_eq!(arrived[0].mail_from, FROM);
    assert_eq!(arrived[0].rcpt_to, vec![TO.to_string()]);
    let metrics = gw.metrics_text().await;
    assert_eq!(metric_sum(&metrics, "mailgrip_errors_total", "error_type=\"starttls_pipelining\""), 1.0);
}

#[tokio::test]
async fn require_tls_refuses_mail_before_starttls() {
    let pki = Pki::new();
    let sink = Sink::start().await;
    let tls = ingress_tls(&pki);
    let gw = start(Some(sink.addr), move |c| {
        tls(c);
        c.smtp.require_tls = true;
    })
    .await;

    let mut plain = Client::connect(gw.smtp).await.unwrap();
    assert!(plain.cmd("EHLO client.test").await.unwrap().starts_with("250"));
    let r = plain.cmd(&format!("MAIL FROM:<{FROM}>")).await.unwrap();
    assert_eq!(r, "530 5.7.0 Must issue a STARTTLS command first");
    let r = plain.cmd(&format!("RCPT TO:<{TO}>")).await.unwrap();
    assert!(r.starts_with("503"), "{r}");

    let (mut c, _) = TlsClient::upgrade(plain, &pki).await;
    let r = c.cmd(&format!("MAIL FROM:<{FROM}>")).await.unwrap();
    assert!(r.starts_with("503"), "MAIL accepted without EHLO after STARTTLS: {r}");
    assert!(c.cmd("EHLO client.test").await.unwrap().starts_with("250"));
    assert!(c.cmd(&format!("MAIL FROM:<{FROM}>")).await.unwrap().starts_with("250"));
    assert!(c.cmd(&format!("RCPT TO:<{TO}>")).await.unwrap().starts_with("250"));
    assert!(c.cmd("DATA").await.unwrap().starts_with("354"));
    c.send(&dot_stuff(&message())).await;
    assert!(c.reply().await.unwrap().starts_with("250 2.0.0 Ok"));
    let r = c.cmd("STARTTLS").await.unwrap();
    assert!(r.starts_with("503"), "second STARTTLS: {r}");
    assert_eq!(sink.wait_for(1).await.len(), 1);
}

#[tokio::test]
async fn no_starttls_without_a_certificate() {
    let gw = start(None, |_| {}).await;
    let mut c = Client::connect(gw.smtp).await.unwrap();
    let ehlo = c.cmd("EHLO client.test").await.unwrap();
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    let r = c.cmd("STARTTLS").await.unwrap();
    assert!(r.starts_with("502"), "{r}");
    // The session goes on in plain text.
    assert!(c.transaction(FROM, &[TO], &message()).await.starts_with("250"));
}

#[tokio::test]
async fn required_relay_tls_against_a_plain_next_hop_defers_and_keeps_the_mail() {
    let pki = Pki::new();
    let sink = Sink::start().await; // does not offer STARTTLS
    let ca = pki.ca.clone();
    let gw = start(Some(sink.addr), move |c| {
        c.relay.tls = RelayTls::Required;
        c.relay.tls_ca = ca;
    })
    .await;
    let mut c = Client::connect(gw.smtp).await.unwrap();
    c.cmd("EHLO client.test").await.unwrap();
    let r = c.transaction(FROM, &[TO], &message()).await;
    assert!(r.starts_with("451 4.7.4"), "{r}");
    assert!(r.contains("STARTTLS"), "{r}");
    assert!(sink.messages().is_empty(), "sent in plain text despite relay.tls = required");
    assert_eq!(committed_copies(&gw), 0, "archive copy committed for a message the MTA will retry");
    let (status, body) = http_get(gw.metrics, "/readyz").await;
    assert_ne!(status, 200, "ready while the next hop cannot be used: {body}");
}

#[tokio::test]
async fn required_relay_tls_verifies_the_name() {
    let pki = Pki::new();
    let sink = TlsSink::start(pki.acceptor(), SinkTls::Offer).await;
    let ca = pki.ca.clone();
    let gw = start(Some(sink.addr), move |c| {
        c.relay.tls = RelayTls::Required;
        c.relay.tls_ca = ca;
        c.relay.tls_server_name = "exchange.example.nl".into();
    })
    .await;
    let mut c = Client::connect(gw.smtp).await.unwrap();
    c.cmd("EHLO client.test").await.unwrap();
    let r = c.transaction(FROM, &[TO], &message()).await;
    assert!(r.starts_with("451 4.7.5"), "{r}");
    assert!(sink.messages().is_empty(), "{:?}", sink.messages());
}

#[tokio::test]
async fn required_relay_tls_rejects_an_untrusted_certificate() {
    let pki = Pki::new();
    let other = Pki::new(); // a CA that did not issue the next hop's certificate
    let sink = TlsSink::start(pki.acceptor(), SinkTls::Offer).await;
    let ca = other.ca.clone();
    let gw = start(Some(sink.addr), move |c| {
        c.relay.tls = RelayTls::Required;
        c.relay.tls_ca = ca;
    })
    .await;
    let mut c = Client::connect(gw.smtp).await.unwrap();
    c.cmd("EHLO client.test").await.unwrap();
    let r = c.transaction(FROM, &[TO], &message()).await;
    assert!(r.starts_with("451 4.7.5"), "{r}");
    assert!(sink.messages().is_empty());
}

#[tokio::test]
async fn opportunistic_relay_tls_encrypts_without_verifying_and_pools_the_tls_connection() {
    let pki = Pki::new();
    let sink = TlsSink::start(pki.acceptor(), SinkTls::Offer).await;
    // The default relay.tls, no CA: the test CA is unknown to mailgrip.
    let gw = start(Some(sink.addr), |c| assert_eq!(c.relay.tls, RelayTls::Opportunistic)).await;
    let mut c = Client::connect(gw.smtp).await.unwrap();
    c.cmd("EHLO client.test").await.unwrap();
    for _ in 0..3 {
        assert!(c.transaction(FROM, &[TO], &message()).await.starts_with("250"));
    }
    let arrived = sink.wait_for(3).await;
    assert_eq!(arrived.len(), 3);
    assert!(arrived.iter().all(|m| m.tls && m.ehlo_in_session), "{arrived:?}");
    assert_eq!(sink.connections(), 1, "the TLS connection was not reused from the pool");
}

#[tokio::test]
async fn opportunistic_relay_tls_falls_back_to_plain_text_when_the_handshake_fails() {
    let pki = Pki::new();
    let sink = TlsSink::start(pki.acceptor(), SinkTls::Broken).await;
    let gw = start(Some(sink.addr), |_| {}).await;
    let mut c = Client::connect(gw.smtp).await.unwrap();
    c.cmd("EHLO client.test").await.unwrap();
    let r = c.transaction(FROM, &[TO], &message()).await;
    assert!(r.starts_with("250"), "{r}");
    let arrived = sink.wait_for(1).await;
    assert_eq!(arrived.len(), 1);
    assert!(!arrived[0].tls);
    assert_eq!(sink.connections(), 2, "one failed handshake, then one plain connection");
}

#[tokio::test]
async fn relay_tls_none_never_starts_tls() {
    let pki = Pki::new();
    let sink = TlsSink::start(pki.acceptor(), SinkTls::Offer).await;
    let gw = start(Some(sink.addr), |c| c.relay.tls = RelayTls::None).await;
    let mut c = Client::connect(gw.smtp).await.unwrap();
    c.cmd("EHLO client.test").await.unwrap();
    assert!(c.transaction(FROM, &[TO], &message()).await.starts_with("250"));
    let arrived = sink.wait_for(1).await;
    assert_eq!(arrived.len(), 1);
    assert!(!arrived[0].tls);
}

#[test]
fn bad_tls_settings_are_config_errors_naming_the_key() {
    let pki = Pki::new();
    let check = |tweak: &dyn Fn(&mut Config), key: &str| {
        let mut cfg = Config::default();
        tweak(&mut cfg);
        let err = cfg.validate().expect_err(key).to_string();
        assert!(err.starts_with(&format!("{key}:")), "expected an error naming {key}, got: {err}");
    };
    let missing = pki.dir.path().join("missing.pem");
    check(
        &|c| {
            c.smtp.tls_cert = missing.clone();
            c.smtp.tls_key = pki.key.clone();
        },
        "smtp.tls_cert",
    );
    check(
        &|c| {
            c.smtp.tls_cert = pki.cert.clone();
            c.smtp.tls_key = missing.clone();
        },
        "smtp.tls_key",
    );
    check(&|c| c.smtp.tls_cert = pki.cert.clone(), "smtp.tls_key");
    check(
        &|c| {
            c.smtp.tls_cert = pki.cert.clone();
            c.smtp.tls_key = pki.other_key.clone();
        },
        "smtp.tls_key",
    );
    // A key file given as the certificate: no certificate in it.
    check(
        &|c| {
            c.smtp.tls_cert = pki.key.clone();
            c.smtp.tls_key = pki.key.clone();
        },
        "smtp.tls_cert",
    );
    check(&|c| c.smtp.require_tls = true, "smtp.require_tls");
    let smtp_relay = |c: &mut Config| {
        c.relay.mode = RelayMode::Smtp;
        c.relay.next_hop = "127.0.0.1:10026".into();
    };
    check(
        &|c| {
            smtp_relay(c);
            c.relay.tls = RelayTls::Required;
            c.relay.tls_ca = missing.clone();
        },
        "relay.tls_ca",
    );
    check(
        &|c| {
            smtp_relay(c);
            c.relay.tls_ca = pki.ca.clone(); // with the default, opportunistic: would not be used
        },
        "relay.tls_ca",
    );
    check(
        &|c| {
            smtp_relay(c);
            c.relay.tls = RelayTls::Required;
            c.relay.tls_ca = pki.ca.clone();
            c.relay.tls_server_name = "not a name".into();
        },
        "relay.tls_server_name",
    );

    // And the good ones pass.
    let mut cfg = Config::default();
    cfg.smtp.tls_cert = pki.cert.clone();
    cfg.smtp.tls_key = pki.key.clone();
    cfg.smtp.require_tls = true;
    smtp_relay(&mut cfg);
    cfg.relay.tls = RelayTls::Required;
    cfg.relay.tls_ca = pki.ca.clone();
    cfg.validate().unwrap();
}

#[test]
fn check_config_names_the_key_for_a_bad_certificate_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mailgrip.toml");
    std::fs::write(&file, "[smtp]\ntls_cert = \"/nonexistent/cert.pem\"\ntls_key = \"/nonexistent/key.pem\"\n")
        .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mailgrip"))
        .args(["check-config", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("smtp.tls_cert:") && stderr.contains("/nonexistent/cert.pem"), "{stderr}");
}
