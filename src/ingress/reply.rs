//! SMTP replies as we send them: a code and a text that starts with the enhanced status code.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpReply {
    pub code: u16,
    pub text: String,
}

impl SmtpReply {
    pub fn new(code: u16, text: impl Into<String>) -> SmtpReply {
        SmtpReply { code, text: text.into() }
    }

    pub fn is_positive(&self) -> bool {
        self.code / 100 == 2
    }

    /// Append the wire form. Line breaks in the text (from a next hop's reply) cannot split it.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let text: String = self.text.chars().map(|c| if c == '\r' || c == '\n' { ' ' } else { c }).collect();
        out.extend_from_slice(format!("{} {}\r\n", self.code, text).as_bytes());
    }
}
