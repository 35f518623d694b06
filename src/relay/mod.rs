//! Relay: hand the tagged message to the next hop. The SMTP answer to our client depends on it:
//! `250` only once the next hop accepted the message.
//!
//! - `smtp` ([`smtp::SmtpRelay`]): the next MTA (Postfix re-injection, Exchange).
//! - `dir` ([`dir::DirRelay`]): a local folder, for trying mailgrip without an MTA.

pub mod dir;
pub mod smtp;
pub mod tls;

use crate::config::{RelayConfig, RelayMode};
use crate::envelope::Envelope;

/// A reply of the next hop.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub code: u16,
    pub text: String,
}

impl Reply {
    fn into_error(self) -> RelayError {
        if self.code / 100 == 5 { RelayError::Refused(self) } else { RelayError::Deferred(self) }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum RelayError {
    /// The next hop could not be reached or broke off: tempfail, the MTA retries.
    #[error("next hop unreachable: {0}")]
    Unreachable(String),
    /// The next hop answered 4xx: tempfail.
    #[error("next hop deferred: {} {}", .0.code, .0.text)]
    Deferred(Reply),
    /// The next hop answered 5xx: propagated to our client.
    #[error("next hop refused: {} {}", .0.code, .0.text)]
    Refused(Reply),
    /// Writing to the relay folder failed: tempfail.
    #[error("relay folder: {0}")]
    Io(String),
}

impl RelayError {
    pub fn kind(&self) -> &'static str {
        match self {
            RelayError::Unreachable(_) => "unreachable",
            RelayError::Deferred(_) => "deferred",
            RelayError::Refused(_) => "refused",
            RelayError::Io(_) => "io",
        }
    }
}

pub enum Relay {
    Smtp(smtp::SmtpRelay),
    Dir(dir::DirRelay),
}

impl Relay {
    pub fn new(cfg: &RelayConfig) -> Relay {
        match cfg.mode {
            RelayMode::Smtp => Relay::Smtp(smtp::SmtpRelay::new(cfg)),
            RelayMode::Dir => Relay::Dir(dir::DirRelay::new(&cfg.dir)),
        }
    }

    pub fn mode(&self) -> &'static str {
        match self {
            Relay::Smtp(_) => "smtp",
            Relay::Dir(_) => "dir",
        }
    }

    /// Deliver; `Ok` carries the next hop's reply text for logs.
    pub async fn send(&self, id: &str, env: &Envelope, message: &[u8]) -> Result<Reply, RelayError> {
        match self {
            Relay::Smtp(r) => r.send(env, message).await,
            Relay::Dir(r) => r.send(id, env, message).await,
        }
    }

    /// For `/readyz`: can the next hop take mail now?
    pub async fn probe(&self) -> Result<(), String> {
        match self {
            Relay::Smtp(r) => r.probe().await,
            Relay::Dir(r) => r.probe().await,
        }
    }
}
