//! Tag: prepend the `X-Mailgrip-*` headers to a message.
//!
//! Any `X-Mailgrip-*` field that arrived from outside is removed first, so a sender cannot
//! pre-tag mail; every other byte of the message stays exactly as received.

/// Header fields we own; anything starting with this is ours.
pub const PREFIX: &str = "X-Mailgrip-";

/// The headers written for one decision.
#[derive(Debug, Clone)]
pub struct Tags {
    pub class: String,
    /// `None` when the message could not be scored.
    pub scores: Option<String>,
    pub model: String,
    pub id: String,
    pub action: String,
    /// Why a message is `unclassified`.
    pub reason: Option<String>,
    /// Policy version and mode, e.g. `cost-1a2b3c4d5e6f enforce`.
    pub policy: String,
}

impl Tags {
    /// Our header fields in order, as (full name, value made header-safe). Both front ends write
    /// exactly these: [`tag`] prepends them to the message, the milter asks the MTA to insert them.
    pub fn fields(&self) -> Vec<(String, String)> {
        let mut fields = Vec::with_capacity(7);
        let mut field = |name: &str, value: &str| fields.push((format!("{PREFIX}{name}"), header_safe(value)));
        field("Class", &self.class);
        if let Some(scores) = &self.scores {
            field("Scores", scores);
        }
        field("Model", &self.model);
        field("Id", &self.id);
        field("Action", &self.action);
        field("Policy", &self.policy);
        if let Some(reason) = &self.reason {
            field("Reason", reason);
        }
        fields
    }

    fn render(&self) -> String {
        let mut h = String::with_capacity(256);
        for (name, value) in self.fields() {
            h.push_str(&name);
            h.push_str(": ");
            h.push_str(&value);
            h.push_str("\r\n");
        }
        h
    }
}

/// ASCII only, no line breaks, bounded: a header value nobody can use to inject fields.
fn header_safe(value: &str) -> String {
    value.chars().map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' }).take(200).collect()
}

/// The tagged message: our headers, then the original with foreign `X-Mailgrip-*` fields removed.
/// Also returns how many forged fields were removed.
pub fn tag(raw: &[u8], tags: &Tags) -> (Vec<u8>, usize) {
    let ours = tags.render();
    let mut out = Vec::with_capacity(raw.len() + ours.len());
    out.extend_from_slice(ours.as_bytes());
    let header_end = header_block_len(raw);
    let mut removed = 0;
    let mut skipping = false;
    let mut pos = 0;
    while pos < header_end {
        let line_end = raw[pos..header_end].iter().position(|&b| b == b'\n').map_or(header_end, |i| pos + i + 1);
        let line = &raw[pos..line_end];
        let continuation = matches!(line.first(), Some(b' ' | b'\t'));
        if !continuation {
            skipping = is_ours(line);
            if skipping {
                removed += 1;
            }
        }
        if !skipping {
            out.extend_from_slice(line);
        }
        pos = line_end;
    }
    out.extend_from_slice(&raw[header_end..]);
    (out, removed)
}

/// Whether a header line (or a bare field name) is one of ours.
pub fn is_ours(line: &[u8]) -> bool {
    let prefix = PREFIX.as_bytes();
    line.len() >= prefix.len() && line[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// Length of the header block: every line up to (not including) the first empty line or the
/// first line that is neither a header field nor a continuation.
fn header_block_len(raw: &[u8]) -> usize {
    let mut pos = 0;
    while pos < raw.len() {
        let line_end = raw[pos..].iter().position(|&b| b == b'\n').map_or(raw.len(), |i| pos + i + 1);
        let line = &raw[pos..line_end];
        let content = line.strip_suffix(b"\n").unwrap_or(line);
        let content = content.strip_suffix(b"\r").unwrap_or(content);
        let continuation = pos > 0 && matches!(content.first(), Some(b' ' | b'\t'));
        if content.is_empty() || !(continuation || looks_like_field(content)) {
            return pos;
        }
        pos = line_end;
    }
    pos
}

fn looks_like_field(line: &[u8]) -> bool {
    match line.iter().position(|&b| b == b':') {
        Some(colon) if colon > 0 => line[..colon].iter().all(|&b| b.is_ascii_graphic()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags() -> Tags {
        Tags {
            class: "prive".into(),
            scores: Some("functioneel=0.1000".into()),
            model: "m@1".into(),
            id: "abc".into(),
            action: "none".into(),
            reason: None,
            policy: "p enforce".into(),
        }
    }

    #[test]
    fn prepends_and_keeps_every_other_byte() {
        let raw = b"Received: from x\r\n\tby y\r\nSubject: hoi\r\n\r\nbody\r\nX-Mailgrip-Class: in body stays\r\n";
        let (out, removed) = tag(raw, &tags());
        assert_eq!(removed, 0);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("X-Mailgrip-Class: prive\r\nX-Mailgrip-Scores: functioneel=0.1000\r\nX-Mailgrip-Model: m@1\r\nX-Mailgrip-Id: abc\r\nX-Mailgrip-Action: none\r\nX-Mailgrip-Policy: p enforce\r\n"));
        assert!(text.ends_with(std::str::from_utf8(raw).unwrap()));
    }

    #[test]
    fn removes_forged_fields_with_continuations() {
        let raw = b"From: a@b\r\nx-mailgrip-class: functioneel\r\n  folded\r\nX-MAILGRIP-Action: archive\r\nSubject: s\r\n\r\nX-Mailgrip-Class: body\r\n";
        let (out, removed) = tag(raw, &tags());
        assert_eq!(removed, 2);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches("X-Mailgrip-Class:").count(), 2, "ours + the one in the body");
        assert!(text.contains("From: a@b\r\nSubject: s\r\n\r\nX-Mailgrip-Class: body\r\n"));
        assert!(!text.contains("folded"));
    }

    #[test]
    fn header_values_cannot_inject() {
        let mut t = tags();
        t.reason = Some("bad\r\nX-Evil: 1 é".into());
        let (out, _) = tag(b"\r\nbody", &t);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("X-Mailgrip-Reason: bad??X-Evil: 1 ?\r\n"));
    }

    #[test]
    fn message_without_headers_or_body() {
        let (out, _) = tag(b"", &tags());
        assert!(out.ends_with(b"X-Mailgrip-Policy: p enforce\r\n"));
        let (out, removed) = tag(b"just text, no header\r\n", &tags());
        assert_eq!(removed, 0);
        assert!(out.ends_with(b"just text, no header\r\n"));
    }
}
