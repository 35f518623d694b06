//! TLS test kit: a test CA made at test time (rcgen), a client that upgrades with STARTTLS, and a
//! next hop that offers STARTTLS and records whether each message came over TLS.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::{Client, Received};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A test CA and a server certificate it issued for `localhost` and `127.0.0.1`, as PEM files in
/// a temporary folder; plus an unrelated key, for "key does not fit the certificate".
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub other_key: PathBuf,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.distinguished_name.push(DnType::CommonName, "mailgrip test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, "localhost");
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        let write = |name: &str, pem: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).unwrap();
            path
        };
        Pki {
            ca: write("ca.pem", ca.pem()),
            // The chain as a server sends it: leaf, then the CA.
            cert: write("cert.pem", format!("{}{}", cert.pem(), ca.pem())),
            key: write("key.pem", key.serialize_pem()),
            other_key: write("other-key.pem", KeyPair::generate().unwrap().serialize_pem()),
            dir,
        }
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        let chain = CertificateDer::pem_file_iter(&self.cert).unwrap().map(|c| c.unwrap()).collect();
        let key = PrivateKeyDer::from_pem_file(&self.key).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        TlsAcceptor::from(Arc::new(config))
    }

    /// A client that trusts only the test CA.
    pub fn connector(&self) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&self.ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        TlsConnector::from(Arc::new(config))
    }
}

/// An SMTP client after STARTTLS.
pub struct TlsClient {
    pub stream: BufReader<tokio_rustls::client::TlsStream<TcpStream>>,
    pub version: String,
}

impl TlsClient {
    /// EHLO, STARTTLS, handshake (verifying `localhost` against the test CA). The plain EHLO
    /// reply is returned too.
    pub async fn upgrade(mut plain: Client, pki: &Pki) -> (TlsClient, String) {
        let ehlo = plain.cmd("EHLO client.test").await.unwrap();
        let r = plain.cmd("STARTTLS").await.unwrap();
        assert!(r.starts_with("220 "), "STARTTLS: {r}");
        assert!(plain.stream.buffer().is_empty(), "server sent more than the 220");
        let tcp = plain.stream.into_inner();
        let name = ServerName::try_from("localhost").unwrap();
        let tls = tokio::time::timeout(Duration::from_secs(20), pki.connector().connect(name, tcp))
            .await
            .expect("handshake timed out")
            .expect("handshake");
        let version = format!("{:?}", tls.get_ref().1.protocol_version().unwrap());
        (TlsClient { stream: BufReader::new(tls), version }, ehlo)
    }

    pub async fn reply(&mut self) -> std::io::Result<String> {
        read_reply(&mut self.stream).await
    }

    pub async fn send(&mut self, raw: &[u8]) {
        self.stream.get_mut().write_all(raw).await.unwrap();
        self.stream.get_mut().flush().await.unwrap();
    }

    pub async fn cmd(&mut self, line: &str) -> std::io::Result<String> {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }
}

/// One (possibly multi-line) reply, lines joined by '\n'.
pub async fn read_reply<S: AsyncRead + Unpin>(r: &mut BufReader<S>) -> std::io::Result<String> {
    let mut all = Vec::new();
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(60), r.read_line(&mut line))
            .await
            .map_err(|_| std::io::Error::other("reply timeout"))??;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed"));
        }
        let line = line.trim_end().to_string();
        let last = line.as_bytes().get(3) != Some(&b'-');
        all.push(line);
        if last {
            return Ok(all.join("\n"));
        }
    }
}

/// A message as the TLS sink received it.
#[derive(Debug, Clone)]
pub struct TlsReceived {
    pub message: Received,
    /// It came inside a TLS session...
    pub tls: bool,
    /// ...in which the client said EHLO again (RFC 3207).
    pub ehlo_in_session: bool,
    /// The XFORWARD lines of the transaction.
    pub xforward: Vec<String>,
}

/// How the TLS sink's STARTTLS behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkTls {
    /// Offer STARTTLS and complete the handshake.
    Offer,
    /// Offer STARTTLS, answer 220, then send garbage instead of a handshake.
    Broken,
}

/// A next hop offering STARTTLS (and XFORWARD). It takes mail in plain text too, recorded with
/// `tls: false`, so a test sees a downgrade instead of a hang.
pub struct TlsSink {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<TlsReceived>>>,
    /// Connections accepted so far.
    pub connections: Arc<AtomicUsize>,
}

impl TlsSink {
    pub async fn start(acceptor: TlsAcceptor, mode: SinkTls) -> TlsSink {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (r, n) = (received.clone(), connections.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                n.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(tls_sink_session(stream, acceptor.clone(), mode, r.clone()));
            }
        });
        TlsSink { addr, received, connections }
    }

    pub fn messages(&self) -> Vec<TlsReceived> {
        self.received.lock().unwrap().clone()
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub async fn wait_for(&self, n: usize) -> Vec<TlsReceived> {
        for _ in 0..200 {
            if self.received.lock().unwrap().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        self.messages()
    }
}

async fn tls_sink_session(
    stream: TcpStream,
    acceptor: TlsAcceptor,
    mode: SinkTls,
    received: Arc<Mutex<Vec<TlsReceived>>>,
) {
    let mut r = BufReader::new(stream);
    let _ = r.get_mut().write_all(b"220 tls-sink ESMTP\r\n").await;
    if !sink_commands(&mut r, false, &received).await {
        return;
    }
    // STARTTLS was answered 220.
    let mut tcp = r.into_inner();
    if mode == SinkTls::Broken {
        let _ = tcp.write_all(b"this is not a TLS record\r\n").await;
        return;
    }
    let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await else {
        return;
    };
    let mut r = BufReader::new(tls);
    sink_commands(&mut r, true, &received).await;
}

/// Serve commands until QUIT / EOF (false) or an accepted STARTTLS (true).
async fn sink_commands<S: AsyncRead + AsyncWrite + Unpin>(
    r: &mut BufReader<S>,
    tls: bool,
    received: &Arc<Mutex<Vec<TlsReceived>>>,
) -> bool {
    let mut ehlo = false;
    let mut from = String::new();
    let mut rcpts = Vec::new();
    let mut xforward = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
            return false;
        }
        let upper = line.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") {
            ehlo = true;
            let starttls = if tls { "" } else { "250-STARTTLS\r\n" };
            format!("250-tls-sink\r\n250-PIPELINING\r\n{starttls}250-XFORWARD NAME ADDR HELO\r\n250 8BITMIME\r\n")
        } else if upper.starts_with("STARTTLS") && !tls {
            let _ = r.get_mut().write_all(b"220 2.0.0 go ahead\r\n").await;
            let _ = r.get_mut().flush().await;
            return true;
        } else if upper.starts_with("XFORWARD") {
            xforward.push(line.trim_end().to_string());
            "250 2.0.0 ok\r\n".into()
        } else if upper.starts_with("MAIL FROM:") {
            from = line[10..].trim_end().split(' ').next().unwrap_or("").trim_matches(['<', '>']).to_string();
            rcpts.clear();
            "250 2.1.0 ok\r\n".into()
        } else if upper.starts_with("RCPT TO:") {
            rcpts.push(line[8..].trim_end().trim_matches(['<', '>']).to_string());
            "250 2.1.5 ok\r\n".into()
        } else if upper.starts_with("DATA") {
            let _ = r.get_mut().write_all(b"354 go\r\n").await;
            let _ = r.get_mut().flush().await;
            let mut data = Vec::new();
            loop {
                let mut l = Vec::new();
                if r.read_until(b'\n', &mut l).await.unwrap_or(0) == 0 {
                    return false;
                }
                if l == b".\r\n" {
                    break;
                }
                if l.starts_with(b"..") {
                    l.remove(0);
                }
                data.extend_from_slice(&l);
            }
            received.lock().unwrap().push(TlsReceived {
                message: Received { mail_from: from.clone(), rcpt_to: rcpts.clone(), data },
                tls,
                ehlo_in_session: ehlo,
                xforward: std::mem::take(&mut xforward),
            });
            "250 2.0.0 queued\r\n".into()
        } else if upper.starts_with("RSET") {
            rcpts.clear();
            "250 2.0.0 ok\r\n".into()
        } else if upper.starts_with("QUIT") {
            let _ = r.get_mut().write_all(b"221 bye\r\n").await;
            let _ = r.get_mut().shutdown().await;
            return false;
        } else {
            "250 ok\r\n".into()
        };
        if r.get_mut().write_all(reply.as_bytes()).await.is_err() || r.get_mut().flush().await.is_err() {
            return false;
        }
    }
}
