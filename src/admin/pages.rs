//! The console's HTML: plain server-rendered pages without any script, so that the
//! Content-Security-Policy can forbid scripts altogether. Everything that comes from a message or
//! from disk goes through [`esc`]; a message body is shown as the parser's text in a `<pre>`,
//! never as the message's own HTML.

use std::fmt::Write;

use super::auth::{Role, Session};
use crate::classify::LABELS;
use crate::classify::baseline::TermWeight;
use crate::review::ReviewItem;

/// The stylesheet, served as `/style.css` (the CSP allows styles from 'self' only).
pub const CSS: &str = "\
body{font-family:system-ui,sans-serif;margin:0;color:#1b1b1b;background:#f6f6f4}
header{background:#154273;color:#fff;padding:.6em 1.2em;display:flex;gap:1.5em;align-items:center}
header a{color:#fff}header form{margin-left:auto}header .who{opacity:.85}
main{padding:1em 1.2em;max-width:72em}
table{border-collapse:collapse;background:#fff}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
pre.body{white-space:pre-wrap;background:#fff;border:1px solid #ccc;padding:.8em;max-height:40em;overflow:auto}
.flash{background:#e3f4e1;border:1px solid #7bb274;padding:.5em}.error{background:#fbe3e3;border:1px solid #d27;padding:.5em}
form.filters label,form.decide label{margin-right:1em}fieldset{background:#fff}
.num{text-align:right;font-variant-numeric:tabular-nums}
";

/// HTML-escape text for element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A whole page: the header with navigation and logout (for a session), then `body`.
pub fn layout(title: &str, session: Option<&Session>, body: &str) -> String {
    let nav = match session {
        Some(s) => format!(
            "<a href=\"/\">Queue</a><a href=\"/audit\">Audit trail</a>\
             <span class=\"who\">{} ({})</span>\
             <form method=\"post\" action=\"/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button type=\"submit\">Log out</button></form>",
            esc(&s.user),
            s.role.as_str(),
            esc(&s.csrf)
        ),
        None => String::new(),
    };
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{} · mailgrip</title>\
         <link rel=\"stylesheet\" href=\"/style.css\"></head><body><header><strong>mailgrip</strong>{nav}</header>\
         <main>{body}</main></body></html>\n",
        esc(title)
    )
}

pub fn login(error: Option<&str>) -> String {
    let error = error.map(|e| format!("<p class=\"error\" id=\"login-error\">{}</p>", esc(e))).unwrap_or_default();
    layout(
        "Log in",
        None,
        &format!(
            "<h1>Log in</h1>{error}<form method=\"post\" action=\"/login\">\
             <p><label>Name <input name=\"user\" id=\"user\" autocomplete=\"username\" required></label></p>\
             <p><label>Password <input type=\"password\" name=\"password\" id=\"password\" \
             autocomplete=\"current-password\" required></label></p>\
             <p><button type=\"submit\" id=\"login\">Log in</button></p></form>"
        ),
    )
}

/// The queue's filters, as given in the query string.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Filter {
    /// Predicted class; empty = all.
    pub class: String,
    /// Held at least this many minutes.
    pub min_age_mins: Option<u64>,
    /// Probability of the predicted class within [min, max].
    pub min_score: Option<f64>,
    pub max_score: Option<f64>,
}

impl Filter {
    /// Parse `class`, `min_age` (minutes), `min_score` and `max_score`; empty values mean "any".
    pub fn parse(query: &str) -> Result<Filter, String> {
        let mut f = Filter::default();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            let v = v.trim();
            if v.is_empty() {
                continue;
            }
            let score = |v: &str| match v.parse::<f64>() {
                Ok(x) if (0.0..=1.0).contains(&x) => Ok(Some(x)),
                _ => Err(format!("{k}: {v:?} is not a probability between 0 and 1")),
            };
            match &*k {
                "class" => f.class = v.to_string(),
                "min_age" => {
                    f.min_age_mins = Some(v.parse().map_err(|_| format!("min_age: {v:?} is not a number of minutes"))?)
                }
                "min_score" => f.min_score = score(v)?,
                "max_score" => f.max_score = score(v)?,
                _ => {}
            }
        }
        Ok(f)
    }

    pub fn matches(&self, item: &ReviewItem) -> bool {
        let score = top_score(item);
        (self.class.is_empty() || item.class == self.class)
            && self.min_age_mins.is_none_or(|m| item.age_secs >= m.saturating_mul(60))
            && self.min_score.is_none_or(|m| score >= m)
            && self.max_score.is_none_or(|m| score <= m)
    }
}

/// The probability of the predicted class (NaN when the item has none, e.g. `unclassified`).
pub fn top_score(item: &ReviewItem) -> f64 {
    item.scores.get(&item.class).and_then(|v| v.as_f64()).unwrap_or(f64::NAN)
}

fn age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} d", s / 86_400),
    }
}

fn class_options(selected: &str, with_any: bool) -> String {
    let mut out = String::new();
    if with_any {
        out.push_str("<option value=\"\">any</option>");
    }
    let extra = (!selected.is_empty() && !LABELS.contains(&selected)).then_some(selected);
    for c in LABELS.iter().copied().chain(extra) {
        let sel = if c == selected { " selected" } else { "" };
        let _ = write!(out, "<option value=\"{0}\"{sel}>{0}</option>", esc(c));
    }
    out
}

/// One row of the queue: the item and its subject (read from the held copy's header).
pub struct Row {
    pub item: ReviewItem,
    pub subject: String,
}

/// Rows shown at most; the filters narrow a longer queue down.
pub const MAX_ROWS: usize = 500;

pub fn queue(rows: &[Row], matched: usize, total: usize, filter: &Filter, flash: Option<&str>, s: &Session) -> String {
    let mut body = String::from("<h1>Review queue</h1>");
    if let Some(flash) = flash {
        let _ = write!(body, "<p class=\"flash\" id=\"flash\">{}</p>", esc(flash));
    }
    let opt = |v: Option<f64>| v.map(|x| x.to_string()).unwrap_or_default();
    let _ = write!(
        body,
        "<form method=\"get\" action=\"/\" class=\"filters\">\
         <label>Class <select name=\"class\">{}</select></label>\
         <label>Held at least <input name=\"min_age\" size=\"5\" value=\"{}\"> min</label>\
         <label>Score from <input name=\"min_score\" size=\"5\" value=\"{}\"></label>\
         <label>to <input name=\"max_score\" size=\"5\" value=\"{}\"></label>\
         <button type=\"submit\">Filter</button></form>",
        class_options(&filter.class, true),
        filter.min_age_mins.map(|m| m.to_string()).unwrap_or_default(),
        esc(&opt(filter.min_score)),
        esc(&opt(filter.max_score)),
    );
    let _ = write!(body, "<p id=\"count\">{matched} of {total} held copies match, oldest first.");
    if matched > rows.len() {
        let _ = write!(body, " The first {} are shown.", rows.len());
    }
    body.push_str(
        "</p><table id=\"queue\"><thead><tr><th>Held</th><th>Age</th><th>Class</th><th>Score</th>\
                   <th>Subject</th><th>Reason</th></tr></thead><tbody>",
    );
    for r in rows {
        let i = &r.item;
        let subject = if r.subject.trim().is_empty() { "(no subject)" } else { r.subject.as_str() };
        let _ = write!(
            body,
            "<tr><td>{}</td><td class=\"num\">{}</td><td>{}</td><td class=\"num\">{:.3}</td>\
             <td><a class=\"item\" href=\"/item/{}\">{}</a></td><td>{}</td></tr>",
            esc(&i.time),
            age(i.age_secs),
            esc(&i.class),
            top_score(i),
            esc(&i.id),
            esc(subject),
            esc(&i.reason)
        );
    }
    body.push_str("</tbody></table>");
    layout("Review queue", Some(s), &body)
}

/// Everything the detail page shows about one held copy.
pub struct Detail {
    pub item: ReviewItem,
    /// Header name and decoded value, in a fixed order.
    pub headers: Vec<(&'static str, String)>,
    /// The parser's text of the body (text/plain, or HTML converted to text).
    pub body: String,
    pub attachments: Vec<String>,
    pub parse_error: Option<String>,
    /// The baseline's top terms toward the predicted class, and the baseline's `name@version`;
    /// `None` when no explanation model is configured.
    pub explanation: Option<(String, Vec<TermWeight>)>,
}

pub fn detail(d: &Detail, s: &Session) -> String {
    let i = &d.item;
    let mut body = format!("<h1>Held copy <code>{}</code></h1>", esc(&i.id));
    body.push_str("<h2>Headers</h2><table id=\"headers\">");
    for (name, value) in &d.headers {
        let _ = write!(body, "<tr><th>{name}</th><td>{}</td></tr>", esc(value));
    }
    if !d.attachments.is_empty() {
        let _ = write!(body, "<tr><th>Attachments</th><td>{}</td></tr>", esc(&d.attachments.join(", ")));
    }
    body.push_str("</table>");
    let _ = write!(
        body,
        "<h2>Classification</h2><table id=\"classification\">\
         <tr><th>Predicted class</th><td id=\"class\">{}</td></tr>\
         <tr><th>Model</th><td id=\"model\">{}@{}</td></tr>\
         <tr><th>Reason for review</th><td id=\"reason\">{}</td></tr>\
         <tr><th>Held since</th><td>{} ({} ago)</td></tr>\
         <tr><th>Size</th><td>{} bytes</td></tr></table>",
        esc(&i.class),
        esc(&i.model),
        esc(&i.model_version),
        esc(&i.reason),
        esc(&i.time),
        age(i.age_secs),
        i.size
    );
    let mut scores: Vec<(&String, f64)> = i.scores.iter().map(|(k, v)| (k, v.as_f64().unwrap_or(f64::NAN))).collect();
    scores.sort_by(|a, b| b.1.total_cmp(&a.1));
    body.push_str("<h3>Scores</h3><table id=\"scores\"><tr><th>Class</th><th>Probability</th></tr>");
    for (class, p) in scores {
        let _ = write!(body, "<tr><td>{}</td><td class=\"num\">{p:.4}</td></tr>", esc(class));
    }
    body.push_str("</table>");
    match &d.explanation {
        Some((model, terms)) => {
            let _ = write!(
                body,
                "<h3>Top terms toward {} <small>(explained by {})</small></h3>",
                esc(&i.class),
                esc(model)
            );
            if terms.is_empty() {
                body.push_str("<p id=\"terms\">No term of this message pushes toward this class.</p>");
            } else {
                body.push_str("<table id=\"terms\"><tr><th>Term</th><th>Weight</th></tr>");
                for t in terms {
                    let _ = write!(
                        body,
                        "<tr><td><code>{}</code></td><td class=\"num\">{:.4}</td></tr>",
                        esc(&t.term),
                        t.weight
                    );
                }
                body.push_str("</table>");
            }
        }
        None => body.push_str("<p>No explanation model is configured (<code>admin.explain_model</code>).</p>"),
    }
    body.push_str("<h2>Body</h2>");
    if let Some(e) = &d.parse_error {
        let _ = write!(body, "<p class=\"error\">The message could not be parsed: {}</p>", esc(e));
    }
    let _ = write!(body, "<pre class=\"body\" id=\"body\">{}</pre>", esc(&d.body));
    body.push_str("<h2>Decision</h2>");
    if s.role == Role::Archivist {
        let _ = write!(
            body,
            "<form method=\"post\" action=\"/item/{}/decide\" class=\"decide\"><fieldset>\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <label><input type=\"radio\" name=\"action\" value=\"archive\" id=\"action-archive\" required> archive</label>\
             <label><input type=\"radio\" name=\"action\" value=\"archive-restricted\" id=\"action-archive-restricted\"> \
             archive-restricted</label>\
             <label><input type=\"radio\" name=\"action\" value=\"none\" id=\"action-none\"> not archived</label>\
             <p><label>Correct class <select name=\"class\" id=\"corrected-class\">{}</select></label></p>\
             <button type=\"submit\" id=\"decide\">Decide</button></fieldset></form>",
            esc(&i.id),
            esc(&s.csrf),
            class_options(&i.class, false)
        );
    } else {
        body.push_str("<p id=\"view-only\">Your role (auditor) may view held copies but not decide on them.</p>");
    }
    layout("Held copy", Some(s), &body)
}

/// The audit-chain status page.
pub fn audit(lines: &[(String, Result<String, String>)], s: &Session) -> String {
    let mut body = String::from("<h1>Audit trail</h1><table id=\"chains\"><tr><th>Chain</th><th>Status</th></tr>");
    for (name, status) in lines {
        let (class, text) = match status {
            Ok(t) => ("flash", t.as_str()),
            Err(t) => ("error", t.as_str()),
        };
        let _ = write!(body, "<tr><td>{}</td><td class=\"{class}\">{}</td></tr>", esc(name), esc(text));
    }
    body.push_str("</table><p>The same check from the command line: <code>mailgrip audit verify PATH</code>.</p>");
    layout("Audit trail", Some(s), &body)
}

/// A short page for errors and refusals.
pub fn message(title: &str, text: &str, s: Option<&Session>) -> String {
    layout(title, s, &format!("<h1>{}</h1><p class=\"error\" id=\"message\">{}</p>", esc(title), esc(text)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            esc("<script>alert('x&y')</script>\""),
            "&lt;script&gt;alert(&#39;x&amp;y&#39;)&lt;/script&gt;&quot;"
        );
    }

    #[test]
    fn filters_parse_and_match() {
        let f = Filter::parse("class=prive&min_age=&min_score=0.2&max_score=0.9").unwrap();
        assert_eq!(f.class, "prive");
        assert_eq!((f.min_age_mins, f.min_score, f.max_score), (None, Some(0.2), Some(0.9)));
        assert!(Filter::parse("min_score=2").is_err());
        assert!(Filter::parse("min_age=abc").is_err());
        let mut item: ReviewItem = serde_json::from_value(serde_json::json!({
            "id": "a", "class": "prive", "reason": "r", "model": "m", "model_version": "1", "time": "t",
            "scores": {"prive": 0.5, "functioneel": 0.3}
        }))
        .unwrap();
        item.age_secs = 600;
        assert!(f.matches(&item));
        assert!(!Filter { min_age_mins: Some(11), ..f.clone() }.matches(&item));
        assert!(!Filter { max_score: Some(0.4), ..f.clone() }.matches(&item));
        assert!(!Filter { class: "functioneel".into(), ..f }.matches(&item));
    }
}
