//! One SMTP session: read commands (parsed by `smtp-proto`), keep the envelope, receive the body
//! by DATA or BDAT, and hand each complete transaction to the [`Gateway`].
//!
//! Replies are buffered and flushed whenever the session is about to wait for input, which is
//! what PIPELINING needs. Every read has a deadline; shutdown is honoured between commands.
//!
//! STARTTLS (RFC 3207, when `smtp.tls_cert` is set): the `220` is flushed, input the client
//! pipelined behind STARTTLS is dropped unread (CVE-2011-0411: plain-text commands must not run as
//! if they came over TLS), the handshake runs, and the session starts over: no HELO, no envelope,
//! no XFORWARD attributes. After it, the same code reads and writes through the TLS stream.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use smtp_proto::{Error as ProtoError, MAIL_BODY_8BITMIME, MAIL_SMTPUTF8, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::IngressSettings;
use super::data::DataDecoder;
use super::reply::SmtpReply;
use super::tls::MaybeTls;
use crate::envelope::Envelope;
use crate::pipeline::GatewayHandle;

/// Longest command line accepted (RFC 5321 says 512; extensions make it longer).
const MAX_LINE: usize = 4096;

/// Why a session ends early.
#[derive(Debug)]
enum Close {
    /// Client went away or the socket failed.
    Gone,
    /// We said goodbye (QUIT, timeout, shutdown, too many errors).
    Said,
}

pub struct Session {
    stream: MaybeTls,
    peer: SocketAddr,
    settings: Arc<IngressSettings>,
    gateway: Arc<GatewayHandle>,
    shutdown: CancellationToken,
    inbuf: Vec<u8>,
    start: usize,
    out: Vec<u8>,
    deadline: Instant,
    helo: Option<String>,
    envelope: Option<Envelope>,
    xforward: Vec<(String, String)>,
    /// Body collected from BDAT chunks so far.
    bdat: Option<Vec<u8>>,
    /// A BDAT transaction that already failed: the rest of its chunks are read and dropped.
    bdat_failed: bool,
    errors: u32,
}

impl Session {
    pub fn new(
        stream: TcpStream,
        peer: SocketAddr,
        settings: Arc<IngressSettings>,
        gateway: Arc<GatewayHandle>,
        shutdown: CancellationToken,
    ) -> Session {
        let deadline = Instant::now() + settings.smtp.session_timeout();
        let _ = stream.set_nodelay(true);
        Session {
            stream: MaybeTls::Plain(stream),
            peer,
            settings,
            gateway,
            shutdown,
            inbuf: Vec::with_capacity(8192),
            start: 0,
            out: Vec::with_capacity(512),
            deadline,
            helo: None,
            envelope: None,
            xforward: Vec::new(),
            bdat: None,
            bdat_failed: false,
            errors: 0,
        }
    }

    pub async fn run(mut self) {
        let greeting = SmtpReply::new(220, format!("{} ESMTP mailgrip", self.settings.smtp.hostname));
        self.reply(greeting);
        let result = self.commands().await;
        let _ = self.flush().await;
        // A TLS session ends with close_notify; bounded, as the client may have stopped reading.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.stream.shutdown()).await;
        debug!(?result, "session closed");
    }

    fn reply(&mut self, r: SmtpReply) {
        r.write_to(&mut self.out);
    }

    async fn flush(&mut self) -> Result<(), Close> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await.map_err(|_| Close::Gone)?;
            self.out.clear();
        }
        Ok(())
    }

    /// Say goodbye with `r` and end the session.
    fn close_with(&mut self, r: SmtpReply) -> Close {
        self.reply(r);
        Close::Said
    }

    /// Read more bytes from the client. `idle` says we are between commands, where shutdown
    /// may interrupt the wait.
    async fn fill(&mut self, idle: bool) -> Result<(), Close> {
        self.flush().await?;
        if self.start == self.inbuf.len() {
            self.inbuf.clear();
            self.start = 0;
        } else if self.start > 64 * 1024 {
            self.inbuf.drain(..self.start);
            self.start = 0;
        }
        let now = Instant::now();
        if now >= self.deadline {
            return Err(self.close_with(self.timeout_reply()));
        }
        let wait = self.settings.smtp.command_timeout().min(self.deadline - now);
        let shutdown = self.shutdown.clone();
        let read = tokio::time::timeout(wait, self.stream.read_buf(&mut self.inbuf));
        let n = if idle {
            tokio::select! {
                r = read => r,
                _ = shutdown.cancelled() => {
                    return Err(self.close_with(SmtpReply::new(421, format!("4.3.0 {} Service shutting down", self.settings.smtp.hostname))));
                }
            }
        } else {
            read.await
        };
        match n {
            Err(_) => Err(self.close_with(self.timeout_reply())),
            Ok(Err(_)) | Ok(Ok(0)) => Err(Close::Gone),
            Ok(Ok(_)) => Ok(()),
        }
    }

    fn timeout_reply(&self) -> SmtpReply {
        SmtpReply::new(421, format!("4.4.2 {} Error: timeout exceeded", self.settings.smtp.hostname))
    }

    /// The next command line, CRLF included.
    async fn read_line(&mut self) -> Result<Vec<u8>, Close> {
        loop {
            if let Some(pos) = self.inbuf[self.start..].iter().position(|&b| b == b'\n') {
                let line = self.inbuf[self.start..self.start + pos + 1].to_vec();
                self.start += pos + 1;
                return Ok(line);
            }
            if self.inbuf.len() - self.start > MAX_LINE {
                return Err(self.close_with(SmtpReply::new(500, "5.5.2 Line too long")));
            }
            self.fill(true).await?;
        }
    }

    async fn commands(&mut self) -> Result<(), Close> {
        loop {
            if self.shutdown.is_cancelled() {
                return Err(self.close_with(SmtpReply::new(
                    421,
                    format!("4.3.0 {} Service shutting down", self.settings.smtp.hostname),
                )));
            }
            let line = self.read_line().await?;
            let upper = line.get(..9).map(|p| p.to_ascii_uppercase());
            if upper.as_deref() == Some(&b"XFORWARD "[..]) {
                self.xforward_command(&line[9..]);
                continue;
            }
            match Request::parse(&mut line.iter()) {
                Ok(req) => self.request(req).await?,
                Err(e) => {
                    let r = match e {
                        ProtoError::UnknownCommand => SmtpReply::new(500, "5.5.2 Error: command not recognized"),
                        ProtoError::InvalidSenderAddress => SmtpReply::new(501, "5.1.7 Bad sender address syntax"),
                        ProtoError::InvalidRecipientAddress => {
                            SmtpReply::new(501, "5.1.3 Bad recipient address syntax")
                        }
                        ProtoError::SyntaxError { syntax } => SmtpReply::new(501, format!("5.5.4 Syntax: {syntax}")),
                        ProtoError::InvalidParameter { param } => {
                            SmtpReply::new(501, format!("5.5.4 Invalid parameter {param:?}"))
                        }
                        ProtoError::UnsupportedParameter { param } => {
                            SmtpReply::new(555, format!("5.5.4 Unsupported parameter {param:?}"))
                        }
                        _ => SmtpReply::new(500, "5.5.2 Error: bad syntax"),
                    };
                    self.error(r)?;
                }
            }
        }
    }

    /// Answer a protocol error; too many of them end the session.
    fn error(&mut self, r: SmtpReply) -> Result<(), Close> {
        self.errors += 1;
        self.gateway.metrics.error("ingress", "protocol");
        if self.errors >= self.settings.smtp.max_errors {
            return Err(self.close_with(SmtpReply::new(421, "4.7.0 Too many errors, closing connection")));
        }
        self.reply(r);
        Ok(())
    }

    fn reset_transaction(&mut self) {
        self.envelope = None;
        self.bdat = None;
        self.bdat_failed = false;
    }

    fn xforward_command(&mut self, args: &[u8]) {
        if !self.settings.is_xforward_client(self.peer.ip()) {
            let _ = self.error(SmtpReply::new(550, "5.7.0 Error: insufficient authorization"));
            return;
        }
        let args = String::from_utf8_lossy(args);
        for attr in args.split_whitespace() {
            if let Some((k, v)) = attr.split_once('=') {
                let k = k.to_ascii_uppercase();
                if matches!(k.as_str(), "NAME" | "ADDR" | "PORT" | "PROTO" | "HELO" | "SOURCE" | "IDENT") {
                    self.xforward.retain(|(old, _)| *old != k);
                    self.xforward.push((k, v.chars().take(255).collect()));
                }
            }
        }
        self.reply(SmtpReply::new(250, "2.0.0 Ok"));
    }

    async fn request(&mut self, req: Request<String>) -> Result<(), Close> {
        let host = self.settings.smtp.hostname.clone();
        match req {
            Request::Ehlo { host: client } => {
                self.reset_transaction();
                self.helo = Some(client);
                let mut lines = vec![
                    host.clone(),
                    "PIPELINING".into(),
                    format!("SIZE {}", self.settings.smtp.max_message_size),
                    "8BITMIME".into(),
                    "SMTPUTF8".into(),
                    "ENHANCEDSTATUSCODES".into(),
                    "CHUNKING".into(),
                ];
                if self.settings.is_xforward_client(self.peer.ip()) {
                    lines.push("XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE".into());
                }
                if self.settings.tls.is_some() && !self.is_tls() {
                    lines.push("STARTTLS".into());
                }
                let last = lines.len() - 1;
                for (i, l) in lines.iter().enumerate() {
                    self.out.extend_from_slice(format!("250{}{l}\r\n", if i == last { ' ' } else { '-' }).as_bytes());
                }
            }
            Request::Helo { host: client } | Request::Lhlo { host: client } => {
                self.reset_transaction();
                self.helo = Some(client);
                self.reply(SmtpReply::new(250, host));
            }
            Request::Mail { from } => {
                if self.helo.is_none() {
                    return self.error(SmtpReply::new(503, "5.5.1 Error: send HELO/EHLO first"));
                }
                if self.envelope.is_some() || self.bdat.is_some() {
                    return self.error(SmtpReply::new(503, "5.5.1 Error: nested MAIL command"));
                }
                if self.settings.smtp.require_tls && !self.is_tls() {
                    return self.error(SmtpReply::new(530, "5.7.0 Must issue a STARTTLS command first"));
                }
                if from.size > self.settings.smtp.max_message_size {
                    self.reply(SmtpReply::new(552, "5.3.4 Message size exceeds fixed limit"));
                    return Ok(());
                }
                self.envelope = Some(Envelope {
                    mail_from: from.address,
                    rcpt_to: Vec::new(),
                    body_8bitmime: from.flags & MAIL_BODY_8BITMIME != 0,
                    smtputf8: from.flags & MAIL_SMTPUTF8 != 0,
                    xforward: std::mem::take(&mut self.xforward),
                    ..Default::default()
                });
                self.reply(SmtpReply::new(250, "2.1.0 Ok"));
            }
            Request::Rcpt { to } => {
                let max = self.settings.smtp.max_recipients;
                let Some(env) = self.envelope.as_mut() else {
                    return self.error(SmtpReply::new(503, "5.5.1 Error: need MAIL command"));
                };
                if env.rcpt_to.len() >= max {
                    self.reply(SmtpReply::new(452, "4.5.3 Error: too many recipients"));
                    return Ok(());
                }
                if to.address.is_empty() {
                    return self.error(SmtpReply::new(501, "5.1.3 Bad recipient address syntax"));
                }
                env.rcpt_to.push(to.address);
                self.reply(SmtpReply::new(250, "2.1.5 Ok"));
            }
            Request::Data => return self.data().await,
            Request::Bdat { chunk_size, is_last } => return self.bdat(chunk_size, is_last).await,
            Request::StartTls => return self.starttls().await,
            Request::Rset => {
                self.reset_transaction();
                self.reply(SmtpReply::new(250, "2.0.0 Ok"));
            }
            Request::Noop { .. } => self.reply(SmtpReply::new(250, "2.0.0 Ok")),
            Request::Quit => return Err(self.close_with(SmtpReply::new(221, "2.0.0 Bye"))),
            Request::Vrfy { .. } => self.reply(SmtpReply::new(252, "2.5.2 Cannot VRFY user")),
            Request::Help { .. } => {
                self.reply(SmtpReply::new(214, "2.0.0 mailgrip: see https://joinup.ec.europa.eu/licence/eupl"))
            }
            _ => return self.error(SmtpReply::new(502, "5.5.1 Error: command not implemented")),
        }
        Ok(())
    }

    fn is_tls(&self) -> bool {
        matches!(self.stream, MaybeTls::Tls(_))
    }

    async fn starttls(&mut self) -> Result<(), Close> {
        let Some(acceptor) = self.settings.tls.clone() else {
            return self.error(SmtpReply::new(502, "5.5.1 Error: command not implemented"));
        };
        if self.is_tls() {
            return self.error(SmtpReply::new(503, "5.5.1 Error: TLS already active"));
        }
        if self.envelope.is_some() || self.bdat.is_some() || self.bdat_failed {
            return self.error(SmtpReply::new(503, "5.5.1 Error: MAIL transaction in progress"));
        }
        self.reply(SmtpReply::new(220, "2.0.0 Ready to start TLS"));
        self.flush().await?;
        // CVE-2011-0411: whatever came with or after the STARTTLS line was sent in plain text
        // and must not be executed inside the TLS session.
        let pipelined = self.inbuf.len() - self.start;
        if pipelined > 0 {
            warn!(bytes = pipelined, "input pipelined after STARTTLS discarded");
            self.gateway.metrics.error("ingress", "starttls_pipelining");
        }
        self.inbuf.clear();
        self.start = 0;
        let tcp = self.stream.take_plain().expect("checked: not TLS yet");
        let wait = self.settings.smtp.command_timeout().min(self.deadline.saturating_duration_since(Instant::now()));
        match tokio::time::timeout(wait, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => self.stream = MaybeTls::Tls(Box::new(tls.into())),
            Ok(Err(e)) => {
                info!(error = %e, "TLS handshake failed");
                self.gateway.metrics.error("ingress", "tls_handshake");
                return Err(Close::Gone);
            }
            Err(_) => {
                info!("TLS handshake timed out");
                self.gateway.metrics.error("ingress", "tls_handshake");
                return Err(Close::Gone);
            }
        }
        if let Some(tls) = self.stream.tls_info() {
            info!(version = tls.version, cipher = tls.cipher, "STARTTLS");
            self.gateway.metrics.tls_sessions.with_label_values(&[tls.version, tls.cipher]).inc();
        }
        // RFC 3207 4.2: discard all knowledge obtained from the client before TLS.
        self.helo = None;
        self.xforward.clear();
        self.reset_transaction();
        Ok(())
    }

    /// Check that a transaction can take a body now.
    fn ready_for_body(&self) -> Option<SmtpReply> {
        match &self.envelope {
            None => Some(SmtpReply::new(503, "5.5.1 Error: need MAIL command")),
            Some(env) if env.rcpt_to.is_empty() => Some(SmtpReply::new(554, "5.5.1 Error: no valid recipients")),
            _ => None,
        }
    }

    async fn data(&mut self) -> Result<(), Close> {
        if self.bdat.is_some() || self.bdat_failed {
            return self.error(SmtpReply::new(503, "5.5.1 Error: DATA after BDAT"));
        }
        if let Some(r) = self.ready_for_body() {
            return self.error(r);
        }
        self.reply(SmtpReply::new(354, "End data with <CR><LF>.<CR><LF>"));
        let mut decoder = DataDecoder::new(self.settings.smtp.max_message_size);
        loop {
            if let Some(used) = decoder.feed(&self.inbuf[self.start..]) {
                self.start += used;
                break;
            }
            self.start = self.inbuf.len();
            self.fill(false).await?;
        }
        if decoder.overflowed() {
            self.reset_transaction();
            self.gateway.metrics.error("ingress", "too_big");
            self.reply(SmtpReply::new(552, "5.3.4 Message size exceeds fixed limit"));
            return Ok(());
        }
        self.deliver(decoder.body).await;
        Ok(())
    }

    async fn bdat(&mut self, size: usize, last: bool) -> Result<(), Close> {
        let max = self.settings.smtp.max_message_size;
        let problem = if self.bdat_failed {
            None // already answered; swallow quietly until LAST
        } else if let Some(r) = self.ready_for_body() {
            Some(r)
        } else if self.bdat.as_ref().map_or(0, Vec::len) + size > max {
            self.gateway.metrics.error("ingress", "too_big");
            Some(SmtpReply::new(552, "5.3.4 Message size exceeds fixed limit"))
        } else {
            None
        };
        let keep = problem.is_none() && !self.bdat_failed;
        // The chunk's bytes must be read in every case, or they would be taken for commands.
        let mut chunk = if keep { self.bdat.take().unwrap_or_default() } else { Vec::new() };
        let mut left = size;
        while left > 0 {
            if self.start == self.inbuf.len() {
                self.fill(false).await?;
            }
            let take = left.min(self.inbuf.len() - self.start);
            if keep {
                chunk.extend_from_slice(&self.inbuf[self.start..self.start + take]);
            }
            self.start += take;
            left -= take;
        }
        if let Some(r) = problem {
            self.bdat = None;
            self.bdat_failed = !last && self.envelope.is_some();
            if last {
                self.reset_transaction();
            }
            return self.error(r);
        }
        if self.bdat_failed {
            if last {
                self.reset_transaction();
            }
            self.reply(SmtpReply::new(503, "5.5.1 Error: earlier BDAT chunk failed"));
            return Ok(());
        }
        if last {
            self.deliver(chunk).await;
        } else {
            self.bdat = Some(chunk);
            self.reply(SmtpReply::new(250, format!("2.0.0 {size} octets received")));
        }
        Ok(())
    }

    /// The body is complete: run the pipeline and answer.
    async fn deliver(&mut self, body: Vec<u8>) {
        let env = self.envelope.take().expect("checked by ready_for_body");
        self.reset_transaction();
        // Flush what was pipelined before, so the client is not left waiting while we work.
        let _ = self.flush().await;
        let reply = self.gateway.get().process(env, body).await;
        if !reply.is_positive() {
            info!(code = reply.code, "transaction not accepted");
        }
        self.reply(reply);
    }
}
