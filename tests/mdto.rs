//! MDTO sidecars: every variant validates against the official XSD with `xmllint`, and the values
//! read back from the XML are the ones put in.
//!
//! Needs `xmllint` (Debian: `apt-get update && apt-get install -y libxml2-utils`) and the XSD at
//! `$MDTO_XSD` or `../shared/mdto/MDTO-XML1.0.1.xsd` (relative to the crate). Without either the
//! tests fail: a metadata format that is never validated is not a tested one.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::{validate, xmllint, xsd};
use mailgrip::mdto::{self, MdtoConfig, Record, Selection};
use time::OffsetDateTime;
use time::macros::datetime;

/// The string value of an XPath expression (namespace-agnostic via `local-name()`).
fn xpath(file: &Path, expr: &str) -> String {
    let out = Command::new(xmllint()).arg("--xpath").arg(expr).arg(file).output().expect("running xmllint --xpath");
    assert!(
        out.status.success() || out.status.code() == Some(10),
        "xpath {expr} on {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut s = String::from_utf8(out.stdout).unwrap();
    if s.ends_with('\n') {
        s.pop();
    }
    s
}

/// `string(/MDTO/<object>/a/b...)` with local names.
fn at(path: &str) -> String {
    let steps: String = path
        .split('/')
        .map(|step| match step.split_once('[') {
            Some((name, pred)) => format!("/*[local-name()='{name}'][{pred}"),
            None => format!("/*[local-name()='{step}']"),
        })
        .collect();
    format!("string(/*[local-name()='MDTO']{steps})")
}

fn count(file: &Path, path: &str) -> usize {
    let expr = at(path).replacen("string(", "count(", 1);
    xpath(file, &expr).parse().unwrap()
}

fn value(file: &Path, path: &str) -> String {
    xpath(file, &at(path))
}

struct Case {
    name: &'static str,
    message_id: Option<&'static str>,
    subject: &'static str,
    class: &'static str,
    sent: Option<OffsetDateTime>,
    restricted: bool,
    reason: Option<&'static str>,
}

const HOSTILE: &str = "Re: a & b < c > d \"e\" 'f' \u{1F600} caf\u{e9} \u{0}\u{7}\u{1b}\u{b}\u{c} \
                       cr\r lf\n tab\t \u{FFFE}\u{FFFF} ]]> <!-- x -->";

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "functioneel",
            message_id: Some("<20240305101500.A1@example.nl>"),
            subject: "Besluit op bezwaar",
            class: "functioneel",
            sent: Some(datetime!(2024-03-05 10:15:00 +01:00)),
            restricted: false,
            reason: None,
        },
        Case {
            name: "prive-no-id-no-subject-no-date",
            message_id: None,
            subject: "",
            class: "prive",
            sent: None,
            restricted: false,
            reason: None,
        },
        Case {
            name: "hostile-subject",
            message_id: Some("a&b<c>@example.nl"),
            subject: HOSTILE,
            class: "niet-functioneel",
            sent: Some(datetime!(2024-02-29 23:59:59 -02:30)),
            restricted: false,
            reason: None,
        },
        Case {
            name: "personeelsvertrouwelijk-restricted",
            message_id: Some("p@example.nl"),
            subject: "   ",
            class: "personeelsvertrouwelijk",
            sent: Some(datetime!(2023-01-31 08:00:00 UTC)),
            restricted: true,
            reason: Some("Personeelsvertrouwelijk; alleen P&O <dossier>"),
        },
        Case {
            name: "partijpolitiek-restricted-no-reason-blank-id",
            message_id: Some("  "),
            subject: "Fractieoverleg",
            class: "partijpolitiek",
            sent: Some(datetime!(2024-07-01 12:00:00 +15:00)),
            restricted: true,
            reason: None,
        },
        Case {
            name: "forged-year-zero",
            message_id: Some("z@example.nl"),
            subject: "Oud",
            class: "functioneel",
            sent: Some(datetime!(0000-01-01 00:00:00 UTC)),
            restricted: false,
            reason: None,
        },
        Case {
            name: "unconfigured-class",
            message_id: None,
            subject: "Onbekend",
            class: "nieuwe-klasse",
            sent: Some(datetime!(2024-03-05 10:15:00 UTC)),
            restricted: false,
            reason: None,
        },
        Case {
            name: "blijvend",
            message_id: Some("b@example.nl"),
            subject: "Kamerbrief",
            class: "bestuurlijk",
            sent: Some(datetime!(2024-03-05 10:15:00 UTC)),
            restricted: false,
            reason: None,
        },
    ]
}

fn config() -> MdtoConfig {
    let mut cfg = MdtoConfig {
        archiefvormer: "Ministerie van Infrastructuur & Waterstaat".into(),
        archiefvormer_kenmerk: "https://organisaties.overheid.nl/112773/Infrastructuur_en_Waterstaat".into(),
        selectielijst_naam: "Selectielijst IenW <2024>".into(),
        ..MdtoConfig::default()
    };
    cfg.selectie.insert(
        "bestuurlijk".into(),
        Selection {
            waardering: "B".into(),
            bewaartermijn: None,
            categorie: "Bestuurlijke correspondentie".into(),
            categorie_code: Some("1.1".into()),
        },
    );
    cfg
}

const ARCHIVED: OffsetDateTime = datetime!(2024-03-05 09:16:17.123456 UTC);
const SHA: &str = "86F16C3359C2E59538A3DF178A9530DD6278FAEC82E66D605B3BC2A64AC390FC";

struct Rendered {
    case: Case,
    id: String,
    object: PathBuf,
    file: PathBuf,
}

/// Render both documents of every case into `dir`.
fn render_all(dir: &Path, cfg: &MdtoConfig) -> Vec<Rendered> {
    cases()
        .into_iter()
        .enumerate()
        .map(|(i, case)| {
            let id = format!("0190f3a1-{i:04}-{}", case.name);
            let eml = format!("{id}.eml");
            let r = Record {
                id: &id,
                message_id: case.message_id,
                subject: case.subject,
                class: case.class,
                model: "mailgrip-base@1.2.0",
                sent: case.sent,
                archived: ARCHIVED,
                eml_file: &eml,
                size: 12_345 + i as u64,
                sha256: SHA,
                restricted: case.restricted,
                restriction_reason: case.reason,
            };
            let object = dir.join(format!("{id}.mdto.xml"));
            let file = dir.join(format!("{id}.eml.mdto.xml"));
            std::fs::write(&object, mdto::informatieobject(cfg, &r)).unwrap();
            std::fs::write(&file, mdto::bestand(cfg, &r)).unwrap();
            Rendered { case, id, object, file }
        })
        .collect()
}

#[test]
fn the_official_examples_validate() {
    let dir = xsd().parent().unwrap().to_path_buf();
    validate(&[
        dir.join("MDTO-XML_1.0.1_Voorbeeld_Archiefstuk_Informatieobject.xml"),
        dir.join("MDTO-XML_1.0.1_Voorbeeld_Bestand.xml"),
    ])
    .unwrap();
}

#[test]
fn every_variant_validates_against_the_xsd() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config();
    let rendered = render_all(tmp.path(), &cfg);
    let files: Vec<PathBuf> = rendered.iter().flat_map(|r| [r.object.clone(), r.file.clone()]).collect();
    if let Err(e) = validate(&files) {
        panic!("MDTO sidecars do not validate:\n{e}");
    }
    // The default configuration renders valid documents too.
    let tmp2 = tempfile::tempdir().unwrap();
    let default = render_all(tmp2.path(), &MdtoConfig::default());
    let files: Vec<PathBuf> = default.iter().flat_map(|r| [r.object.clone(), r.file.clone()]).collect();
    if let Err(e) = validate(&files) {
        panic!("MDTO sidecars (default config) do not validate:\n{e}");
    }
}

#[test]
fn values_read_back_from_the_xml() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config();
    let rendered = render_all(tmp.path(), &cfg);
    let get = |name: &str| rendered.iter().find(|r| r.case.name == name).unwrap();
    let io = "informatieobject";

    // Common to all: aggregatieniveau, classificatie with model, archiefvormer, representation
    // links both ways, the bestand's format and checksum.
    for r in &rendered {
        let o = &r.object;
        let f = &r.file;
        let eml = format!("{}.eml", r.id);
        assert_eq!(value(o, &format!("{io}/aggregatieniveau/begripLabel")), "Archiefstuk");
        assert_eq!(value(o, &format!("{io}/classificatie/begripLabel")), r.case.class);
        assert_eq!(
            value(o, &format!("{io}/classificatie/begripBegrippenlijst/verwijzingNaam")),
            "mailgrip classes (model mailgrip-base@1.2.0)"
        );
        assert_eq!(
            value(o, &format!("{io}/archiefvormer/verwijzingNaam")),
            "Ministerie van Infrastructuur & Waterstaat"
        );
        assert_eq!(
            value(o, &format!("{io}/archiefvormer/verwijzingIdentificatie/identificatieBron")),
            "Register van Overheidsorganisaties"
        );
        // The decision id is always an identificatie, and the one the bestand points back to.
        let last = count(o, &format!("{io}/identificatie"));
        assert_eq!(value(o, &format!("{io}/identificatie[{last}]/identificatieKenmerk")), r.id);
        assert_eq!(value(o, &format!("{io}/identificatie[{last}]/identificatieBron")), "mailgrip");
        assert_eq!(value(o, &format!("{io}/heeftRepresentatie/verwijzingNaam")), eml);
        assert_eq!(
            value(o, &format!("{io}/heeftRepresentatie/verwijzingIdentificatie/identificatieKenmerk")),
            value(f, "bestand/identificatie/identificatieKenmerk")
        );
        assert_eq!(value(f, "bestand/isRepresentatieVan/verwijzingIdentificatie/identificatieKenmerk"), r.id);
        assert_eq!(value(f, "bestand/isRepresentatieVan/verwijzingNaam"), value(o, &format!("{io}/naam")));
        assert_eq!(value(f, "bestand/naam"), eml);
        assert_eq!(value(f, "bestand/bestandsformaat/begripCode"), "fmt/950");
        assert_eq!(value(f, "bestand/checksum/checksumAlgoritme/begripLabel"), "SHA-256");
        assert_eq!(value(f, "bestand/checksum/checksumWaarde"), SHA.to_ascii_lowercase());
        assert_eq!(value(f, "bestand/checksum/checksumDatum"), "2024-03-05T09:16:17Z");
        assert_eq!(count(o, &format!("{io}/beperkingGebruik")), 1);
    }

    // With Message-ID: it comes first, with its source.
    let o = &get("functioneel").object;
    assert_eq!(count(o, &format!("{io}/identificatie")), 2);
    assert_eq!(value(o, &format!("{io}/identificatie[1]/identificatieKenmerk")), "<20240305101500.A1@example.nl>");
    assert_eq!(value(o, &format!("{io}/identificatie[1]/identificatieBron")), "Message-ID");
    assert_eq!(value(o, &format!("{io}/naam")), "Besluit op bezwaar");
    assert_eq!(value(o, &format!("{io}/event[1]/eventType/begripLabel")), "Creatie");
    assert_eq!(value(o, &format!("{io}/event[1]/eventTijd")), "2024-03-05T10:15:00+01:00");
    assert_eq!(value(o, &format!("{io}/event[2]/eventType/begripLabel")), "Opname");
    assert_eq!(value(o, &format!("{io}/event[2]/eventTijd")), "2024-03-05T09:16:17Z");
    assert_eq!(value(o, &format!("{io}/waardering/begripCode")), "V");
    assert_eq!(value(o, &format!("{io}/waardering/begripLabel")), "Tijdelijk te bewaren");
    assert_eq!(value(o, &format!("{io}/bewaartermijn/termijnTriggerStartLooptijd/begripLabel")), "Creatie");
    assert_eq!(value(o, &format!("{io}/bewaartermijn/termijnStartdatumLooptijd")), "2024-03-05");
    assert_eq!(value(o, &format!("{io}/bewaartermijn/termijnLooptijd")), "P10Y");
    assert_eq!(value(o, &format!("{io}/bewaartermijn/termijnEinddatum")), "2034-03-05");
    assert_eq!(
        value(o, &format!("{io}/informatiecategorie/begripBegrippenlijst/verwijzingNaam")),
        "Selectielijst IenW <2024>"
    );
    assert_eq!(value(o, &format!("{io}/beperkingGebruik/beperkingGebruikType/begripLabel")), "Nader te bepalen");
    assert_eq!(value(&get("functioneel").file, "bestand/omvang"), "12345");

    // Without Message-ID, subject or date: decision id only, placeholder name, the term runs
    // from archiving.
    let o = &get("prive-no-id-no-subject-no-date").object;
    assert_eq!(count(o, &format!("{io}/identificatie")), 1);
    assert_eq!(value(o, &format!("{io}/naam")), "(geen onderwerp)");
    assert_eq!(count(o, &format!("{io}/event")), 1);
    assert_eq!(value(o, &format!("{io}/event/eventType/begripLabel")), "Opname");
    assert_eq!(value(o, &format!("{io}/bewaartermijn/termijnTriggerStartLooptijd/begripLabel")), "Opname");
    assert_eq!(value(o, &format!("{io}/bewaartermijn/termijnStartdatumLooptijd")), "2024-03-05");
    assert_eq!(value(o, &format!("{io}/bewaartermijn/termijnEinddatum")), "2025-03-05");

    // Hostile subject: markup characters survive, forbidden characters become U+FFFD, CR is kept.
    let r = get("hostile-subject");
    let expected: String = HOSTILE
        .chars()
        .map(|c| match c {
            '\u{0}' | '\u{7}' | '\u{1b}' | '\u{b}' | '\u{c}' | '\u{FFFE}' | '\u{FFFF}' => '\u{FFFD}',
            c => c,
        })
        .collect();
    assert_eq!(value(&r.object, &format!("{io}/naam")), expected);
    assert_eq!(value(&r.file, "bestand/isRepresentatieVan/verwijzingNaam"), expected);
    assert_eq!(value(&r.object, &format!("{io}/identificatie[1]/identificatieKenmerk")), "a&b<c>@example.nl");
    // The date is the sender's local date; 29 February + 1 year is 28 February.
    assert_eq!(value(&r.object, &format!("{io}/event[1]/eventTijd")), "2024-02-29T23:59:59-02:30");
    assert_eq!(value(&r.object, &format!("{io}/bewaartermijn/termijnLooptijd")), "P1Y");
    assert_eq!(value(&r.object, &format!("{io}/bewaartermijn/termijnEinddatum")), "2025-02-28");

    // Restricted, with a reason; blank subject gets the placeholder.
    let o = &get("personeelsvertrouwelijk-restricted").object;
    assert_eq!(value(o, &format!("{io}/naam")), "(geen onderwerp)");
    assert_eq!(value(o, &format!("{io}/beperkingGebruik/beperkingGebruikType/begripLabel")), "Overig");
    assert_eq!(
        value(o, &format!("{io}/beperkingGebruik/beperkingGebruikNadereBeschrijving")),
        "Personeelsvertrouwelijk; alleen P&O <dossier>"
    );

    // Restricted without a reason: a default description. Blank Message-ID counts as absent.
    // An offset xsd:dateTime cannot carry (+15:00) is written in UTC, dates follow.
    let o = &get("partijpolitiek-restricted-no-reason-blank-id").object;
    assert_eq!(count(o, &format!("{io}/identificatie")), 1);
    assert!(
        value(o, &format!("{io}/beperkingGebruik/beperkingGebruikNadereBeschrijving")).contains("archive-restricted")
    );
    assert_eq!(value(o, &format!("{io}/event[1]/eventTijd")), "2024-06-30T21:00:00Z");
    assert_eq!(value(o, &format!("{io}/bewaartermijn/termijnStartdatumLooptijd")), "2024-06-30");

    // A Date: that XSD cannot carry is treated as absent.
    let o = &get("forged-year-zero").object;
    assert_eq!(count(o, &format!("{io}/event")), 1);
    assert_eq!(value(o, &format!("{io}/bewaartermijn/termijnTriggerStartLooptijd/begripLabel")), "Opname");

    // A class without a selectie entry: waardering N, no term, no category.
    let o = &get("unconfigured-class").object;
    assert_eq!(value(o, &format!("{io}/waardering/begripCode")), "N");
    assert_eq!(value(o, &format!("{io}/waardering/begripLabel")), "Nader te bepalen");
    assert_eq!(count(o, &format!("{io}/bewaartermijn")), 0);
    assert_eq!(count(o, &format!("{io}/informatiecategorie")), 0);

    // B: blijvend, no bewaartermijn, category with its code.
    let o = &get("blijvend").object;
    assert_eq!(value(o, &format!("{io}/waardering/begripCode")), "B");
    assert_eq!(value(o, &format!("{io}/waardering/begripLabel")), "Blijvend te bewaren");
    assert_eq!(count(o, &format!("{io}/bewaartermijn")), 0);
    assert_eq!(value(o, &format!("{io}/informatiecategorie/begripCode")), "1.1");
}

/// The validation really runs: broken documents are refused, for the reason we broke them.
#[test]
fn xmllint_rejects_broken_documents() {
    let tmp = tempfile::tempdir().unwrap();
    let rendered = render_all(tmp.path(), &config());
    let r = &rendered[0];
    let object = std::fs::read_to_string(&r.object).unwrap();
    let file = std::fs::read_to_string(&r.file).unwrap();

    // The mandatory waardering removed.
    let start = object.find("\t\t<waardering>").unwrap();
    let end = object.find("</waardering>\n").unwrap() + "</waardering>\n".len();
    let no_waardering = format!("{}{}", &object[..start], &object[end..]);
    // Size that is not an integer.
    let bad_size = file.replace("<omvang>12345</omvang>", "<omvang>12 kB</omvang>");
    assert_ne!(bad_size, file);
    // Elements out of the XSD's order (archiefvormer before heeftRepresentatie).
    let a = object.find("\t\t<heeftRepresentatie>").unwrap();
    let b = object.find("\t\t<archiefvormer>").unwrap();
    let c = object.find("</archiefvormer>\n").unwrap() + "</archiefvormer>\n".len();
    let swapped = format!("{}{}{}{}", &object[..a], &object[b..c], &object[a..b], &object[c..]);
    // A checksum date without time (xsd:date where xsd:dateTime is required).
    let bad_date = file.replace("2024-03-05T09:16:17Z", "2024-03-05");
    assert_ne!(bad_date, file);
    // Not well-formed: an unescaped ampersand.
    let unescaped = object.replace("Besluit op bezwaar", "Besluit & bezwaar");

    for (name, doc, why) in [
        ("no-waardering", no_waardering, "waardering"),
        ("bad-size", bad_size, "omvang"),
        ("swapped", swapped, "archiefvormer"),
        ("bad-date", bad_date, "checksumDatum"),
        ("unescaped", unescaped, "EntityRef"),
    ] {
        let path = tmp.path().join(format!("{name}.xml"));
        std::fs::write(&path, doc).unwrap();
        match validate(std::slice::from_ref(&path)) {
            Ok(()) => panic!("{name}: xmllint accepted a broken document"),
            Err(e) => assert!(e.contains(why), "{name}: unexpected complaint: {e}"),
        }
    }
}

#[test]
fn config_validation() {
    let classes = ["functioneel", "prive", "niet-functioneel", "personeelsvertrouwelijk", "partijpolitiek"];
    MdtoConfig::default().validate(&classes).unwrap();

    let mut cfg = MdtoConfig::default();
    cfg.selectie.get_mut("functioneel").unwrap().bewaartermijn = Some("10 jaar".into());
    assert_eq!(cfg.validate(&classes).unwrap_err().key, "selectie.functioneel.bewaartermijn");

    let mut cfg = MdtoConfig::default();
    cfg.selectie.get_mut("prive").unwrap().waardering = "X".into();
    assert_eq!(cfg.validate(&classes).unwrap_err().key, "selectie.prive.waardering");

    let mut cfg = MdtoConfig::default();
    cfg.selectie.remove("partijpolitiek");
    let err = cfg.validate(&classes).unwrap_err();
    assert_eq!(err.key, "selectie.partijpolitiek");
    assert!(err.to_string().starts_with("mdto.selectie.partijpolitiek: "));

    let mut cfg = MdtoConfig::default();
    cfg.selectie.get_mut("functioneel").unwrap().waardering = "B".into();
    assert_eq!(cfg.validate(&classes).unwrap_err().key, "selectie.functioneel.bewaartermijn");

    // The section round-trips through TOML and refuses unknown keys.
    let text = toml::to_string(&MdtoConfig::default()).unwrap();
    let back: MdtoConfig = toml::from_str(&text).unwrap();
    assert_eq!(back, MdtoConfig::default());
    assert!(toml::from_str::<MdtoConfig>("archiefvormr = \"x\"").is_err());
    let partial: MdtoConfig = toml::from_str("archiefvormer = \"Gemeente X\"").unwrap();
    assert_eq!(partial.selectie, MdtoConfig::default().selectie);
}
