//! Milter mode: Postfix (`smtpd_milters`) or Sendmail shows us each message while its client is
//! still connected; we classify it and ask the MTA to tag it. The MTA keeps the message and
//! delivers it itself, so nothing here relays.
//!
//! One connection per MTA smtpd process; the protocol (option negotiation, framing) is
//! `miltr-server`'s. Per message we collect the envelope (MAIL FROM, RCPT TO, macro `i` = the
//! MTA's queue id), the headers and the body, and at end of message rebuild the raw message and
//! run [`Gateway::analyze`]. The reply to end of message carries:
//! - one header deletion per foreign `X-Mailgrip-*` field (so a sender cannot pre-tag mail),
//! - our `X-Mailgrip-*` fields, inserted at the top as the content filter prepends them,
//! - optionally a quarantine (Postfix: the hold queue) when the action is `review`,
//!
//! and then "continue". The archive copy is committed just before that reply: the MTA holds the
//! message from then on. When the message cannot be analysed now (classifier, audit trail or
//! archive unavailable), `milter.on_error` decides: `accept` lets it through untagged (foreign
//! `X-Mailgrip-*` fields are still removed), `tempfail` answers the 4xx so the client retries.
//!
//! Each message is analysed by the gateway current at its end of message, so a SIGHUP reload
//! (model, policy) applies to milter mail as to SMTP mail; the `[milter]` section itself and the
//! listener take effect at start.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use miltr_common::actions::{Action, Continue, Replycode};
use miltr_common::commands::{Body, Connect, Header, Helo, Macro, Mail, Recipient};
use miltr_common::modifications::ModificationResponse;
use miltr_common::modifications::headers::{ChangeHeader, InsertHeader};
use miltr_common::modifications::quarantine::Quarantine;
use miltr_common::optneg::{Capability, OptNeg};
use miltr_server::{Milter, Server};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_util::compat::TokioAsyncReadCompatExt;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use super::canonical;
use crate::config::Config;
use crate::decide;
use crate::envelope::Envelope;
use crate::pipeline::{Gateway, GatewayHandle};
use crate::tag;

/// `[milter]`: the milter listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MilterConfig {
    /// Address (ip:port) for milter connections (Postfix `smtpd_milters = inet:127.0.0.1:8891`).
    /// Empty: no milter listener.
    pub listen: String,
    /// What to do with a message that cannot be analysed now (classifier, audit trail or archive
    /// store unavailable): `accept` lets it through untagged, `tempfail` answers 4xx.
    pub on_error: OnMilterError,
    /// Put mail whose action is `review` in the MTA's hold queue (milter quarantine). Off by
    /// default: a held message is not delivered until someone releases it.
    pub quarantine_review: bool,
    /// Most concurrent milter connections (Postfix opens one per smtpd process). Over it the
    /// connection is closed and the MTA applies its `milter_default_action`.
    pub max_connections: usize,
}

impl Default for MilterConfig {
    fn default() -> Self {
        Self { listen: String::new(), on_error: OnMilterError::Accept, quarantine_review: false, max_connections: 200 }
    }
}

/// `milter.on_error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnMilterError {
    /// Deliver untagged (and without archive copy); counted and logged.
    Accept,
    /// Answer the 4xx of the failed stage; the sending client retries.
    Tempfail,
}

/// Largest milter packet accepted. Postfix sends body chunks of at most 64 KiB, but one header
/// can be as long as its `header_size_limit` (100 KiB by default).
const MAX_PACKET: usize = 1 << 20;

/// What milter sessions need from the configuration, parsed once. The SMTP section's client
/// list and caps apply to milter connections too.
struct MilterSettings {
    milter: MilterConfig,
    allowed: Vec<ipnet::IpNet>,
    max_message_size: usize,
    session_timeout: Duration,
}

impl MilterSettings {
    fn is_allowed(&self, ip: std::net::IpAddr) -> bool {
        let ip = canonical(ip);
        self.allowed.iter().any(|n| n.contains(&ip))
    }
}

/// Accept milter connections until `shutdown`; then let each connection finish the message in
/// flight (up to `grace`) and close it.
pub fn serve_milter(
    listener: TcpListener,
    cfg: &Config,
    gateway: Arc<GatewayHandle>,
    shutdown: CancellationToken,
    grace: Duration,
) -> impl Future<Output = ()> + Send + 'static {
    let settings = Arc::new(MilterSettings {
        milter: cfg.milter.clone(),
        allowed: cfg.allowed_clients(),
        max_message_size: cfg.smtp.max_message_size,
        session_timeout: cfg.smtp.session_timeout(),
    });
    accept_loop(listener, settings, gateway, shutdown, grace)
}

async fn accept_loop(
    listener: TcpListener,
    settings: Arc<MilterSettings>,
    gateway: Arc<GatewayHandle>,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let max = settings.milter.max_connections;
    let permits = Arc::new(Semaphore::new(max));
    let metrics = gateway.metrics.clone();
    info!(milter = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "accepting milter connections");
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "milter accept failed");
                    metrics.error("milter", "accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // The milter protocol has no greeting to refuse with: closing makes the MTA apply its
        // milter_default_action to the message.
        if !settings.is_allowed(peer.ip()) {
            metrics.error("milter", "denied");
            warn!(%peer, "milter connection from a client outside smtp.allowed_clients closed");
            continue;
        }
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics.error("milter", "over_capacity");
            warn!(%peer, max, "milter.max_connections reached; connection closed");
            continue;
        };
        let span = info_span!("milter", %peer);
        let (settings, gateway, shutdown) = (settings.clone(), gateway.clone(), shutdown.clone());
        tokio::spawn(
            async move {
                connection(stream, peer, settings, gateway, shutdown).await;
                drop(permit);
            }
            .instrument(span),
        );
    }
    drop(listener);
    info!("milter listener stopped; waiting for messages in flight");
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    if tokio::time::timeout(grace, permits.acquire_many(all)).await.is_err() {
        warn!("grace period over with milter connections still open");
    }
}

/// Serve one milter connection until the MTA closes it, or until shutdown once no message is
/// in flight.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    settings: Arc<MilterSettings>,
    gateway: Arc<GatewayHandle>,
    shutdown: CancellationToken,
) {
    let (busy_tx, mut busy) = watch::channel(false);
    let metrics = gateway.metrics.clone();
    // The MTA holds one milter connection per SMTP session: the session cap bounds it too.
    let limit = settings.session_timeout;
    let mut session = MilterSession::new(settings, gateway, busy_tx);
    let mut server = Server::new(&mut session, false, MAX_PACKET);
    let mut stream = stream.compat();
    // Shutdown waits for the message in flight: the reply to its end of message is written in
    // the same poll that clears `busy`, and `biased` polls the connection first.
    let idle_after_shutdown = async {
        shutdown.cancelled().await;
        let _ = busy.wait_for(|b| !b).await;
    };
    tokio::select! {
        biased;
        result = tokio::time::timeout(limit, server.handle_connection(&mut stream)) => match result {
            Err(_) => {
                metrics.error("milter", "timeout");
                let secs = limit.as_secs();
                warn!(%peer, secs, "milter connection open longer than smtp.session_timeout_secs; closed");
            }
            Ok(Ok(())) => debug!("milter connection closed by the MTA"),
            Ok(Err(miltr_server::Error::Io(e))) => {
                metrics.error("milter", "io");
                debug!(%peer, error = %e, "milter connection lost");
            }
            Ok(Err(e)) => {
                metrics.error("milter", "protocol");
                warn!(%peer, error = %e, "milter protocol error; connection closed");
            }
        },
        _ = idle_after_shutdown => info!("shutting down: milter connection closed between messages"),
    }
}

/// One message as the MTA shows it to us.
#[derive(Default)]
struct Message {
    env: Envelope,
    queue_id: Option<String>,
    /// Header fields as received: name, and value with folded lines joined by `\n`.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    size: usize,
    /// Over `smtp.max_message_size`: not collected further, passed through untagged.
    oversized: bool,
}

impl Message {
    /// The message in wire form (CRLF line ends), as the content filter would have received it.
    fn raw(&self) -> Vec<u8> {
        let mut raw = Vec::with_capacity(self.size + 2 * self.headers.len() + 2);
        for (name, value) in &self.headers {
            raw.extend_from_slice(name.as_bytes());
            raw.extend_from_slice(b": ");
            // Postfix and Sendmail join folded lines with a bare LF.
            let mut prev = 0u8;
            for &b in value.as_bytes() {
                if b == b'\n' && prev != b'\r' {
                    raw.push(b'\r');
                }
                raw.push(b);
                prev = b;
            }
            raw.extend_from_slice(b"\r\n");
        }
        raw.extend_from_slice(b"\r\n");
        raw.extend_from_slice(&self.body);
        raw
    }

    /// Header deletions for every foreign `X-Mailgrip-*` field: (name, 1-based occurrence of
    /// that name), last occurrence first so that each deletion leaves the indexes of the ones
    /// still to come unchanged whether or not the MTA counts deleted fields.
    fn forged_fields(&self) -> Vec<(String, u32)> {
        let mut seen = std::collections::HashMap::<String, u32>::new();
        let mut forged = Vec::new();
        for (name, _) in &self.headers {
            let n = seen.entry(name.to_ascii_lowercase()).or_default();
            *n += 1;
            if tag::is_ours(name.as_bytes()) {
                forged.push((name.clone(), *n));
            }
        }
        forged.reverse();
        forged
    }
}

/// The per-connection milter state.
struct MilterSession {
    settings: Arc<MilterSettings>,
    gateway: Arc<GatewayHandle>,
    /// True from MAIL FROM until the end-of-message reply or an abort.
    busy: watch::Sender<bool>,
    /// Client name, address and HELO, kept with each message's envelope as XFORWARD would.
    client: Vec<(String, String)>,
    msg: Message,
}

impl MilterSession {
    fn new(settings: Arc<MilterSettings>, gateway: Arc<GatewayHandle>, busy: watch::Sender<bool>) -> MilterSession {
        MilterSession { settings, gateway, busy, client: Vec::new(), msg: Message::default() }
    }

    fn set_client(&mut self, key: &str, value: String) {
        self.client.retain(|(k, _)| k != key);
        self.client.push((key.to_string(), value));
    }

    /// End of message: analyse, and turn the verdict into modifications.
    async fn finish(&mut self) -> ModificationResponse {
        let msg = std::mem::take(&mut self.msg);
        let mut env = msg.env.clone();
        env.xforward = self.client.clone();
        if let Some(qid) = &msg.queue_id {
            env.xforward.push(("IDENT".into(), qid.clone()));
        }
        let m = self.gateway.metrics.clone();
        let mut response = ModificationResponse::builder();
        // Forged fields go first: deletions count occurrences by name, and ours must not count.
        for (name, index) in msg.forged_fields() {
            response.push(ChangeHeader::new(index, name.as_bytes(), b""));
        }
        if msg.oversized {
            m.error("milter", "too_large");
            warn!(
                queue_id = msg.queue_id.as_deref().unwrap_or("-"),
                size = msg.size,
                "message over smtp.max_message_size; passed through untagged"
            );
            return response.contin();
        }
        let id = Gateway::new_id();
        let span = info_span!("message", id = %id, queue_id = msg.queue_id.as_deref().unwrap_or("-"), size = msg.size,
                              rcpts = env.rcpt_to.len());
        let started = Instant::now();
        let raw = msg.raw();
        let settings = &self.settings.milter;
        // The gateway of the moment (a SIGHUP reload may have replaced it); kept for this message.
        let gateway = &self.gateway.get();
        let m = &m;
        let response = async move {
            match gateway.analyze(&id, &env, raw).await {
                Ok(verdict) => {
                    for (i, (name, value)) in verdict.tags.fields().into_iter().enumerate() {
                        response.push(InsertHeader::new(i as u32, name.as_bytes(), value.as_bytes()));
                    }
                    let action = verdict.decision.action;
                    let quarantined = settings.quarantine_review && action == decide::Action::Review;
                    if quarantined {
                        response.push(Quarantine::new(format!("mailgrip review {id}").as_bytes()));
                    }
                    let class = verdict.decision.class.clone();
                    info!(class = %class, action = action.as_str(), scores = %verdict.scores_log,
                          model = %gateway.classifier.info().id(), reason = %verdict.decision.reason, quarantined,
                          "tagged by milter");
                    // Committed before the reply: once Postfix has it, it queues the message. A copy of
                    // a message that then fails to queue is the lesser evil than mail without its copy.
                    verdict.commit(m).await;
                    m.messages.with_label_values(&[&class, "accepted"]).inc();
                    response.contin()
                }
                Err(reply) => match settings.on_error {
                    OnMilterError::Accept => {
                        m.error("milter", "untagged");
                        warn!(reply = %reply.text, "not analysed; passed through untagged (milter.on_error = accept)");
                        response.contin()
                    }
                    OnMilterError::Tempfail => {
                        m.error("milter", "tempfailed");
                        warn!(reply = %reply.text, "not analysed; tempfailed (milter.on_error = tempfail)");
                        // The message is not taken: no changes, just the reply.
                        ModificationResponse::builder().build(tempfail_reply(reply.code, &reply.text))
                    }
                },
            }
        }
        .instrument(span)
        .await;
        m.processing_seconds.observe(started.elapsed().as_secs_f64());
        response
    }
}

/// A 4xx reply for the MTA to give its client; a plain tempfail if the code is not a 4xx.
fn tempfail_reply(code: u16, text: &str) -> Action {
    if !(400..500).contains(&code) {
        return miltr_common::actions::Tempfail.into();
    }
    let digits = [(code / 100) as u8, (code / 10 % 10) as u8, (code % 10) as u8];
    let text: String = text.chars().map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { ' ' }).collect();
    Replycode::without_xcode(digits, &text).into()
}

/// `<a@b>` → `a@b`, `<>` → empty (as the SMTP ingress stores envelope addresses).
fn address(raw: &str) -> String {
    let raw = raw.trim();
    raw.strip_prefix('<').and_then(|r| r.strip_suffix('>')).unwrap_or(raw).to_string()
}

#[async_trait]
impl Milter for MilterSession {
    type Error = Infallible;

    /// Ask only for what we use: add and change headers, quarantine. The queue id (macro `i`)
    /// comes with Postfix's default `milter_end_of_data_macros`; we do not request macros, as
    /// a longer negotiation reply trips some milter clients.
    async fn option_negotiation(&mut self, theirs: OptNeg) -> Result<OptNeg, miltr_server::Error<Infallible>> {
        let ours = OptNeg {
            capabilities: Capability::SMFIF_ADDHDRS | Capability::SMFIF_CHGHDRS | Capability::SMFIF_QUARANTINE,
            ..OptNeg::default()
        };
        Ok(ours.merge_compatible(&theirs).map_err(miltr_common::ProtocolError::CompatibilityError)?)
    }

    async fn macro_(&mut self, macros: Macro) -> Result<(), Infallible> {
        for (name, value) in macros.macros() {
            if (name == b"i" || name == b"{i}") && !value.is_empty() {
                self.msg.queue_id = Some(String::from_utf8_lossy(value).into_owned());
            }
        }
        Ok(())
    }

    async fn connect(&mut self, connect: Connect) -> Result<Action, Infallible> {
        self.set_client("NAME", connect.hostname().into_owned());
        self.set_client("ADDR", connect.address().into_owned());
        Ok(Continue.into())
    }

    async fn helo(&mut self, helo: Helo) -> Result<Action, Infallible> {
        self.set_client("HELO", helo.helo().into_owned());
        Ok(Continue.into())
    }

    async fn mail(&mut self, mail: Mail) -> Result<Action, Infallible> {
        // The queue id macro of MAIL FROM (if any) arrived just before this call.
        let queue_id = self.msg.queue_id.take();
        self.msg = Message { queue_id, ..Message::default() };
        self.msg.env.mail_from = address(&mail.sender());
        for arg in mail.esmtp_args() {
            let arg = arg.to_ascii_uppercase();
            self.msg.env.body_8bitmime |= arg == "BODY=8BITMIME";
            self.msg.env.smtputf8 |= arg == "SMTPUTF8";
        }
        let _ = self.busy.send(true);
        Ok(Continue.into())
    }

    async fn rcpt(&mut self, rcpt: Recipient) -> Result<Action, Infallible> {
        self.msg.env.rcpt_to.push(address(&rcpt.recipient()));
        Ok(Continue.into())
    }

    async fn header(&mut self, header: Header) -> Result<Action, Infallible> {
        let (name, value) = (header.name().into_owned(), header.value().into_owned());
        self.msg.size += name.len() + value.len() + 4;
        if self.msg.size > self.settings.max_message_size {
            self.msg.oversized = true;
        }
        // Names are kept even when oversized: forged fields must still be found and deleted.
        let value = if self.msg.oversized { String::new() } else { value };
        self.msg.headers.push((name, value));
        Ok(Continue.into())
    }

    async fn body(&mut self, body: Body) -> Result<Action, Infallible> {
        let chunk = body.as_bytes();
        self.msg.size += chunk.len();
        if self.msg.size > self.settings.max_message_size {
            self.msg.oversized = true;
            self.msg.body = Vec::new();
        }
        if !self.msg.oversized {
            self.msg.body.extend_from_slice(chunk);
        }
        Ok(Continue.into())
    }

    async fn end_of_body(&mut self) -> Result<ModificationResponse, Infallible> {
        let response = self.finish().await;
        let _ = self.busy.send(false);
        Ok(response)
    }

    async fn abort(&mut self) -> Result<(), Infallible> {
        self.msg = Message::default();
        let _ = self.busy.send(false);
        Ok(())
    }

    async fn quit(&mut self) -> Result<(), Infallible> {
        let _ = self.busy.send(false);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(headers: &[(&str, &str)], body: &[u8]) -> Message {
        Message {
            headers: headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
            body: body.to_vec(),
            ..Message::default()
        }
    }

    #[test]
    fn rebuilds_wire_form_with_crlf_folding() {
        let m = message(&[("From", "a@b"), ("Subject", "long\n\tfolded"), ("X", "")], b"body\r\n");
        assert_eq!(m.raw(), b"From: a@b\r\nSubject: long\r\n\tfolded\r\nX: \r\n\r\nbody\r\n");
    }

    #[test]
    fn forged_fields_last_first_counted_by_name() {
        let m = message(
            &[
                ("X-Mailgrip-Class", "a"),
                ("From", "x"),
                ("x-mailgrip-class", "b"),
                ("X-MAILGRIP-Action", "c"),
                ("X-Mailgripper", "not ours: no dash after the prefix"),
            ],
            b"",
        );
        assert_eq!(
            m.forged_fields(),
            vec![
                ("X-MAILGRIP-Action".to_string(), 1),
                ("x-mailgrip-class".to_string(), 2),
                ("X-Mailgrip-Class".to_string(), 1)
            ]
        );
    }

    #[test]
    fn envelope_addresses_lose_brackets() {
        assert_eq!(address("<a@b>"), "a@b");
        assert_eq!(address("<>"), "");
        assert_eq!(address("a@b"), "a@b");
    }

    #[test]
    fn tempfail_reply_keeps_4xx_only() {
        assert!(matches!(tempfail_reply(451, "4.3.0 x\r\ny"), Action::Replycode(_)));
        assert!(matches!(tempfail_reply(550, "5.0.0 no"), Action::Tempfail(_)));
    }
}
