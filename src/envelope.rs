//! The SMTP envelope of one message, as received, and what a trusted peer told us about it.

use serde::{Deserialize, Serialize};

/// Sender and recipients exactly as given in MAIL FROM / RCPT TO, plus the flags that must
/// survive relaying.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Envelope {
    /// Reverse path; empty for the null sender `<>`.
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    /// `BODY=8BITMIME` was given.
    pub body_8bitmime: bool,
    /// `SMTPUTF8` was given.
    pub smtputf8: bool,
    /// Attributes a trusted MTA sent with XFORWARD (NAME, ADDR, PROTO, HELO, SOURCE, IDENT).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xforward: Vec<(String, String)>,
}

impl Envelope {
    /// The MTA's queue id when it sent one with `XFORWARD IDENT=`.
    pub fn queue_id(&self) -> Option<&str> {
        self.xforward.iter().find(|(k, _)| k == "IDENT").map(|(_, v)| v.as_str())
    }
}
