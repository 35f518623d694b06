//! The model text layout `subject-body-v1`: the one place that decides what the model reads.
//!
//! ```text
//! <subject>
//! Bijlagen: <name>; <name>          (only when there are attachments)
//! <new text of the body>
//! <quoted or forwarded history, '>' markers removed>
//! ```
//! Whitespace is normalised, and the whole is cut at [`MAX_CHARS`] characters. The new text comes
//! before the history, so truncation by the tokenizer keeps what the sender wrote.

use std::sync::LazyLock;

use regex::Regex;

/// Name written in model manifests (`[text] layout`).
pub const LAYOUT: &str = "subject-body-v1";

/// Longest text handed to the tokenizer; far beyond any model's max_tokens.
pub const MAX_CHARS: usize = 4000;

/// Build the model text from its parts.
pub fn model_text(subject: &str, attachments: &[String], body: &str) -> String {
    let mut out = String::with_capacity(subject.len() + body.len().min(MAX_CHARS) + 64);
    out.push_str(&squash(subject));
    if !attachments.is_empty() {
        out.push_str("\nBijlagen: ");
        out.push_str(&attachments.iter().map(|a| squash(a)).collect::<Vec<_>>().join("; "));
    }
    // Only the start of a body can reach the model: don't scan megabytes for quote markers.
    let (new, quoted) = split_quoted(prefix_on_char_boundary(body, MAX_CHARS * 16));
    for part in [new, quoted] {
        let part = normalise_body(part);
        if !part.is_empty() {
            out.push('\n');
            out.push_str(&part);
        }
        if out.len() > MAX_CHARS * 4 {
            break;
        }
    }
    truncate_chars(out, MAX_CHARS)
}

static REPLY_HEADER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"(?i)^\s*(",
        r"-{2,}\s*(oorspronkelijk bericht|original message|doorgestuurd bericht|forwarded message|begin forwarded message)",
        r"|_{10,}\s*$",
        r"|(op|on)\s.{4,120}\s(schreef|wrote)\b.*:\s*$",
        r"|begin doorgestuurd bericht:",
        r")"
    ))
    .unwrap()
});

static FROM_LINE: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(?i)^\s*\*?(van|from|de|von)\s*:\*?\s").unwrap());
static SENT_LINE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)^\s*\*?(verzonden|sent|datum|date|gesendet|envoyé)\s*:").unwrap());

/// Split a body into the sender's new text and the quoted/forwarded history that follows it.
pub fn split_quoted(body: &str) -> (&str, &str) {
    let lines: Vec<(usize, &str)> = line_offsets(body);
    for (i, &(offset, line)) in lines.iter().enumerate() {
        let starts_history = line.trim_start().starts_with('>')
            || REPLY_HEADER.is_match(line)
            // "Op di 4 mrt 2026 om 10:12 schreef X" wrapped over two lines.
            || (i + 1 < lines.len() && {
                let joined = format!("{} {}", line.trim_end(), lines[i + 1].1.trim());
                line.trim_start().to_lowercase().starts_with("op ") && REPLY_HEADER.is_match(&joined)
            })
            // Outlook block: "Van: ..." followed within a few lines by "Verzonden: ...".
            || (FROM_LINE.is_match(line)
                && lines[i + 1..].iter().take(4).any(|(_, l)| SENT_LINE.is_match(l)));
        if starts_history {
            return (&body[..offset], &body[offset..]);
        }
    }
    (body, "")
}

fn line_offsets(s: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        if b == b'\n' {
            out.push((start, &s[start..i]));
            start = i + 1;
        }
    }
    if start < s.len() {
        out.push((start, &s[start..]));
    }
    out
}

/// Strip quote markers, trim lines, collapse runs of blank lines and of spaces.
fn normalise_body(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_CHARS * 4));
    let mut blank = false;
    for line in s.lines() {
        let line = line.trim_start_matches(|c: char| c == '>' || c.is_whitespace());
        let line = squash(line);
        if line.is_empty() {
            blank = true;
            continue;
        }
        if !out.is_empty() {
            out.push('\n');
            if blank {
                out.push('\n');
            }
        }
        blank = false;
        out.push_str(&line);
        if out.len() > MAX_CHARS * 4 {
            break;
        }
    }
    out
}

/// Collapse every run of whitespace (including NBSP and zero-width spaces) into one space.
fn squash(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut space = false;
    for c in s.chars() {
        if c.is_whitespace() || c == '\u{200b}' || c == '\u{feff}' {
            space = true;
        } else if !c.is_control() {
            if space && !out.is_empty() {
                out.push(' ');
            }
            space = false;
            out.push(c);
        }
    }
    out
}

fn prefix_on_char_boundary(s: &str, max_bytes: usize) -> &str {
    if s.len() <= max_bytes {
        return s;
    }
    let mut end = max_bytes;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn truncate_chars(mut s: String, max: usize) -> String {
    if let Some((idx, _)) = s.char_indices().nth(max) {
        s.truncate(idx);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_text_comes_before_outlook_history() {
        let body = "Akkoord, graag verwerken.\r\n\r\nGroet,\r\nPiet\r\n\r\nVan: Jan <j@x.nl>\r\nVerzonden: maandag 3 maart 2026 10:00\r\nAan: Piet\r\nOnderwerp: besluit\r\n\r\nKun je tekenen?\r\n";
        let (new, quoted) = split_quoted(body);
        assert!(new.contains("Akkoord") && !new.contains("Van:"));
        assert!(quoted.starts_with("Van: Jan"));
        let t = model_text("RE: besluit", &[], body);
        assert_eq!(
            t,
            "RE: besluit\nAkkoord, graag verwerken.\n\nGroet,\nPiet\nVan: Jan <j@x.nl>\nVerzonden: maandag 3 maart 2026 10:00\nAan: Piet\nOnderwerp: besluit\n\nKun je tekenen?"
        );
    }

    #[test]
    fn gt_quotes_and_wrapped_schreef_line() {
        let body =
            "Prima!\nOp di 4 mrt 2026 om 10:12 schreef Anna de\nVries <a@b.nl>:\n> Zullen we zaterdag?\n>> eerder\n";
        let (new, quoted) = split_quoted(body);
        assert_eq!(new, "Prima!\n");
        assert!(quoted.starts_with("Op di"));
        assert_eq!(
            model_text("", &[], body),
            "\nPrima!\nOp di 4 mrt 2026 om 10:12 schreef Anna de\nVries <a@b.nl>:\nZullen we zaterdag?\neerder"
        );
    }

    #[test]
    fn attachments_and_whitespace() {
        let t = model_text(
            "  Ziek\tmelding ",
            &["a.pdf".into(), "b  c.docx".into()],
            "\n\n  regel  een \n\n\n\nregel\u{a0}twee\n",
        );
        assert_eq!(t, "Ziek melding\nBijlagen: a.pdf; b c.docx\nregel een\n\nregel twee");
    }

    #[test]
    fn long_text_is_cut_on_a_char_boundary() {
        let body = "é".repeat(10_000);
        let t = model_text("s", &[], &body);
        assert_eq!(t.chars().count(), MAX_CHARS);
    }
}
