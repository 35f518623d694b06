//! Test harness: starts `mailgrip::run` on ephemeral ports with a real downstream SMTP listener
//! (the [`Sink`]), and a small SMTP client that speaks the protocol byte by byte.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use mailgrip::config::{Config, RelayMode};

pub mod tls;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(repo().join("tests/fixtures/mail").join(name)).unwrap()
}

/// One message as the sink received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    pub data: Vec<u8>,
}

/// How the sink answers.
#[derive(Debug, Clone, Copy)]
pub enum SinkMode {
    Accept,
    /// Greet with `421` and hang up: a next hop that is down.
    Down,
    /// Answer end-of-data with this code.
    DataReply(u16),
    /// Answer every RCPT with this code.
    RcptReply(u16),
}

/// A real SMTP server standing in for the next hop. Its DATA decoding is written here,
/// independently of mailgrip's.
pub struct Sink {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    pub mode: Arc<Mutex<SinkMode>>,
    pub mail_lines: Arc<Mutex<Vec<String>>>,
}

impl Sink {
    pub async fn start() -> Sink {
        Sink::start_at("127.0.0.1:0".parse().unwrap()).await
    }

    /// A sink on a given address (e.g. a port reserved earlier, for a next hop that comes up late).
    pub async fn start_at(addr: SocketAddr) -> Sink {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let mode = Arc::new(Mutex::new(SinkMode::Accept));
        let mail_lines = Arc::new(Mutex::new(Vec::new()));
        let (r, m, e) = (received.clone(), mode.clone(), mail_lines.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(sink_session(stream, r.clone(), m.clone(), e.clone()));
            }
        });
        Sink { addr, received, mode, mail_lines }
    }

    pub fn messages(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn set_mode(&self, mode: SinkMode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// Wait (bounded) until `n` messages arrived.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        for _ in 0..200 {
            if self.received.lock().unwrap().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        self.messages()
    }
}

async fn sink_session(
    stream: TcpStream,
    received: Arc<Mutex<Vec<Received>>>,
    mode: Arc<Mutex<SinkMode>>,
    mail_lines: Arc<Mutex<Vec<String>>>,
) {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    if matches!(*mode.lock().unwrap(), SinkMode::Down) {
        let _ = w.write_all(b"421 4.3.2 sink down\r\n").await;
        return;
    }
    let _ = w.write_all(b"220 sink ESMTP\r\n").await;
    let mut from = String::new();
    let mut rcpts = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let upper = line.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") {
            "250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 100000000\r\n".into()
        } else if upper.starts_with("MAIL FROM:") {
            mail_lines.lock().unwrap().push(line.trim_end().to_string());
            from = line[10..].trim_end().split(' ').next().unwrap_or("").trim_matches(['<', '>']).to_string();
            rcpts.clear();
            "250 2.1.0 ok\r\n".into()
        } else if upper.starts_with("RCPT TO:") {
            let code = match *mode.lock().unwrap() {
                SinkMode::RcptReply(c) => c,
                _ => 250,
            };
            rcpts.push(line[8..].trim_end().trim_matches(['<', '>']).to_string());
            format!("{code} {}.1.5 rcpt\r\n", code / 100)
        } else if upper.starts_with("DATA") {
            let _ = w.write_all(b"354 go\r\n").await;
            let mut data = Vec::new();
            loop {
                let mut l = Vec::new();
                if r.read_until(b'\n', &mut l).await.unwrap_or(0) == 0 {
                    return;
                }
                if l == b".\r\n" {
                    break;
                }
                if l.starts_with(b"..") {
                    l.remove(0);
                }
                data.extend_from_slice(&l);
            }
            let code = match *mode.lock().unwrap() {
                SinkMode::DataReply(c) => c,
                _ => 250,
            };
            if code == 250 {
                received.lock().unwrap().push(Received { mail_from: from.clone(), rcpt_to: rcpts.clone(), data });
            }
            format!("{code} {}.0.0 data\r\n", code / 100)
        } else if upper.starts_with("RSET") {
            rcpts.clear();
            "250 2.0.0 ok\r\n".into()
        } else if upper.starts_with("QUIT") {
            let _ = w.write_all(b"221 bye\r\n").await;
            return;
        } else {
            "250 ok\r\n".into()
        };
        if w.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// A running gateway.
pub struct Gateway {
    pub smtp: SocketAddr,
    pub metrics: SocketAddr,
    pub shutdown: CancellationToken,
    pub dir: tempfile::TempDir,
    pub task: tokio::task::JoinHandle<()>,
}

impl Gateway {
    pub fn archive_dir(&self) -> PathBuf {
        self.dir.path().join("archive")
    }

    pub async fn metrics_text(&self) -> String {
        http_get(self.metrics, "/metrics").await.1
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Config for tests: the tiny model, temp dirs, relay to `next_hop` (or a dir when `None`).
pub fn test_config(dir: &Path, next_hop: Option<SocketAddr>) -> Config {
    let mut cfg = Config::default();
    cfg.smtp.listen = "127.0.0.1:0".into();
    cfg.metrics.listen = "127.0.0.1:0".into();
    cfg.model.dir = repo().join("tests/fixtures/tiny-model");
    cfg.archive.dir = dir.join("archive");
    cfg.archive.restricted_dir = dir.join("archive-restricted");
    cfg.review.dir = dir.join("review");
    cfg.audit.path = dir.join("audit/audit.jsonl");
    cfg.audit.review_path = dir.join("audit/review.jsonl");
    match next_hop {
        Some(addr) => {
            cfg.relay.mode = RelayMode::Smtp;
            cfg.relay.next_hop = addr.to_string();
        }
        None => {
            cfg.relay.mode = RelayMode::Dir;
            cfg.relay.dir = dir.join("outbox");
        }
    }
    cfg.relay.connect_timeout_secs = 2;
    cfg.relay.reply_timeout_secs = 10;
    cfg
}

pub async fn start(next_hop: Option<SocketAddr>, tweak: impl FnOnce(&mut Config)) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path(), next_hop);
    tweak(&mut cfg);
    let Running { smtp, metrics, shutdown, task } = serve(cfg, None).await;
    Gateway { smtp, metrics, shutdown, dir, task }
}

/// A daemon serving SMTP and metrics on fresh loopback ports.
pub struct Running {
    pub smtp: SocketAddr,
    pub metrics: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
}

/// Validate `cfg`, run `mailgrip::run_with_reload` on fresh ports until `shutdown`, and return
/// once the SMTP listener greets (the model loads before the listener is served).
pub async fn serve(cfg: Config, reload: Option<mailgrip::Reload>) -> Running {
    cfg.validate().expect("test config must validate");
    let smtp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (smtp_addr, metrics_addr) = (smtp.local_addr().unwrap(), metrics.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let s = shutdown.clone();
    let task = tokio::spawn(async move {
        let listeners = mailgrip::Listeners { smtp: Some(smtp), metrics: Some(metrics), ..Default::default() };
        mailgrip::run_with_reload(cfg, listeners, s, reload).await.expect("gateway failed");
    });
    let mut ok = false;
    for _ in 0..400 {
        if let Ok(mut c) = Client::connect(smtp_addr).await {
            if c.greeting.starts_with("220") || c.greeting.starts_with("554") {
                let _ = c.cmd("QUIT").await;
                ok = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(ok, "gateway did not come up");
    Running { smtp: smtp_addr, metrics: metrics_addr, shutdown, task }
}

/// A plain SMTP client.
pub struct Client {
    pub stream: BufReader<TcpStream>,
    pub greeting: String,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> std::io::Result<Client> {
        let stream = TcpStream::connect(addr).await?;
        let mut c = Client { stream: BufReader::new(stream), greeting: String::new() };
        c.greeting = tokio::time::timeout(Duration::from_secs(20), c.reply())
            .await
            .map_err(|_| std::io::Error::other("no greeting"))??;
        Ok(c)
    }

    /// Read one (possibly multi-line) reply; returns all its lines joined by '\n'.
    pub async fn reply(&mut self) -> std::io::Result<String> {
        let mut all = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(60), self.stream.read_line(&mut line))
                .await
                .map_err(|_| std::io::Error::other("reply timeout"))??;
            if n == 0 {
                return if all.is_empty() {
                    Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed"))
                } else {
                    Ok(all.join("\n"))
                };
            }
            let line = line.trim_end().to_string();
            let last = line.as_bytes().get(3) != Some(&b'-');
            all.push(line);
            if last {
                return Ok(all.join("\n"));
            }
        }
    }

    pub async fn send(&mut self, raw: &[u8]) {
        self.stream.get_mut().write_all(raw).await.unwrap();
    }

    pub async fn cmd(&mut self, line: &str) -> std::io::Result<String> {
        self.stream.get_mut().write_all(format!("{line}\r\n").as_bytes()).await?;
        self.reply().await
    }

    /// DATA with dot-stuffing; returns the end-of-data reply.
    pub async fn data(&mut self, message: &[u8]) -> String {
        let r = self.cmd("DATA").await.unwrap();
        assert!(r.starts_with("354"), "{r}");
        self.send(&dot_stuff(message)).await;
        self.reply().await.unwrap()
    }

    /// A whole transaction: EHLO must have been sent.
    pub async fn transaction(&mut self, from: &str, to: &[&str], message: &[u8]) -> String {
        let r = self.cmd(&format!("MAIL FROM:<{from}>")).await.unwrap();
        assert!(r.starts_with("250"), "MAIL: {r}");
        for t in to {
            let r = self.cmd(&format!("RCPT TO:<{t}>")).await.unwrap();
            assert!(r.starts_with("250"), "RCPT: {r}");
        }
        self.data(message).await
    }

    pub async fn read_to_end(&mut self) -> String {
        let mut s = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.stream.read_to_string(&mut s)).await;
        s
    }
}

pub fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 16);
    let mut line_start = true;
    for &b in message {
        if line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        line_start = b == b'\n';
    }
    if !message.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// GET over plain HTTP/1.1; returns (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let status = buf.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// Sum of a counter over all label sets, from the text exposition.
pub fn metric_sum(text: &str, name: &str, label_filter: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' ')))
        .filter(|l| l.contains(label_filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Every file below `dir`, recursively (empty when `dir` does not exist).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() { out.extend(files_under(&p)) } else { out.push(p) }
        }
    }
    out
}

/// Split a received message into our prepended header lines and the rest.
pub fn split_tags(data: &[u8]) -> (Vec<String>, Vec<u8>) {
    let mut tags = Vec::new();
    let mut pos = 0;
    while data[pos..].len() >= 11 && data[pos..pos + 11].eq_ignore_ascii_case(b"X-Mailgrip-") {
        let end = pos + data[pos..].iter().position(|&b| b == b'\n').unwrap() + 1;
        tags.push(String::from_utf8_lossy(&data[pos..end]).trim_end().to_string());
        pos = end;
    }
    (tags, data[pos..].to_vec())
}

// ---- MDTO schema validation (xmllint + the official XSD beside the repository)

const INSTALL: &str = "install it with `apt-get update && apt-get install -y libxml2-utils` \
                       (or set XMLLINT to its path)";

pub fn xmllint() -> PathBuf {
    let bin = std::env::var_os("XMLLINT").map_or_else(|| PathBuf::from("xmllint"), PathBuf::from);
    match Command::new(&bin).arg("--version").output() {
        Ok(out) if out.status.success() => bin,
        Ok(out) => panic!("`{} --version` failed ({}): {INSTALL}", bin.display(), String::from_utf8_lossy(&out.stderr)),
        Err(e) => panic!("xmllint not found ({}: {e}): {INSTALL}", bin.display()),
    }
}

pub fn xsd() -> PathBuf {
    let path = std::env::var_os("MDTO_XSD")
        .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/mdto/MDTO-XML1.0.1.xsd"), PathBuf::from);
    assert!(
        path.is_file(),
        "MDTO XSD not found at {}: set MDTO_XSD to MDTO-XML1.0.1.xsd (published by the Nationaal \
         Archief at https://www.nationaalarchief.nl/mdto/MDTO-XML1.0.1.xsd)",
        path.display()
    );
    path
}

/// Run `xmllint --noout --schema` over `files`; Ok or the tool's complaint.
pub fn validate(files: &[PathBuf]) -> Result<(), String> {
    let out = Command::new(xmllint())
        .arg("--noout")
        .arg("--schema")
        .arg(xsd())
        .args(files)
        .output()
        .expect("running xmllint");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        // Each valid file is reported as "FILE validates".
        assert_eq!(stderr.matches(" validates").count(), files.len(), "{stderr}");
        Ok(())
    } else {
        Err(stderr)
    }
}
