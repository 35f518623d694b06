//! SMTP client to the next hop: pooled connections with TCP_NODELAY, the envelope preserved
//! (sender, every recipient, BODY=8BITMIME, SMTPUTF8), PIPELINING of MAIL and RCPT when offered.
//!
//! A transaction is all-or-nothing: if the next hop refuses any recipient, the transaction is
//! reset and the whole message gets that answer, so the MTA in front retries or bounces it as one
//! and no recipient gets it twice.
//!
//! STARTTLS per `relay.tls` (see [`super::tls`]): after the upgrade the session starts over with
//! EHLO, as RFC 3207 asks; a pooled connection keeps its TLS session.

use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tracing::{debug, error, warn};

use super::tls::RelayTlsSettings;
use super::{RelayError, Reply};
use crate::config::{RelayConfig, RelayTls};
use crate::envelope::Envelope;
use crate::ingress::tls::{MaybeTls, TlsInfo};

/// What the next hop advertised in its EHLO reply.
#[derive(Debug, Default, Clone, Copy)]
struct Caps {
    pipelining: bool,
    eightbit: bool,
    smtputf8: bool,
    xforward: bool,
    starttls: bool,
    size: Option<usize>,
}

struct Conn {
    stream: BufStream<MaybeTls>,
    caps: Caps,
    reply_timeout: Duration,
    /// What TLS negotiated; `None` for plain SMTP.
    tls: Option<TlsInfo>,
}

/// Why a connection could not be opened; `handshake` says the TLS handshake itself failed (after
/// which the connection is unusable, so opportunistic TLS starts over in plain text).
struct OpenError {
    error: RelayError,
    handshake: bool,
}

impl From<RelayError> for OpenError {
    fn from(error: RelayError) -> Self {
        OpenError { error, handshake: false }
    }
}

/// A 4xx of our own for a TLS problem with the next hop: the MTA keeps the message and retries.
fn tls_deferral(text: String) -> RelayError {
    RelayError::Deferred(Reply { code: 451, text })
}

impl Conn {
    async fn read_reply(&mut self) -> Result<Reply, RelayError> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(self.reply_timeout, self.stream.read_line(&mut line))
                .await
                .map_err(|_| RelayError::Unreachable("timed out waiting for the next hop's reply".into()))?
                .map_err(|e| RelayError::Unreachable(format!("reading reply: {e}")))?;
            if n == 0 {
                return Err(RelayError::Unreachable("next hop closed the connection".into()));
            }
            let line = line.trim_end_matches(['\r', '\n']).to_string();
            let code = line.get(..3).and_then(|c| c.parse::<u16>().ok());
            let Some(code) = code else {
                return Err(RelayError::Unreachable(format!("malformed reply {line:?}")));
            };
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line.get(4..).unwrap_or("").to_string());
            if lines.len() > 100 {
                return Err(RelayError::Unreachable("reply too long".into()));
            }
            if last {
                return Ok(Reply { code, text: lines.join(" / ") });
            }
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), RelayError> {
        self.stream.write_all(bytes).await.map_err(|e| RelayError::Unreachable(format!("writing: {e}")))
    }

    async fn flush(&mut self) -> Result<(), RelayError> {
        self.stream.flush().await.map_err(|e| RelayError::Unreachable(format!("writing: {e}")))
    }

    async fn command(&mut self, cmd: &str) -> Result<Reply, RelayError> {
        self.write(cmd.as_bytes()).await?;
        self.flush().await?;
        self.read_reply().await
    }
}

pub struct SmtpRelay {
    addr: String,
    helo: String,
    connect_timeout: Duration,
    reply_timeout: Duration,
    pool_size: usize,
    idle: Duration,
    pool: Mutex<Vec<(Conn, Instant)>>,
    /// Checked by `Config::validate` before start; an error here means a file changed since, and
    /// every message is deferred (never sent in a weaker mode than configured).
    tls: Result<RelayTlsSettings, String>,
}

impl SmtpRelay {
    pub fn new(cfg: &RelayConfig) -> SmtpRelay {
        SmtpRelay {
            addr: cfg.next_hop.clone(),
            helo: cfg.helo_name.clone(),
            connect_timeout: Duration::from_secs(cfg.connect_timeout_secs),
            reply_timeout: Duration::from_secs(cfg.reply_timeout_secs),
            pool_size: cfg.pool_size,
            idle: Duration::from_secs(cfg.pool_idle_secs),
            pool: Mutex::new(Vec::new()),
            tls: RelayTlsSettings::new(cfg).map_err(|e| {
                error!(error = %e, "relay TLS settings unusable; every message will be deferred");
                e.to_string()
            }),
        }
    }

    pub fn next_hop(&self) -> &str {
        &self.addr
    }

    /// A new connection in the mode `relay.tls` asks for.
    async fn connect(&self) -> Result<Conn, RelayError> {
        let tls = self.tls.as_ref().map_err(|e| RelayError::Unreachable(format!("relay TLS settings: {e}")))?;
        match self.open(tls).await {
            Ok(conn) => Ok(conn),
            Err(OpenError { error, handshake: true }) if tls.mode == RelayTls::Opportunistic => {
                warn!(next_hop = %self.addr, %error, "opportunistic TLS failed; relaying in plain text");
                let plain = RelayTlsSettings { mode: RelayTls::None, connector: None };
                self.open(&plain).await.map_err(|e| e.error)
            }
            Err(e) => Err(e.error),
        }
    }

    async fn open(&self, tls: &RelayTlsSettings) -> Result<Conn, OpenError> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(&self.addr))
            .await
            .map_err(|_| RelayError::Unreachable(format!("connecting to {} timed out", self.addr)))?
            .map_err(|e| RelayError::Unreachable(format!("connecting to {}: {e}", self.addr)))?;
        // Without this, Nagle + delayed ACK costs ~40 ms per message.
        stream.set_nodelay(true).map_err(|e| RelayError::Unreachable(format!("TCP_NODELAY: {e}")))?;
        let mut conn = Conn {
            stream: BufStream::new(MaybeTls::Plain(stream)),
            caps: Caps::default(),
            reply_timeout: self.reply_timeout,
            tls: None,
        };
        let greeting = conn.read_reply().await?;
        if greeting.code != 220 {
            return Err(greeting.into_error().into());
        }
        self.hello(&mut conn).await?;
        let Some((connector, name)) = &tls.connector else {
            return Ok(conn);
        };
        let required = tls.mode == RelayTls::Required;
        if !conn.caps.starttls {
            if required {
                let text = format!("4.7.4 next hop {} does not offer STARTTLS (relay.tls = required)", self.addr);
                return Err(tls_deferral(text).into());
            }
            return Ok(conn);
        }
        let reply = conn.command("STARTTLS\r\n").await?;
        if reply.code != 220 {
            if required {
                let text = format!("4.7.4 next hop {} refused STARTTLS: {} {}", self.addr, reply.code, reply.text);
                return Err(tls_deferral(text).into());
            }
            return Ok(conn); // RFC 3207: the session goes on in plain text
        }
        // Anything the next hop sent after its 220 would otherwise be read as if it came over
        // TLS; the buffer is dropped with the BufStream.
        let tcp = conn.stream.into_inner().take_plain().expect("connection is still plain");
        let handshake = tokio::time::timeout(self.connect_timeout, connector.connect(name.clone(), tcp)).await;
        let stream = match handshake {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let error = tls_deferral(format!("4.7.5 TLS handshake with next hop {} failed: {e}", self.addr));
                return Err(OpenError { error, handshake: true });
            }
            Err(_) => {
                let error = tls_deferral(format!("4.7.5 TLS handshake with next hop {} timed out", self.addr));
                return Err(OpenError { error, handshake: true });
            }
        };
        conn.stream = BufStream::new(MaybeTls::Tls(Box::new(stream.into())));
        conn.tls = conn.stream.get_ref().tls_info();
        if let Some(info) = conn.tls {
            debug!(next_hop = %self.addr, version = info.version, cipher = info.cipher, "TLS to the next hop");
        }
        // RFC 3207: forget what was learnt before TLS and ask again.
        conn.caps = Caps::default();
        self.hello(&mut conn).await?;
        conn.caps.starttls = false;
        Ok(conn)
    }

    /// EHLO (HELO if refused) and note the capabilities.
    async fn hello(&self, conn: &mut Conn) -> Result<(), RelayError> {
        let ehlo = conn.command(&format!("EHLO {}\r\n", self.helo)).await?;
        if ehlo.code == 250 {
            for kw in ehlo.text.split(" / ") {
                let mut words = kw.split_whitespace();
                match words.next().map(|w| w.to_ascii_uppercase()).as_deref() {
                    Some("PIPELINING") => conn.caps.pipelining = true,
                    Some("8BITMIME") => conn.caps.eightbit = true,
                    Some("SMTPUTF8") => conn.caps.smtputf8 = true,
                    Some("XFORWARD") => conn.caps.xforward = true,
                    Some("STARTTLS") => conn.caps.starttls = true,
                    Some("SIZE") => conn.caps.size = words.next().and_then(|s| s.parse().ok()).filter(|&s| s > 0),
                    _ => {}
                }
            }
        } else {
            let helo = conn.command(&format!("HELO {}\r\n", self.helo)).await?;
            if helo.code != 250 {
                return Err(helo.into_error());
            }
        }
        Ok(())
    }

    /// Check that the next hop accepts connections and greets (for `/readyz`).
    pub async fn probe(&self) -> Result<(), String> {
        let mut conn = self.connect().await.map_err(|e| e.to_string())?;
        let _ = conn.command("QUIT\r\n").await;
        Ok(())
    }

    async fn checkout(&self) -> Option<Conn> {
        let mut pool = self.pool.lock().await;
        while let Some((conn, since)) = pool.pop() {
            if since.elapsed() < self.idle {
                return Some(conn);
            }
        }
        None
    }

    async fn checkin(&self, conn: Conn) {
        let mut pool = self.pool.lock().await;
        if pool.len() < self.pool_size {
            pool.push((conn, Instant::now()));
        }
    }

    /// Deliver one message. `Ok` carries the next hop's final reply.
    pub async fn send(&self, env: &Envelope, message: &[u8]) -> Result<Reply, RelayError> {
        // A pooled connection may have been closed by the peer while idle: one retry on a fresh
        // connection is safe because nothing was delivered before the end-of-data reply.
        if let Some(mut conn) = self.checkout().await {
            match transaction(&mut conn, env, message).await {
                Ok(reply) => {
                    self.checkin(conn).await;
                    return Ok(reply);
                }
                Err(Attempt::Reusable(e)) => {
                    self.checkin(conn).await;
                    return Err(e);
                }
                Err(Attempt::Stale(_)) => {}
                Err(Attempt::Broken(e)) => return Err(e),
            }
        }
        let mut conn = self.connect().await?;
        match transaction(&mut conn, env, message).await {
            Ok(reply) => {
                self.checkin(conn).await;
                Ok(reply)
            }
            Err(Attempt::Reusable(e)) => {
                self.checkin(conn).await;
                Err(e)
            }
            Err(Attempt::Stale(e) | Attempt::Broken(e)) => Err(e),
        }
    }
}

enum Attempt {
    /// Refused by the next hop; the transaction was reset and the connection can be reused.
    Reusable(RelayError),
    /// The connection failed before the first reply of this transaction: try a fresh one.
    Stale(RelayError),
    /// The connection failed mid-transaction.
    Broken(RelayError),
}

fn address(a: &str) -> String {
    format!("<{a}>")
}

async fn transaction(conn: &mut Conn, env: &Envelope, message: &[u8]) -> Result<Reply, Attempt> {
    let caps = conn.caps;
    if env.smtputf8 && !caps.smtputf8 {
        return Err(Attempt::Reusable(RelayError::Refused(Reply {
            code: 553,
            text: "5.6.7 next hop does not support SMTPUTF8".into(),
        })));
    }
    if let Some(limit) = caps.size {
        if message.len() > limit {
            return Err(Attempt::Reusable(RelayError::Refused(Reply {
                code: 552,
                text: format!("5.3.4 message size exceeds the next hop's limit of {limit}"),
            })));
        }
    }
    let mut first = true;
    let fail = |first: bool, e: RelayError| {
        if first { Attempt::Stale(e) } else { Attempt::Broken(e) }
    };
    if caps.xforward && !env.xforward.is_empty() {
        let attrs: Vec<String> = env.xforward.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let r = conn.command(&format!("XFORWARD {}\r\n", attrs.join(" "))).await.map_err(|e| fail(first, e))?;
        first = false;
        if r.code != 250 {
            return Err(reset(conn, r.into_error()).await);
        }
    }
    let mut mail = format!("MAIL FROM:{}", address(&env.mail_from));
    if env.body_8bitmime && caps.eightbit {
        mail.push_str(" BODY=8BITMIME");
    }
    if env.smtputf8 {
        mail.push_str(" SMTPUTF8");
    }
    if caps.size.is_some() {
        mail.push_str(&format!(" SIZE={}", message.len()));
    }
    mail.push_str("\r\n");
    let rcpts: Vec<String> = env.rcpt_to.iter().map(|r| format!("RCPT TO:{}\r\n", address(r))).collect();
    let replies = if caps.pipelining {
        conn.write(mail.as_bytes()).await.map_err(|e| fail(first, e))?;
        for r in &rcpts {
            conn.write(r.as_bytes()).await.map_err(|e| fail(first, e))?;
        }
        conn.flush().await.map_err(|e| fail(first, e))?;
        let mut replies = Vec::with_capacity(rcpts.len() + 1);
        for _ in 0..=rcpts.len() {
            replies.push(conn.read_reply().await.map_err(|e| fail(first && replies.is_empty(), e))?);
        }
        replies
    } else {
        let mut replies = vec![conn.command(&mail).await.map_err(|e| fail(first, e))?];
        if replies[0].code == 250 {
            for r in &rcpts {
                replies.push(conn.command(r).await.map_err(Attempt::Broken)?);
            }
        }
        replies
    };
    if replies[0].code == 421 && first {
        return Err(Attempt::Stale(replies[0].clone().into_error()));
    }
    if let Some(bad) = replies.iter().find(|r| r.code / 100 != 2) {
        let err = bad.clone().into_error();
        return Err(reset(conn, err).await);
    }
    let data = conn.command("DATA\r\n").await.map_err(Attempt::Broken)?;
    if data.code != 354 {
        return Err(reset(conn, data.into_error()).await);
    }
    write_dot_stuffed(conn, message).await.map_err(Attempt::Broken)?;
    let done = conn.read_reply().await.map_err(Attempt::Broken)?;
    if done.code / 100 == 2 { Ok(done) } else { Err(Attempt::Reusable(done.into_error())) }
}

async fn reset(conn: &mut Conn, err: RelayError) -> Attempt {
    match conn.command("RSET\r\n").await {
        Ok(r) if r.code == 250 => Attempt::Reusable(err),
        _ => Attempt::Broken(err),
    }
}

/// Send the message body in DATA encoding: a '.' at the start of a line is doubled, the last line
/// ends with CRLF, then `.\r\n`.
async fn write_dot_stuffed(conn: &mut Conn, message: &[u8]) -> Result<(), RelayError> {
    let mut start = 0;
    let mut line_start = true;
    for (i, &b) in message.iter().enumerate() {
        if line_start && b == b'.' {
            conn.write(&message[start..=i]).await?;
            start = i; // the '.' is written again with the rest: doubled
        }
        line_start = b == b'\n';
    }
    conn.write(&message[start..]).await?;
    if !message.ends_with(b"\r\n") {
        conn.write(b"\r\n").await?;
    }
    conn.write(b".\r\n").await?;
    conn.flush().await
}
