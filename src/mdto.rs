//! MDTO metadata for archive copies: the XML sidecars that Dutch archives ingest.
//!
//! Next to each archived `<id>.eml` the archive writes two MDTO 1.0.1 documents, as the MDTO
//! SIP specification prefers one object per file:
//! - `<id>.mdto.xml`, the *informatieobject* (the e-mail as an archiefstuk), from
//!   [`informatieobject`];
//! - `<id>.eml.mdto.xml`, the *bestand* (the `.eml` file that represents it), from [`bestand`].
//!
//! Both validate against `MDTO-XML1.0.1.xsd` (tests/mdto.rs runs `xmllint` on every variant).
//! Values come from three places:
//! - the message and the decision ([`Record`]): Message-ID, subject, Date, class, model, size,
//!   sha256, whether the copy went to the restricted store;
//! - [`MdtoConfig`]: the archiefvormer and, per mailgrip class, the waardering and bewaartermijn
//!   of the organisation's selectielijst ([`Selection`]);
//! - the MDTO begrippenlijsten (constants below), whose labels are used verbatim.
//!
//! The XML is written by hand: the schema is small and fixed, and hand-writing keeps the element
//! order of the XSD visible in one place ([`informatieobject`], [`bestand`]). All text passes
//! through [`escape`], which also replaces characters that XML 1.0 forbids, so that a hostile
//! subject cannot break the document.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use time::{Date, Month, OffsetDateTime, UtcOffset};

/// MDTO namespace.
pub const NAMESPACE: &str = "https://www.nationaalarchief.nl/mdto";
/// Where the XSD is published (for `xsi:schemaLocation`).
pub const SCHEMA_LOCATION: &str = "https://www.nationaalarchief.nl/mdto/MDTO-XML1.0.1.xsd";

/// `identificatieBron` of identifiers that mailgrip assigns (decision id, file name).
pub const BRON_MAILGRIP: &str = "mailgrip";
/// `identificatieBron` of the RFC 5322 Message-ID.
pub const BRON_MESSAGE_ID: &str = "Message-ID";
/// `naam` of a message without (or with a blank) subject.
pub const GEEN_ONDERWERP: &str = "(geen onderwerp)";

/// PRONOM identification of the `.eml` file. `fmt/950` is PRONOM's "MIME Email" (RFC 2045 mail
/// with `MIME-Version`), which is what DROID reports for practically all current mail;
/// `fmt/278` ("Internet Message Format") is plain RFC 5322 mail without MIME.
pub const PRONOM_LABEL: &str = "MIME Email";
pub const PRONOM_CODE: &str = "fmt/950";
pub const PRONOM_LIJST: &str = "PRONOM-register";

const LIJST_AGGREGATIE: &str = "Begrippenlijst Aggregatieniveaus MDTO";
const LIJST_EVENT: &str = "Begrippenlijst EventTypeLijst MDTO";
const LIJST_WAARDERING: &str = "Begrippenlijst Waarderingen MDTO";
const LIJST_BEPERKING: &str = "Begrippenlijst BeperkingGebruikTypeLijst MDTO";
const LIJST_CHECKSUM: &str = "Begrippenlijst ChecksumAlgoritme MDTO";

/// The RFC 5322 `Date:` is the moment the author finished the message: MDTO's "Creatie". It is
/// used instead of "Ontvangst"/"Verzending" because a content filter does not know which side of
/// the organisation the author is on.
const EVENT_CREATIE: &str = "Creatie";
/// The archive copy was taken into the archive with its metadata: MDTO's "Opname".
const EVENT_OPNAME: &str = "Opname";

/// Per-class retention, mirroring one line of the organisation's selectielijst.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selection {
    /// `"V"` (vernietigen: tijdelijk te bewaren), `"B"` (blijvend te bewaren) or `"N"` (nader te
    /// bepalen), the codes of the closed MDTO begrippenlijst Waarderingen.
    pub waardering: String,
    /// ISO 8601 / `xsd:duration` such as `"P10Y"`; required for `V`, absent for `B` and `N`.
    pub bewaartermijn: Option<String>,
    /// Label of the selectielijst category (MDTO `informatiecategorie`).
    pub categorie: String,
    /// Its code in the selectielijst, e.g. `"1.1.2"`.
    pub categorie_code: Option<String>,
}

/// The `[mdto]` section: who the archiefvormer is and how each class is appraised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MdtoConfig {
    /// Write MDTO sidecars next to archive copies.
    pub enabled: bool,
    /// Name of the organisation that receives and sends the mail.
    pub archiefvormer: String,
    /// Its identifier, e.g. `https://organisaties.overheid.nl/<nr>/<naam>`; empty: none given.
    pub archiefvormer_kenmerk: String,
    /// Where that identifier comes from.
    pub archiefvormer_bron: String,
    /// Name of the selectielijst that `selectie` mirrors (begrippenlijst of informatiecategorie).
    pub selectielijst_naam: String,
    /// Appraisal per mailgrip class. A class without an entry is written as waardering
    /// "Nader te bepalen" (N) without bewaartermijn; [`MdtoConfig::validate`] refuses that.
    pub selectie: BTreeMap<String, Selection>,
}

impl Default for MdtoConfig {
    /// Placeholders that validate and show the shape; every organisation must replace them with
    /// its own name and vastgestelde selectielijst. The choices:
    /// - `functioneel` — V, 10 years: mail with business value under a generic category. (An
    ///   organisation that keeps the mail of top officials for ever, Capstone style, sets B.)
    /// - `personeelsvertrouwelijk` — V, 10 years, kept in the restricted store: the term of
    ///   personnel matters in common selectielijsten; the trigger (end of employment) is not
    ///   visible in mail, so the term runs from the mail's date.
    /// - `niet-functioneel`, `prive`, `partijpolitiek` — V, 1 year: no archival value to the
    ///   organisation; they are normally not archived at all, and when a copy does end up in the
    ///   archive (by a reviewer's decision or a policy setting), a short term bounds it.
    fn default() -> Self {
        let v = |termijn: &str, categorie: &str| Selection {
            waardering: "V".into(),
            bewaartermijn: Some(termijn.into()),
            categorie: categorie.into(),
            categorie_code: None,
        };
        let selectie = BTreeMap::from([
            ("functioneel".into(), v("P10Y", "E-mail met zakelijke waarde")),
            ("personeelsvertrouwelijk".into(), v("P10Y", "Personeelsvertrouwelijke e-mail")),
            ("niet-functioneel".into(), v("P1Y", "E-mail zonder zakelijke waarde")),
            ("prive".into(), v("P1Y", "Privé-e-mail")),
            ("partijpolitiek".into(), v("P1Y", "Partijpolitieke e-mail")),
        ]);
        Self {
            enabled: true,
            archiefvormer: "Voorbeeldorganisatie".into(),
            archiefvormer_kenmerk: String::new(),
            archiefvormer_bron: "Register van Overheidsorganisaties".into(),
            selectielijst_naam: "Voorbeeldselectielijst mailgrip (vervangen door de vastgestelde selectielijst)".into(),
            selectie,
        }
    }
}

/// A configuration problem, naming the key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("mdto.{key}: {problem}")]
pub struct MdtoConfigError {
    pub key: String,
    pub problem: String,
}

impl MdtoConfig {
    /// Check the section before anything starts. `classes` are the classes the model can
    /// produce; each needs a selectie entry, so that no archive copy gets waardering N by
    /// accident.
    pub fn validate(&self, classes: &[&str]) -> Result<(), MdtoConfigError> {
        let err = |key: String, problem: &str| MdtoConfigError { key, problem: problem.into() };
        if self.archiefvormer.trim().is_empty() {
            return Err(err("archiefvormer".into(), "must name the organisation"));
        }
        if !self.archiefvormer_kenmerk.is_empty() && self.archiefvormer_bron.trim().is_empty() {
            return Err(err("archiefvormer_bron".into(), "is required when archiefvormer_kenmerk is set"));
        }
        if self.selectielijst_naam.trim().is_empty() {
            return Err(err("selectielijst_naam".into(), "must name the selectielijst"));
        }
        for class in classes {
            if !self.selectie.contains_key(*class) {
                return Err(err(format!("selectie.{class}"), "missing: every class needs a waardering"));
            }
        }
        for (class, s) in &self.selectie {
            let key = |field: &str| format!("selectie.{class}.{field}");
            if waardering_label(&s.waardering).is_none() {
                return Err(err(key("waardering"), "must be \"V\", \"B\" or \"N\""));
            }
            match (s.waardering.as_str(), &s.bewaartermijn) {
                ("V", None) => {
                    return Err(err(key("bewaartermijn"), "is required for waardering V"));
                }
                ("V", Some(t)) if Looptijd::parse(t).is_none() => {
                    return Err(err(key("bewaartermijn"), "must be an ISO 8601 duration such as \"P10Y\" or \"P6M\""));
                }
                ("B" | "N", Some(_)) => {
                    return Err(err(key("bewaartermijn"), "only waardering V has a bewaartermijn"));
                }
                _ => {}
            }
            if s.categorie.trim().is_empty() {
                return Err(err(key("categorie"), "must name the selectielijst category"));
            }
        }
        Ok(())
    }
}

/// What the sidecars describe: one archive copy and its decision.
#[derive(Debug, Clone)]
pub struct Record<'a> {
    /// Decision id; also the stem of the file names.
    pub id: &'a str,
    /// RFC 5322 Message-ID, as parsed (with or without angle brackets).
    pub message_id: Option<&'a str>,
    pub subject: &'a str,
    /// The mailgrip class the copy was archived under.
    pub class: &'a str,
    /// `name@version` of the model.
    pub model: &'a str,
    /// The message's `Date:`.
    pub sent: Option<OffsetDateTime>,
    /// When the copy was committed (and its checksum taken).
    pub archived: OffsetDateTime,
    /// `"<id>.eml"`.
    pub eml_file: &'a str,
    /// Size of the `.eml` in bytes.
    pub size: u64,
    /// Hex sha256 of the `.eml`.
    pub sha256: &'a str,
    /// Whether the copy went to the restricted store (`archive-restricted`).
    pub restricted: bool,
    /// Why, in words for the archivist (e.g. the class or the reviewer's note).
    pub restriction_reason: Option<&'a str>,
}

impl Record<'_> {
    /// The informatieobject's identifier that the bestand points back to: the decision id, which,
    /// unlike a Message-ID, is unique to this copy.
    fn object_ref(&self) -> (&str, &str) {
        (self.id, BRON_MAILGRIP)
    }

    fn file_ref(&self) -> (&str, &str) {
        (self.eml_file, BRON_MAILGRIP)
    }

    fn naam(&self) -> &str {
        if self.subject.trim().is_empty() { GEEN_ONDERWERP } else { self.subject }
    }

    fn message_id(&self) -> Option<&str> {
        self.message_id.map(str::trim).filter(|m| !m.is_empty())
    }
}

/// The informatieobject document (`<id>.mdto.xml`).
///
/// Elements, in the order the XSD demands: identificatie (Message-ID when present, and always
/// the decision id), naam, aggregatieniveau, classificatie, event (Creatie at `Date:`, Opname at
/// archiving), waardering, bewaartermijn, informatiecategorie, heeftRepresentatie, archiefvormer,
/// beperkingGebruik.
pub fn informatieobject(cfg: &MdtoConfig, r: &Record<'_>) -> String {
    let mut x = Xml::start();
    x.open("informatieobject");
    if let Some(mid) = r.message_id() {
        x.identificatie("identificatie", mid, BRON_MESSAGE_ID);
    }
    let (id, bron) = r.object_ref();
    x.identificatie("identificatie", id, bron);
    x.leaf("naam", r.naam());
    x.begrip("aggregatieniveau", "Archiefstuk", None, LIJST_AGGREGATIE);
    x.begrip("classificatie", r.class, None, &format!("mailgrip classes (model {})", r.model));

    let sent = r.sent.and_then(Stamp::new);
    let archived = Stamp::new(r.archived);
    if let Some(sent) = &sent {
        x.event(EVENT_CREATIE, &sent.date_time, None);
    }
    if let Some(archived) = &archived {
        x.event(EVENT_OPNAME, &archived.date_time, Some("mailgrip"));
    }

    let selection = cfg.selectie.get(r.class);
    let code = selection.map_or("N", |s| s.waardering.as_str());
    let (code, label) = match waardering_label(code) {
        Some(label) => (code, label),
        None => ("N", "Nader te bepalen"),
    };
    x.begrip("waardering", label, Some(code), LIJST_WAARDERING);

    if let Some(s) = selection {
        let looptijd = s.bewaartermijn.as_deref().and_then(Looptijd::parse);
        // The term runs from the mail's date; without a usable Date:, from archiving.
        let start = match (&sent, &archived) {
            (Some(s), _) => Some((EVENT_CREATIE, s)),
            (None, Some(a)) => Some((EVENT_OPNAME, a)),
            (None, None) => None,
        };
        if let (Some(looptijd), Some((trigger, start))) = (looptijd, start) {
            x.open("bewaartermijn");
            x.begrip("termijnTriggerStartLooptijd", trigger, None, LIJST_EVENT);
            x.leaf("termijnStartdatumLooptijd", &format_date(start.date));
            x.leaf("termijnLooptijd", &looptijd.text);
            if let Some(end) = looptijd.end(start.date) {
                x.leaf("termijnEinddatum", &format_date(end));
            }
            x.close("bewaartermijn");
        }
        x.begrip("informatiecategorie", &s.categorie, s.categorie_code.as_deref(), &cfg.selectielijst_naam);
    }

    x.verwijzing("heeftRepresentatie", r.eml_file, Some(r.file_ref()));
    let kenmerk = (!cfg.archiefvormer_kenmerk.trim().is_empty())
        .then_some((cfg.archiefvormer_kenmerk.as_str(), cfg.archiefvormer_bron.as_str()));
    x.verwijzing("archiefvormer", &cfg.archiefvormer, kenmerk);

    // beperkingGebruik is mandatory. mailgrip knows only whether the copy is in the restricted
    // store; for other copies it has not judged openness, which MDTO calls "Nader te bepalen".
    x.open("beperkingGebruik");
    if r.restricted {
        x.begrip("beperkingGebruikType", "Overig", None, LIJST_BEPERKING);
        let reason = r
            .restriction_reason
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .unwrap_or("Archiefkopie in de afgeschermde opslag (archive-restricted)");
        x.leaf("beperkingGebruikNadereBeschrijving", reason);
    } else {
        x.begrip("beperkingGebruikType", "Nader te bepalen", None, LIJST_BEPERKING);
    }
    x.close("beperkingGebruik");

    x.close("informatieobject");
    x.finish()
}

/// The bestand document (`<id>.eml.mdto.xml`): identificatie, naam, omvang, bestandsformaat,
/// checksum (SHA-256, taken at archiving), isRepresentatieVan.
pub fn bestand(_cfg: &MdtoConfig, r: &Record<'_>) -> String {
    let mut x = Xml::start();
    x.open("bestand");
    let (kenmerk, bron) = r.file_ref();
    x.identificatie("identificatie", kenmerk, bron);
    x.leaf("naam", r.eml_file);
    x.leaf("omvang", &r.size.to_string());
    x.begrip("bestandsformaat", PRONOM_LABEL, Some(PRONOM_CODE), PRONOM_LIJST);
    x.open("checksum");
    x.begrip("checksumAlgoritme", "SHA-256", None, LIJST_CHECKSUM);
    x.leaf("checksumWaarde", &r.sha256.to_ascii_lowercase());
    // checksumDatum is mandatory: an unrepresentable clock falls back to the epoch rather than
    // producing an invalid document.
    let checked = Stamp::new(r.archived).map_or_else(|| "1970-01-01T00:00:00Z".to_string(), |s| s.date_time);
    x.leaf("checksumDatum", &checked);
    x.close("checksum");
    x.verwijzing("isRepresentatieVan", r.naam(), Some(r.object_ref()));
    x.close("bestand");
    x.finish()
}

fn waardering_label(code: &str) -> Option<&'static str> {
    match code {
        "V" => Some("Tijdelijk te bewaren"),
        "B" => Some("Blijvend te bewaren"),
        "N" => Some("Nader te bepalen"),
        _ => None,
    }
}

/// A moment as MDTO writes it: `xsd:dateTime` with its zone, and the `xsd:date` in that zone.
struct Stamp {
    date_time: String,
    date: Date,
}

impl Stamp {
    /// `None` for moments XSD 1.0 cannot carry as four-digit years (year 0, negative, > 9999),
    /// which only a forged `Date:` produces. Zones that `xsd:dateTime` cannot express (seconds,
    /// beyond ±14:00) are converted to UTC.
    fn new(t: OffsetDateTime) -> Option<Stamp> {
        let off = t.offset();
        let minutes = off.whole_minutes();
        let t = if off.seconds_past_minute() != 0 || minutes.abs() > 14 * 60 { t.to_offset(UtcOffset::UTC) } else { t };
        if !(1..=9999).contains(&t.year()) {
            return None;
        }
        let minutes = t.offset().whole_minutes();
        let zone = if minutes == 0 {
            "Z".to_string()
        } else {
            let sign = if minutes < 0 { '-' } else { '+' };
            let m = minutes.unsigned_abs();
            format!("{sign}{:02}:{:02}", m / 60, m % 60)
        };
        let date_time = format!("{}T{:02}:{:02}:{:02}{zone}", format_date(t.date()), t.hour(), t.minute(), t.second());
        Some(Stamp { date_time, date: t.date() })
    }
}

fn format_date(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), d.month() as u8, d.day())
}

/// A validated `xsd:duration` (non-negative), with its years, months and days when it has no
/// time part, so that the end date can be computed.
#[derive(Debug, Clone, PartialEq)]
struct Looptijd {
    text: String,
    ymd: Option<(u32, u32, u32)>,
}

impl Looptijd {
    /// Accepts `P[nY][nM][nD][T[nH][nM][n[.n]S]]` with at least one part (and at least one after
    /// a `T`), as `xsd:duration` does; negative durations make no sense for a bewaartermijn.
    fn parse(s: &str) -> Option<Looptijd> {
        let text = s.trim();
        let mut rest = text.strip_prefix('P')?;
        let mut ymd = [0u32; 3];
        let mut any = false;
        let mut any_time = false;
        let mut after_t = false;
        // Next allowed designator index: Y=0 M=1 D=2 | H=3 M=4 S=5.
        let mut next = 0;
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix('T') {
                if after_t {
                    return None;
                }
                after_t = true;
                next = 3;
                rest = r;
                continue;
            }
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return None;
            }
            let (number, r) = rest.split_at(digits);
            let (fraction, r) = match r.strip_prefix('.') {
                Some(r) => {
                    let n = r.bytes().take_while(u8::is_ascii_digit).count();
                    if n == 0 {
                        return None;
                    }
                    (true, &r[n..])
                }
                None => (false, r),
            };
            let designator = r.chars().next()?;
            let index = match (after_t, designator) {
                (false, 'Y') => 0,
                (false, 'M') => 1,
                (false, 'D') => 2,
                (true, 'H') => 3,
                (true, 'M') => 4,
                (true, 'S') => 5,
                _ => return None,
            };
            if index < next || (fraction && index != 5) {
                return None;
            }
            next = index + 1;
            if index < 3 {
                ymd[index] = number.parse().ok()?;
            } else {
                any_time = true;
            }
            any = true;
            rest = &r[1..];
        }
        if !any || (after_t && !any_time) {
            return None;
        }
        Some(Looptijd { text: text.to_string(), ymd: (!any_time).then_some((ymd[0], ymd[1], ymd[2])) })
    }

    /// The end date as XSD adds durations (Appendix E of XML Schema Part 2): months and years
    /// first, the day clipped to the end of the resulting month, then the days. `None` when the
    /// duration has a time part or the end lies beyond year 9999.
    fn end(&self, start: Date) -> Option<Date> {
        let (years, months, days) = self.ymd?;
        let total = i64::from(start.year()) * 12
            + i64::from(start.month() as u8 - 1)
            + i64::from(years) * 12
            + i64::from(months);
        let year = i32::try_from(total.div_euclid(12)).ok()?;
        if year > 9999 {
            return None;
        }
        let month = Month::try_from(u8::try_from(total.rem_euclid(12) + 1).ok()?).ok()?;
        let mut day = start.day();
        let base = loop {
            match Date::from_calendar_date(year, month, day) {
                Ok(d) => break d,
                Err(_) if day > 28 => day -= 1,
                Err(_) => return None,
            }
        };
        let end = base.checked_add(time::Duration::days(i64::from(days)))?;
        (end.year() <= 9999).then_some(end)
    }
}

/// Escape `s` for XML 1.0 text or attribute content. Characters that XML 1.0 does not allow at
/// all (C0 controls other than tab, line feed and carriage return; U+FFFE, U+FFFF) become
/// U+FFFD; a carriage return is written as a character reference so parsers keep it.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    escape_into(&mut out, s);
    out
}

fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\r' => out.push_str("&#13;"),
            '\t' | '\n' => out.push(c),
            '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}' => out.push(c),
            _ => out.push('\u{FFFD}'),
        }
    }
}

/// A minimal indenting writer for the fixed MDTO shapes.
struct Xml {
    out: String,
    depth: usize,
}

impl Xml {
    fn start() -> Xml {
        let mut out = String::with_capacity(4096);
        let _ = write!(
            out,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<MDTO xmlns=\"{NAMESPACE}\" \
             xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" \
             xsi:schemaLocation=\"{NAMESPACE} {SCHEMA_LOCATION}\">\n"
        );
        Xml { out, depth: 1 }
    }

    fn finish(mut self) -> String {
        self.out.push_str("</MDTO>\n");
        self.out
    }

    fn indent(&mut self) {
        for _ in 0..self.depth {
            self.out.push('\t');
        }
    }

    fn open(&mut self, name: &str) {
        self.indent();
        let _ = writeln!(self.out, "<{name}>");
        self.depth += 1;
    }

    fn close(&mut self, name: &str) {
        self.depth -= 1;
        self.indent();
        let _ = writeln!(self.out, "</{name}>");
    }

    fn leaf(&mut self, name: &str, text: &str) {
        self.indent();
        let _ = write!(self.out, "<{name}>");
        escape_into(&mut self.out, text);
        let _ = writeln!(self.out, "</{name}>");
    }

    fn identificatie(&mut self, name: &str, kenmerk: &str, bron: &str) {
        self.open(name);
        self.leaf("identificatieKenmerk", kenmerk);
        self.leaf("identificatieBron", bron);
        self.close(name);
    }

    fn verwijzing(&mut self, name: &str, naam: &str, id: Option<(&str, &str)>) {
        self.open(name);
        self.leaf("verwijzingNaam", naam);
        if let Some((kenmerk, bron)) = id {
            self.identificatie("verwijzingIdentificatie", kenmerk, bron);
        }
        self.close(name);
    }

    fn begrip(&mut self, name: &str, label: &str, code: Option<&str>, lijst: &str) {
        self.open(name);
        self.leaf("begripLabel", label);
        if let Some(code) = code {
            self.leaf("begripCode", code);
        }
        self.verwijzing("begripBegrippenlijst", lijst, None);
        self.close(name);
    }

    fn event(&mut self, kind: &str, when: &str, actor: Option<&str>) {
        self.open("event");
        self.begrip("eventType", kind, None, LIJST_EVENT);
        self.leaf("eventTijd", when);
        if let Some(actor) = actor {
            self.verwijzing("eventVerantwoordelijkeActor", actor, None);
        }
        self.close("event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::{date, datetime};

    #[test]
    fn durations() {
        for ok in ["P10Y", "P6M", "P1Y6M", "P30D", "P0D", "PT1H", "P1DT0.5S", "P1Y2M3DT4H5M6S"] {
            assert!(Looptijd::parse(ok).is_some(), "{ok}");
        }
        for bad in ["", "P", "PT", "10Y", "P-1Y", "PY", "P1M1Y", "P1H", "P1.5Y", "P1YT", "P1Y ", "-P1Y", "P1YTT1H"] {
            // "P1Y " trims to a valid value; everything else is rejected.
            if bad == "P1Y " {
                assert_eq!(Looptijd::parse(bad).unwrap().text, "P1Y");
                continue;
            }
            assert!(Looptijd::parse(bad).is_none(), "{bad:?}");
        }
        assert_eq!(Looptijd::parse("PT1H").unwrap().ymd, None);
    }

    #[test]
    fn end_dates_follow_xsd_addition() {
        let end = |d: &str, start| Looptijd::parse(d).unwrap().end(start);
        assert_eq!(end("P10Y", date!(2024 - 02 - 29)), Some(date!(2034 - 02 - 28)));
        assert_eq!(end("P1M", date!(2023 - 01 - 31)), Some(date!(2023 - 02 - 28)));
        assert_eq!(end("P1Y1M1D", date!(2023 - 12 - 31)), Some(date!(2025 - 02 - 01)));
        assert_eq!(end("P30D", date!(2024 - 12 - 15)), Some(date!(2025 - 01 - 14)));
        assert_eq!(end("PT1H", date!(2024 - 12 - 15)), None);
        assert_eq!(end("P9000Y", date!(2024 - 12 - 15)), None);
    }

    #[test]
    fn stamps_keep_the_zone_when_xsd_can() {
        let s = Stamp::new(datetime!(2024-03-05 23:30:00 -02:30)).unwrap();
        assert_eq!(s.date_time, "2024-03-05T23:30:00-02:30");
        assert_eq!(s.date, date!(2024 - 03 - 05));
        let s = Stamp::new(datetime!(2024-03-05 23:30:00 +15:00)).unwrap();
        assert_eq!(s.date_time, "2024-03-05T08:30:00Z");
        assert!(Stamp::new(datetime!(0000-01-01 0:00 UTC)).is_none());
    }

    #[test]
    fn escaping() {
        assert_eq!(
            escape("a&b<c>d\"e'f\r\n\t\u{0}\u{1b}\u{FFFE}😀"),
            "a&amp;b&lt;c&gt;d&quot;e&apos;f&#13;\n\t\u{FFFD}\u{FFFD}\u{FFFD}😀"
        );
    }

    #[test]
    fn defaults_validate() {
        MdtoConfig::default().validate(&crate::classify::LABELS).unwrap();
        let mut cfg = MdtoConfig::default();
        cfg.selectie.remove("prive");
        assert_eq!(cfg.validate(&crate::classify::LABELS).unwrap_err().key, "selectie.prive");
    }
}
