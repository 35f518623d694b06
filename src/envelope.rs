//! The SMTP envelope of one message, as received, and what a trusted peer told us about it.

use serde::{Deserialize, Serialize};

use crate::parse::journal::JournalRecipient;

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
    /// Set when this envelope was taken from an Exchange journal report rather than from SMTP:
    /// then `mail_from` and `rcpt_to` are the report's sender and recipients (BCC included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal: Option<JournalEnvelope>,
}

/// What an Exchange journal report told us beyond sender and recipient addresses, and how the
/// report itself arrived. Recorded in the archive sidecar, so that an archivist can see who was
/// addressed how (To, Cc, Bcc, expanded from a group) on the journaled message.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct JournalEnvelope {
    /// Every recipient line of the report, in order, with its type and any Expanded/Forwarded source.
    pub recipients: Vec<JournalRecipient>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<String>,
    /// The report's `Message-Id:` line: the journaled message's id as Exchange saw it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// MAIL FROM and RCPT TO of the SMTP transaction that delivered the report.
    pub report_mail_from: String,
    pub report_rcpt_to: Vec<String>,
}

impl Envelope {
    /// The MTA's queue id when it sent one with `XFORWARD IDENT=`.
    pub fn queue_id(&self) -> Option<&str> {
        self.xforward.iter().find(|(k, _)| k == "IDENT").map(|(_, v)| v.as_str())
    }
}
