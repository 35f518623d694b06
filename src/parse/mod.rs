//! Parse: turn raw message bytes into the few things the classifier and the archive need.
//!
//! Called by the pipeline (on the blocking pool, never on an async worker) and by the offline
//! `classify`/`extract` commands, so that training, the CLI and the daemon see the same text.
//! Parsing never fails the message: broken MIME, unknown charsets and empty bodies still yield an
//! [`Extracted`]; only a message mail-parser cannot read at all is marked with `parse_error` and
//! is relayed as `unclassified`.

pub mod journal;
mod text;

use mail_parser::{MessageParser, MimeHeaders};
use serde::Serialize;

pub use text::{LAYOUT, model_text, split_quoted};

/// What one message says, as far as classification and archiving care.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Extracted {
    pub subject: String,
    /// Body text: text/plain, or the HTML part converted to text.
    pub body: String,
    /// Domain of the `From:` address, lower-case.
    pub from_domain: Option<String>,
    /// Domains of `To:` and `Cc:` addresses, lower-case, deduplicated.
    pub recipient_domains: Vec<String>,
    pub attachments: Vec<String>,
    pub message_id: Option<String>,
    /// `Date:` as RFC 3339, when present and valid.
    pub date: Option<String>,
    /// Set when the message could not be parsed at all.
    pub parse_error: Option<String>,
}

impl Extracted {
    /// The model input text (layout [`LAYOUT`]); the model's prefix is added by the classifier.
    pub fn model_text(&self) -> String {
        model_text(&self.subject, &self.attachments, &self.body)
    }
}

/// Parse a message. Never panics and never fails; see the module docs.
pub fn extract(raw: &[u8]) -> Extracted {
    let Some(msg) = MessageParser::default().parse(raw) else {
        return Extracted { parse_error: Some("not a parseable RFC 5322 message".into()), ..Default::default() };
    };
    let subject = msg.subject().unwrap_or_default().to_string();
    let body = msg.body_text(0).map(|b| b.into_owned()).unwrap_or_default();
    let from_domain = msg.from().and_then(|a| a.first()).and_then(|a| a.address()).and_then(domain_of);
    let mut recipient_domains: Vec<String> = msg
        .to()
        .into_iter()
        .chain(msg.cc())
        .flat_map(|a| a.iter())
        .filter_map(|a| a.address().and_then(domain_of))
        .collect();
    recipient_domains.sort();
    recipient_domains.dedup();
    let attachments = msg
        .attachments()
        .filter_map(|p| p.attachment_name().map(|n| n.trim().to_string()))
        .filter(|n| !n.is_empty())
        .collect();
    let date = msg.date().map(|d| d.to_rfc3339());
    Extracted {
        subject,
        body,
        from_domain,
        recipient_domains,
        attachments,
        message_id: msg.message_id().map(str::to_string),
        date,
        parse_error: None,
    }
}

/// Domain part of an address, lower-case.
pub fn domain_of(addr: &str) -> Option<String> {
    let (_, domain) = addr.rsplit_once('@')?;
    let domain = domain.trim().trim_end_matches('>').to_ascii_lowercase();
    (!domain.is_empty()).then_some(domain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_alternative_prefers_plain_text() {
        let raw = b"From: A <a@Minbzk.NL>\r\nTo: b@gemeente.nl, c@x.org\r\nSubject: =?utf-8?q?Besluit_=C3=A9=C3=A9n?=\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHallo plain\r\n--b\r\nContent-Type: text/html\r\n\r\n<p>Hallo <b>html</b></p>\r\n--b--\r\n";
        let e = extract(raw);
        assert_eq!(e.subject, "Besluit één");
        assert!(e.body.contains("Hallo plain"));
        assert_eq!(e.from_domain.as_deref(), Some("minbzk.nl"));
        assert_eq!(e.recipient_domains, vec!["gemeente.nl", "x.org"]);
    }

    #[test]
    fn html_only_becomes_text() {
        let raw = b"Subject: nieuws\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<html><body><h1>Nieuwsbrief</h1><p>Lees <a href='x'>meer</a></p><script>x()</script></body></html>\r\n";
        let e = extract(raw);
        assert!(e.body.contains("Nieuwsbrief"), "{:?}", e.body);
        assert!(!e.body.contains('<'), "{:?}", e.body);
    }

    #[test]
    fn latin1_and_attachment_names() {
        let mut raw = b"Subject: test\r\nContent-Type: multipart/mixed; boundary=z\r\n\r\n--z\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\nCaf".to_vec();
        raw.push(0xe9);
        raw.extend_from_slice(b" geopend\r\n--z\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"Ziekmelding.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--z--\r\n");
        let e = extract(&raw);
        assert!(e.body.contains("Café geopend"), "{:?}", e.body);
        assert_eq!(e.attachments, vec!["Ziekmelding.pdf"]);
    }

    #[test]
    fn garbage_and_empty_input_do_not_panic() {
        for raw in
            [&b""[..], b"\r\n", b"\xff\xfe\x00garbage", b"Content-Type: multipart/mixed; boundary=\r\n\r\n--\r\n--"]
        {
            let e = extract(raw);
            let _ = e.model_text();
        }
    }
}
