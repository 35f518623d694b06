//! Configuration: one serde struct per section, layered and validated before anything starts.
//!
//! Layers, later ones win:
//! 1. the built-in defaults below (`Default` impls; `config/mailgrip.toml` documents the same values
//!    and a test keeps the two equal);
//! 2. the file given with `--config FILE`;
//! 3. environment variables `MAILGRIP__SECTION__KEY` (lists comma-separated).
//!
//! [`Config::validate`] turns the raw struct into something `run` can trust; its errors name the key.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub use crate::admin::AdminConfig;
pub use crate::archive::outbox::ArchiveSmtpConfig;
pub use crate::audit::AuditConfig;
use crate::classify::LABELS;
pub use crate::decide::{Action, PolicyConfig, PolicyMode, Strategy};
pub use crate::ingress::milter::{MilterConfig, OnMilterError};
pub use crate::mdto::MdtoConfig;

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub smtp: SmtpConfig,
    pub relay: RelayConfig,
    pub archive: ArchiveConfig,
    pub policy: PolicyConfig,
    pub review: ReviewConfig,
    pub audit: AuditConfig,
    pub mdto: MdtoConfig,
    pub model: ModelConfig,
    pub classify: ClassifyConfig,
    pub journal: JournalConfig,
    pub metrics: MetricsConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    pub milter: MilterConfig,
}

/// SMTP ingress: where Postfix (or another MTA) hands us mail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    /// Address to listen on. Empty: no SMTP listener (milter-only deployments).
    pub listen: String,
    /// Name used in the greeting and EHLO reply.
    pub hostname: String,
    /// Networks allowed to connect. Anyone else gets `554 5.7.1` and is disconnected.
    pub allowed_clients: Vec<String>,
    /// Networks whose XFORWARD attributes we accept and log (Postfix `smtp_send_xforward_command`).
    pub xforward_clients: Vec<String>,
    /// Largest message accepted, in bytes (advertised as SIZE).
    pub max_message_size: usize,
    /// Most recipients per transaction; more get `452 4.5.3`.
    pub max_recipients: usize,
    /// Most concurrent sessions; more get `421 4.3.2`.
    pub max_connections: usize,
    /// Seconds to wait for each command line or data chunk from the client.
    pub command_timeout_secs: u64,
    /// Upper bound on a whole session, in seconds.
    pub session_timeout_secs: u64,
    /// Protocol errors tolerated in one session before it is closed.
    pub max_errors: u32,
    /// PEM certificate chain (leaf first) offered after STARTTLS. Empty (with `tls_key`): no STARTTLS.
    pub tls_cert: PathBuf,
    /// PEM private key of `tls_cert` (PKCS#8, PKCS#1 or SEC1).
    pub tls_key: PathBuf,
    /// Refuse MAIL FROM before STARTTLS with `530 5.7.0` (port 25 facing Exchange). Needs `tls_cert`.
    pub require_tls: bool,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:10025".into(),
            hostname: "mailgrip.localdomain".into(),
            allowed_clients: vec!["127.0.0.0/8".into(), "::1/128".into()],
            xforward_clients: vec!["127.0.0.0/8".into(), "::1/128".into()],
            max_message_size: 50 * 1024 * 1024,
            max_recipients: 1000,
            max_connections: 100,
            command_timeout_secs: 300,
            session_timeout_secs: 3600,
            max_errors: 20,
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            require_tls: false,
        }
    }
}

/// Where a tagged message goes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RelayMode {
    /// SMTP to `relay.next_hop` (Postfix re-injection, Exchange, ...).
    Smtp,
    /// Write each message to `relay.dir` (for trying mailgrip without an MTA).
    Dir,
}

/// STARTTLS towards the next hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RelayTls {
    /// Never: plain SMTP even if STARTTLS is offered.
    None,
    /// As Postfix `smtp_tls_security_level = may` (RFC 7435): encrypt when STARTTLS is offered,
    /// without verifying the certificate; plain SMTP when it is not offered or the handshake fails.
    /// Protects against passive eavesdropping, not against an active attacker.
    Opportunistic,
    /// STARTTLS must be offered and the certificate must verify (`tls_ca`, `tls_server_name`);
    /// otherwise the message is deferred with `451` and the MTA retries.
    Required,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// `smtp` or `dir`.
    pub mode: RelayMode,
    /// host:port of the next hop in `smtp` mode.
    pub next_hop: String,
    /// Folder for `dir` mode.
    pub dir: PathBuf,
    /// Name we send in EHLO to the next hop.
    pub helo_name: String,
    /// Seconds to connect to the next hop.
    pub connect_timeout_secs: u64,
    /// Seconds to wait for each reply of the next hop (end of data included).
    pub reply_timeout_secs: u64,
    /// Idle connections kept open to the next hop.
    pub pool_size: usize,
    /// Seconds an idle pooled connection is kept.
    pub pool_idle_secs: u64,
    /// `none`, `opportunistic` or `required`. Default `opportunistic`: the shipped Postfix
    /// re-injection listener does not offer STARTTLS, so nothing changes there, and a next hop
    /// across the network that offers it (Exchange does by default) gets encrypted traffic.
    pub tls: RelayTls,
    /// PEM file of the trust anchors that verify the next hop with `tls = "required"` (they replace
    /// the system roots, so only your own CA can vouch for the next hop). Empty: the system roots.
    pub tls_ca: PathBuf,
    /// Name the next hop's certificate must carry with `tls = "required"`, also sent as SNI.
    /// Empty: the host part of `next_hop`.
    pub tls_server_name: String,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            mode: RelayMode::Dir,
            next_hop: "127.0.0.1:10026".into(),
            dir: "var/outbox".into(),
            helo_name: "mailgrip.localdomain".into(),
            connect_timeout_secs: 10,
            reply_timeout_secs: 300,
            pool_size: 16,
            pool_idle_secs: 30,
            tls: RelayTls::Opportunistic,
            tls_ca: PathBuf::new(),
            tls_server_name: String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// Write archive copies at all.
    pub enabled: bool,
    /// Root of the filesystem archive; copies go to `dir/YYYY/MM/DD/<id>.eml` + `<id>.json`.
    pub dir: PathBuf,
    /// Classes archived by the `classes` policy strategy (`policy.strategy = "classes"`).
    pub classes: Vec<String>,
    /// Store for `archive-restricted` copies (stricter access), laid out like `dir`.
    pub restricted_dir: PathBuf,
    /// `[archive.smtp]`: copies also go by SMTP to a journaling address, through a durable outbox.
    pub smtp: ArchiveSmtpConfig,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: "var/archive".into(),
            classes: vec!["functioneel".into()],
            restricted_dir: "var/archive-restricted".into(),
            smtp: ArchiveSmtpConfig::default(),
        }
    }
}

/// The review queue: copies held until an archivist decides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReviewConfig {
    /// Folder of held copies (`<id>.eml` + `<id>.json`), readable by the service user only.
    pub dir: PathBuf,
}

impl Default for ReviewConfig {
    fn default() -> Self {
        Self { dir: "var/review".into() }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Model directory with `manifest.toml`.
    pub dir: PathBuf,
    /// Path to `libonnxruntime.so`. Empty: `ORT_DYLIB_PATH`, then `.venv/lib/python3*/site-packages/onnxruntime/capi/`.
    pub ort_library: String,
    /// Inference worker threads (each owns an ONNX Runtime session).
    pub workers: usize,
    /// Threads ONNX Runtime uses inside one inference; 0 = cores / workers.
    pub intra_threads: usize,
    /// Requests waiting for a worker; further requests wait up to `queue_timeout_ms` for room.
    pub queue_size: usize,
    /// Milliseconds a request may wait for room in the queue and for its result.
    pub queue_timeout_ms: u64,
    /// Most messages inferred in one batch. Default 1: with dynamically quantized (int8) models
    /// the activation scale is taken over the whole batch, so batching would make a message's
    /// scores depend on the other traffic; and on CPU batching barely helps throughput.
    pub max_batch: usize,
    /// Microseconds a worker waits for more requests to fill a batch (0: take only what is queued).
    pub batch_window_us: u64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            dir: "models/mailgrip-nl".into(),
            ort_library: String::new(),
            workers: 1,
            intra_threads: 0,
            queue_size: 256,
            queue_timeout_ms: 30_000,
            max_batch: 1,
            batch_window_us: 0,
        }
    }
}

/// What happens to a message the classifier could not score (model error, overload, timeout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnClassifyError {
    /// Relay it tagged `X-Mailgrip-Class: unclassified` with the reason. Not archived.
    RelayUnclassified,
    /// Answer `451 4.3.0`: the MTA keeps the message and retries.
    Tempfail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClassifyConfig {
    /// `relay-unclassified` or `tempfail`.
    pub on_error: OnClassifyError,
}

impl Default for ClassifyConfig {
    fn default() -> Self {
        Self { on_error: OnClassifyError::RelayUnclassified }
    }
}

/// Exchange journal mode: mailgrip as the target of an Exchange journal rule.
///
/// A journal report that passes both checks below is unwrapped: the original message is
/// classified and archived with the report's envelope (BCC included), and nothing is relayed.
/// Every other message, including a report that fails a check (one on its way to another
/// archive through this smart host, say), flows through the normal relay path, so one instance
/// can be both Exchange's smart host and its journaling target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct JournalConfig {
    /// Recognise Exchange envelope journal reports (`X-MS-Journal-Report`) at all.
    pub enabled: bool,
    /// Envelope senders (MAIL FROM) trusted to send journal reports, e.g. the Microsoft Exchange
    /// recipient of your organisation; `<>` stands for the null sender. Empty: any sender from a
    /// client allowed by `smtp.allowed_clients`.
    pub senders: Vec<String>,
    /// mailgrip's journaling addresses: a report is unwrapped only when every RCPT TO is one of
    /// them. Empty: any recipient.
    pub recipients: Vec<String>,
}

impl JournalConfig {
    /// Whether a journal report in a transaction from `mail_from` to `rcpt_to` is ours to unwrap.
    pub fn trusts(&self, mail_from: &str, rcpt_to: &[String]) -> bool {
        let listed = |list: &[String], addr: &str| {
            list.iter()
                .any(|a| a.trim().trim_start_matches('<').trim_end_matches('>').eq_ignore_ascii_case(addr.trim()))
        };
        (self.senders.is_empty() || listed(&self.senders, mail_from))
            && !rcpt_to.is_empty()
            && (self.recipients.is_empty() || rcpt_to.iter().all(|r| listed(&self.recipients, r)))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address for `/metrics`, `/healthz` and `/readyz`. Empty disables the endpoint.
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { listen: "127.0.0.1:9925".into() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `pretty` or `json`.
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `mailgrip=debug`. `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Pretty, level: "info".into() }
    }
}

/// A configuration problem, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Load(#[from] config::ConfigError),
    #[error("{key}: {problem}")]
    Invalid { key: &'static str, problem: String },
    #[error("{0}")]
    Mdto(String),
}

fn invalid(key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, problem: problem.into() }
}

/// Keys whose environment form is a comma-separated list.
const LIST_KEYS: &[&str] = &[
    "smtp.allowed_clients",
    "smtp.xforward_clients",
    "archive.classes",
    "archive.smtp.rcpt_to",
    "archive.smtp.actions",
    "journal.senders",
    "journal.recipients",
];

impl Config {
    /// Load defaults, then `file` (if any), then `MAILGRIP__*` environment variables.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(file, std::env::vars())
    }

    /// As [`Config::load`], with the environment given explicitly (for tests).
    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let defaults = config::Config::try_from(&Config::default())?;
        let mut builder = config::Config::builder().add_source(defaults);
        if let Some(file) = file {
            builder = builder.add_source(config::File::from(file).required(true));
        }
        let env: config::Map<String, String> = env.into_iter().filter(|(k, _)| k.starts_with("MAILGRIP__")).collect();
        let mut source = config::Environment::with_prefix("MAILGRIP")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .source(Some(env));
        for key in LIST_KEYS {
            source = source.with_list_parse_key(key);
        }
        let cfg: Config = builder.add_source(source).build()?.try_deserialize()?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Check every value before anything starts.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.smtp.listen.is_empty() {
            parse_addr("smtp.listen", &self.smtp.listen)?;
        }
        if !self.milter.listen.is_empty() {
            parse_addr("milter.listen", &self.milter.listen)?;
            if self.milter.listen == self.smtp.listen {
                return Err(invalid("milter.listen", "equals smtp.listen"));
            }
        }
        if self.smtp.listen.is_empty() && self.milter.listen.is_empty() {
            return Err(invalid("smtp.listen", "empty, and milter.listen too: nothing would receive mail"));
        }
        positive("milter.max_connections", self.milter.max_connections as u64)?;
        parse_nets("smtp.allowed_clients", &self.smtp.allowed_clients)?;
        parse_nets("smtp.xforward_clients", &self.smtp.xforward_clients)?;
        if self.smtp.hostname.trim().is_empty() || self.smtp.hostname.contains(char::is_whitespace) {
            return Err(invalid("smtp.hostname", "must be a host name without spaces"));
        }
        positive("smtp.max_message_size", self.smtp.max_message_size as u64)?;
        positive("smtp.max_recipients", self.smtp.max_recipients as u64)?;
        positive("smtp.max_connections", self.smtp.max_connections as u64)?;
        positive("smtp.command_timeout_secs", self.smtp.command_timeout_secs)?;
        positive("smtp.session_timeout_secs", self.smtp.session_timeout_secs)?;
        let starttls = crate::ingress::tls::acceptor(&self.smtp)?.is_some();
        if self.smtp.require_tls && !starttls {
            return Err(invalid("smtp.require_tls", "needs smtp.tls_cert and smtp.tls_key"));
        }
        match self.relay.mode {
            RelayMode::Smtp => {
                if self.relay.next_hop.trim().is_empty() {
                    return Err(invalid("relay.next_hop", "required when relay.mode = \"smtp\""));
                }
                if !self.relay.next_hop.contains(':') {
                    return Err(invalid("relay.next_hop", format!("{:?} must be host:port", self.relay.next_hop)));
                }
                if self.relay.next_hop == self.smtp.listen {
                    return Err(invalid("relay.next_hop", "equals smtp.listen: mail would loop"));
                }
                crate::relay::tls::RelayTlsSettings::new(&self.relay)?;
            }
            RelayMode::Dir => {
                if self.relay.dir.as_os_str().is_empty() {
                    return Err(invalid("relay.dir", "required when relay.mode = \"dir\""));
                }
            }
        }
        positive("relay.connect_timeout_secs", self.relay.connect_timeout_secs)?;
        positive("relay.reply_timeout_secs", self.relay.reply_timeout_secs)?;
        if self.archive.enabled && self.archive.dir.as_os_str().is_empty() {
            return Err(invalid("archive.dir", "required when archive.enabled = true"));
        }
        for class in &self.archive.classes {
            if !LABELS.contains(&class.as_str()) {
                return Err(invalid(
                    "archive.classes",
                    format!("unknown class {class:?}; known: {}", LABELS.join(", ")),
                ));
            }
        }
        if self.archive.enabled && self.archive.restricted_dir.as_os_str().is_empty() {
            return Err(invalid("archive.restricted_dir", "required when archive.enabled = true"));
        }
        self.archive.smtp.validate(&self.smtp.listen)?;
        if self.review.dir.as_os_str().is_empty() {
            return Err(invalid("review.dir", "required"));
        }
        for row in self.policy.costs.rows() {
            for a in Action::ALL {
                let c = row.get(a);
                if !(c.is_finite() && c >= 0.0) {
                    return Err(invalid("policy.costs", format!("costs must be finite and >= 0, found {c}")));
                }
            }
        }
        if self.mdto.enabled {
            self.mdto.validate(&LABELS).map_err(|e| ConfigError::Mdto(e.to_string()))?;
        }
        if self.audit.enabled && self.audit.path.as_os_str().is_empty() {
            return Err(invalid("audit.path", "required when audit.enabled = true"));
        }
        if self.audit.enabled && self.audit.review_path == self.audit.path {
            return Err(invalid("audit.review_path", "must differ from audit.path (each chain has one writer)"));
        }
        positive("audit.max_bytes", self.audit.max_bytes)?;
        if self.model.dir.as_os_str().is_empty() {
            return Err(invalid("model.dir", "required"));
        }
        positive("model.workers", self.model.workers as u64)?;
        positive("model.queue_size", self.model.queue_size as u64)?;
        positive("model.max_batch", self.model.max_batch as u64)?;
        positive("model.queue_timeout_ms", self.model.queue_timeout_ms)?;
        if self.model.batch_window_us > 100_000 {
            return Err(invalid("model.batch_window_us", "over 100000 (100 ms) would delay every message"));
        }
        for (key, list) in
            [("journal.senders", &self.journal.senders), ("journal.recipients", &self.journal.recipients)]
        {
            let null_sender = |a: &str| key == "journal.senders" && a.trim() == "<>";
            let address = |a: &str| a.contains('@') && !a.trim().contains(char::is_whitespace);
            if let Some(bad) = list.iter().find(|a| !(address(a) || null_sender(a))) {
                return Err(invalid(key, format!("{bad:?} is not an e-mail address")));
            }
        }
        if !self.metrics.listen.is_empty() {
            parse_addr("metrics.listen", &self.metrics.listen)?;
        }
        self.admin.validate().map_err(|(key, problem)| invalid(key, problem))?;
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(invalid("log.level", format!("{:?} is not a valid filter", self.log.level)));
        }
        Ok(())
    }

    /// The SMTP listener's address; `None` when `smtp.listen` is empty.
    pub fn smtp_listen(&self) -> Option<SocketAddr> {
        (!self.smtp.listen.is_empty()).then(|| self.smtp.listen.parse().expect("validated"))
    }

    /// The milter listener's address; `None` when `milter.listen` is empty.
    pub fn milter_listen(&self) -> Option<SocketAddr> {
        (!self.milter.listen.is_empty()).then(|| self.milter.listen.parse().expect("validated"))
    }

    pub fn allowed_clients(&self) -> Vec<IpNet> {
        parse_nets("", &self.smtp.allowed_clients).expect("validated")
    }

    pub fn xforward_clients(&self) -> Vec<IpNet> {
        parse_nets("", &self.smtp.xforward_clients).expect("validated")
    }
}

impl SmtpConfig {
    pub fn command_timeout(&self) -> Duration {
        Duration::from_secs(self.command_timeout_secs)
    }
    pub fn session_timeout(&self) -> Duration {
        Duration::from_secs(self.session_timeout_secs)
    }
}

fn positive(key: &'static str, v: u64) -> Result<(), ConfigError> {
    if v == 0 { Err(invalid(key, "must be greater than 0")) } else { Ok(()) }
}

fn parse_addr(key: &'static str, v: &str) -> Result<SocketAddr, ConfigError> {
    v.parse().map_err(|_| invalid(key, format!("{v:?} is not an ip:port address")))
}

fn parse_nets(key: &'static str, list: &[String]) -> Result<Vec<IpNet>, ConfigError> {
    list.iter()
        .map(|s| {
            let s = s.trim();
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| invalid(key, format!("{s:?} is not an address or CIDR network")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn shipped_file_matches_builtin_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/mailgrip.toml");
        let from_file = Config::load_with_env(Some(&path), env(&[])).unwrap();
        assert_eq!(from_file, Config::default());
    }

    #[test]
    fn env_overrides_including_lists() {
        let cfg = Config::load_with_env(
            None,
            env(&[
                ("MAILGRIP__SMTP__LISTEN", "127.0.0.1:2525"),
                ("MAILGRIP__RELAY__MODE", "smtp"),
                ("MAILGRIP__RELAY__NEXT_HOP", "127.0.0.1:10026"),
                ("MAILGRIP__ARCHIVE__CLASSES", "functioneel,partijpolitiek"),
                ("MAILGRIP__SMTP__MAX_RECIPIENTS", "7"),
                ("OTHER", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.smtp.listen, "127.0.0.1:2525");
        assert_eq!(cfg.relay.mode, RelayMode::Smtp);
        assert_eq!(cfg.archive.classes, vec!["functioneel", "partijpolitiek"]);
        assert_eq!(cfg.smtp.max_recipients, 7);
    }

    #[test]
    fn journal_trust_needs_listed_sender_and_only_journaling_recipients() {
        let cfg = Config::load_with_env(
            None,
            env(&[
                ("MAILGRIP__JOURNAL__ENABLED", "true"),
                ("MAILGRIP__JOURNAL__SENDERS", "MicrosoftExchange@minbzk.nl"),
                ("MAILGRIP__JOURNAL__RECIPIENTS", "journal@mailgrip.minbzk.nl,journal2@mailgrip.minbzk.nl"),
            ]),
        )
        .unwrap();
        let j = &cfg.journal;
        let rcpt = |r: &[&str]| r.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(j.trusts("microsoftexchange@minbzk.nl", &rcpt(&["journal@mailgrip.minbzk.nl"])));
        assert!(!j.trusts("mallory@minbzk.nl", &rcpt(&["journal@mailgrip.minbzk.nl"])));
        assert!(!j.trusts("MicrosoftExchange@minbzk.nl", &rcpt(&["journal@mailgrip.minbzk.nl", "archief@elders.nl"])));
        assert!(!j.trusts("MicrosoftExchange@minbzk.nl", &[]));
        assert!(JournalConfig::default().trusts("", &rcpt(&["x@y.nl"])));
        let null = JournalConfig { enabled: true, senders: vec!["<>".into()], recipients: vec![] };
        assert!(null.trusts("", &rcpt(&["x@y.nl"])));
        assert!(!null.trusts("a@b.nl", &rcpt(&["x@y.nl"])));
    }

    #[test]
    fn errors_name_the_key() {
        let err = Config::load_with_env(None, env(&[("MAILGRIP__SMTP__LISTEN", "nonsense")])).unwrap_err();
        assert!(err.to_string().starts_with("smtp.listen:"), "{err}");
        let err = Config::load_with_env(None, env(&[("MAILGRIP__ARCHIVE__CLASSES", "spam")])).unwrap_err();
        assert!(err.to_string().contains("archive.classes"), "{err}");
        let err = Config::load_with_env(None, env(&[("MAILGRIP__SMTP__BOGUS", "1")])).unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
        let err = Config::load_with_env(None, env(&[("MAILGRIP__SMTP__ALLOWED_CLIENTS", "10.0.0.0/33")])).unwrap_err();
        assert!(err.to_string().starts_with("smtp.allowed_clients:"), "{err}");
        let err = Config::load_with_env(None, env(&[("MAILGRIP__JOURNAL__SENDERS", "exchange")])).unwrap_err();
        assert!(err.to_string().starts_with("journal.senders:"), "{err}");
    }
}
