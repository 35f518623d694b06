//! The archivist's web console over plain HTTP (raw TCP, no HTTP client library in between):
//! login and its failures, the session cookie's attributes, security headers on every response,
//! CSRF and Origin checks, roles, session expiry, the escaped body of a held copy, and a decision
//! that moves the copy into the archive and into the reviewers' audit chain.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use common::*;
use mailgrip::admin::auth::hash_password;
use mailgrip::admin::{AdminUser, Role};
use mailgrip::config::Config;

const ARCHIVIST_PW: &str = "correct horse battery staple";
const AUDITOR_PW: &str = "auditor's own pass phrase";

/// A gateway with the console on an ephemeral port.
struct Console {
    smtp: SocketAddr,
    admin: SocketAddr,
    metrics: SocketAddr,
    dir: tempfile::TempDir,
    shutdown: CancellationToken,
}

impl Drop for Console {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start_console(tweak: impl FnOnce(&mut Config)) -> Console {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path(), None);
    // Review is the cheapest action for every class: every mail is held.
    for row in cfg.policy.costs.rows_mut() {
        row.review = 0.0;
    }
    cfg.admin.listen = "127.0.0.1:0".into();
    cfg.admin.explain_model = repo().join("models/mailgrip-baseline");
    cfg.admin.users = vec![
        AdminUser { name: "anna".into(), role: Role::Archivist, password_hash: hash_password(ARCHIVIST_PW).unwrap() },
        AdminUser { name: "otto".into(), role: Role::Auditor, password_hash: hash_password(AUDITOR_PW).unwrap() },
    ];
    tweak(&mut cfg);
    cfg.validate().expect("test config must validate");
    let smtp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addrs = (smtp.local_addr().unwrap(), admin.local_addr().unwrap(), metrics.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let s = shutdown.clone();
    tokio::spawn(async move {
        let listeners =
            mailgrip::Listeners { smtp: Some(smtp), metrics: Some(metrics), admin: Some(admin), ..Default::default() };
        mailgrip::run(cfg, listeners, s).await.expect("gateway failed");
    });
    let console = Console { smtp: addrs.0, admin: addrs.1, metrics: addrs.2, dir, shutdown };
    for _ in 0..400 {
        if TcpStream::connect(console.admin).await.is_ok() && Client::connect(console.smtp).await.is_ok() {
            return console;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("gateway did not come up");
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request over a fresh connection (`Connection: close`).
async fn http(addr: SocketAddr, method: &str, path: &str, extra: &[(&str, &str)], body: &str) -> Resp {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "POST" {
        req.push_str(&format!("Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut raw)).await.expect("response timeout").unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers = lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.to_string(), v.trim().to_string())).collect();
    Resp { status, headers, body: body.to_string() }
}

fn form(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish()
}

/// Log in; returns the `Cookie` header value.
async fn login(c: &Console, user: &str, password: &str) -> String {
    let origin = format!("http://{}", c.admin);
    let body = form(&[("user", user), ("password", password)]);
    let r = http(c.admin, "POST", "/login", &[("Origin", &origin)], &body).await;
    assert_eq!(r.status, 303, "{r:?}");
    let cookie = r.header("set-cookie").expect("a session cookie");
    cookie.split(';').next().unwrap().to_string()
}

/// The CSRF token from a page's hidden field.
fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
    page[at..at + 64].to_string()
}

fn assert_security_headers(r: &Resp) {
    let csp = r.header("content-security-policy").unwrap_or_else(|| panic!("no CSP: {r:?}"));
    for part in ["default-src 'none'", "style-src 'self'", "form-action 'self'", "frame-ancestors 'none'"] {
        assert!(csp.contains(part), "{csp}");
    }
    assert!(!csp.contains("script-src"), "no scripts allowed at all: {csp}");
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
}

async fn metric(c: &Console, name: &str, labels: &str) -> f64 {
    metric_sum(&http_get(c.metrics, "/metrics").await.1, name, labels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_logout_cookie_headers_and_throttle() {
    let c = start_console(|_| {}).await;

    let r = http(c.admin, "GET", "/", &[], "").await;
    assert_eq!((r.status, r.header("location")), (303, Some("/login")), "no session: to the login page");
    assert_security_headers(&r);
    let r = http(c.admin, "GET", "/login", &[], "").await;
    assert_eq!(r.status, 200);
    assert_security_headers(&r);
    let r = http(c.admin, "GET", "/style.css", &[], "").await;
    assert_eq!(r.status, 200);
    assert_security_headers(&r);

    // Wrong password and unknown user: the same answer.
    let wrong = http(c.admin, "POST", "/login", &[], &form(&[("user", "anna"), ("password", "nope")])).await;
    let unknown = http(c.admin, "POST", "/login", &[], &form(&[("user", "nobody"), ("password", "nope")])).await;
    for r in [&wrong, &unknown] {
        assert_eq!(r.status, 401, "{r:?}");
        assert!(r.header("set-cookie").is_none());
        assert!(r.body.contains("Unknown name or wrong password."));
        assert_security_headers(r);
    }
    assert_eq!(metric(&c, "mailgrip_admin_logins_total", "result=\"failure\"").await, 2.0);

    let r = http(c.admin, "POST", "/login", &[], &form(&[("user", "anna"), ("password", ARCHIVIST_PW)])).await;
    assert_eq!((r.status, r.header("location")), (303, Some("/")));
    let set = r.header("set-cookie").unwrap();
    assert!(set.starts_with("__Host-mailgrip="), "secure_cookies (the default) uses the __Host- prefix: {set}");
    for attr in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
        assert!(set.split("; ").any(|a| a == attr), "{attr} missing: {set}");
    }
    let id = set.split(';').next().unwrap().split_once('=').unwrap().1;
    assert_eq!(id.len(), 64, "256-bit random session id: {set}");
    assert_security_headers(&r);
    assert_eq!(metric(&c, "mailgrip_admin_logins_total", "result=\"success\"").await, 1.0);

    let cookie = set.split(';').next().unwrap().to_string();
    let page = http(c.admin, "GET", "/", &[("Cookie", &cookie)], "").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Review queue") && page.body.contains("anna (archivist)"));
    assert_security_headers(&page);
    // A made-up session id gets nothing.
    let forged = format!("__Host-mailgrip={}", "ab".repeat(32));
    assert_eq!(http(c.admin, "GET", "/", &[("Cookie", &forged)], "").await.status, 303);

    // Logout is a POST and needs the token.
    let r = http(c.admin, "POST", "/logout", &[("Cookie", &cookie)], "").await;
    assert_eq!(r.status, 403);
    let token = csrf_of(&page.body);
    let r = http(c.admin, "POST", "/logout", &[("Cookie", &cookie)], &form(&[("csrf", &token)])).await;
    assert_eq!((r.status, r.header("location")), (303, Some("/login")));
    assert!(r.header("set-cookie").unwrap().contains("Max-Age=0"));
    let r = http(c.admin, "GET", "/", &[("Cookie", &cookie)], "").await;
    assert_eq!((r.status, r.header("location")), (303, Some("/login")), "the session ended server-side");

    // Password guessing from one address is braked: after the limit even the right password waits.
    // (The successful login above cleared the two earlier failures.)
    for _ in 0..mailgrip::admin::auth::MAX_FAILED_LOGINS {
        let r = http(c.admin, "POST", "/login", &[], &form(&[("user", "anna"), ("password", "guess")])).await;
        assert_eq!(r.status, 401);
    }
    let r = http(c.admin, "POST", "/login", &[], &form(&[("user", "anna"), ("password", ARCHIVIST_PW)])).await;
    assert_eq!(r.status, 429, "{r:?}");
    assert!(r.header("set-cookie").is_none());
    assert_eq!(metric(&c, "mailgrip_admin_logins_total", "result=\"throttled\"").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_copy_is_shown_escaped_and_decided_with_csrf_and_roles() {
    let c = start_console(|_| {}).await;
    let mail = b"From: Jan de Vries <j.devries@minbzk.nl>\r\nTo: a.bakker@minfin.nl\r\n\
                 Subject: Advies <b>wetsvoorstel</b> Woo-termijnen\r\nMessage-ID: <console-1@minbzk.nl>\r\n\
                 Date: Mon, 23 Nov 2026 10:00:00 +0100\r\n\r\n\
                 Beste Anna, hierbij ons advies over de beslistermijnen.\r\n\
                 <script>alert('xss')</script><img src=x onerror=alert(1)>\r\n\
                 Graag uw reactie voor vrijdag.\r\n";
    let mut smtp = Client::connect(c.smtp).await.unwrap();
    smtp.cmd("EHLO x").await.unwrap();
    let r = smtp.transaction("j.devries@minbzk.nl", &["a.bakker@minfin.nl"], mail).await;
    assert!(r.starts_with("250") && r.contains("review"), "{r}");

    let anna = login(&c, "anna", ARCHIVIST_PW).await;
    let queue = http(c.admin, "GET", "/", &[("Cookie", &anna)], "").await;
    assert_eq!(queue.status, 200);
    assert!(queue.body.contains("1 of 1 held copies match"), "{}", queue.body);
    assert!(queue.body.contains("Advies &lt;b&gt;wetsvoorstel&lt;/b&gt; Woo-termijnen"), "subject escaped");
    let at = queue.body.find("href=\"/item/").unwrap() + 12;
    let id = queue.body[at..].split('"').next().unwrap().to_string();
    let detail = http(c.admin, "GET", &format!("/item/{id}"), &[("Cookie", &anna)], "").await;
    assert_eq!(detail.status, 200);
    assert_security_headers(&detail);
    let body = &detail.body;
    assert!(body.contains("&lt;script&gt;alert(&#39;xss&#39;)&lt;/script&gt;"), "the markup shows as text: {body}");
    assert!(body.contains("&lt;img src=x onerror=alert(1)&gt;"));
    assert!(!body.contains("<script") && !body.contains("<img"), "no markup of the mail reaches the page");
    assert!(body.contains("Beste Anna, hierbij ons advies"));
    assert!(body.contains("Jan de Vries &lt;j.devries@minbzk.nl&gt;"), "headers shown");
    let scores = &body[body.find("id=\"scores\"").expect("a scores table")..];
    let scores = &scores[..scores.find("</table>").unwrap()];
    for class in mailgrip::classify::LABELS {
        assert!(scores.contains(&format!("<td>{class}</td>")), "score of {class}: {scores}");
    }
    assert!(body.contains("explained by mailgrip-baseline@1.0.0"), "{body}");
    assert!(body.contains("id=\"terms\""));
    assert!(body.contains("<td id=\"model\">tiny-test@0.0.1</td>"), "model name and version: {body}");
    assert!(body.contains("<td id=\"reason\">"));
    let class = body.split("<td id=\"class\">").nth(1).unwrap().split('<').next().unwrap().to_string();
    let other = mailgrip::classify::LABELS.iter().find(|l| **l != class).unwrap();

    // Filters: by class, by score range, by age; bad input is refused.
    for (query, n) in [
        (format!("class={class}"), 1),
        (format!("class={other}"), 0),
        ("min_score=0&max_score=1&min_age=0".to_string(), 1),
        ("min_score=1&max_score=1".to_string(), 0),
        ("min_age=100".to_string(), 0),
    ] {
        let r = http(c.admin, "GET", &format!("/?{query}"), &[("Cookie", &anna)], "").await;
        assert!(r.body.contains(&format!("{n} of 1 held copies match")), "{query}: {}", r.body);
    }
    assert_eq!(http(c.admin, "GET", "/?min_score=7", &[("Cookie", &anna)], "").await.status, 400);
    let token = csrf_of(body);

    let decide_path = format!("/item/{id}/decide");
    let decide = |cookie: &str, fields: &[(&str, &str)], origin: Option<&str>| {
        let mut extra = vec![("Cookie", cookie.to_string())];
        if let Some(o) = origin {
            extra.push(("Origin", o.to_string()));
        }
        let body = form(fields);
        let path = decide_path.clone();
        let admin = c.admin;
        async move {
            let extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
            http(admin, "POST", &path, &extra, &body).await
        }
    };
    // CSRF: missing, wrong; a foreign Origin even with the right token.
    let r = decide(&anna, &[("action", "archive")], None).await;
    assert_eq!(r.status, 403, "missing token");
    let r = decide(&anna, &[("action", "archive"), ("csrf", &"0".repeat(64))], None).await;
    assert_eq!(r.status, 403, "wrong token");
    let r = decide(&anna, &[("action", "archive"), ("csrf", &token)], Some("http://evil.example")).await;
    assert_eq!(r.status, 403, "foreign origin");
    assert_security_headers(&r);
    let (cookie_h, body) = (anna.clone(), form(&[("action", "archive"), ("csrf", &token)]));
    for extra in [
        vec![("Origin", "null")],
        vec![("Sec-Fetch-Site", "cross-site")],
        vec![("Sec-Fetch-Site", "same-site"), ("Origin", "null")],
    ] {
        let mut headers = vec![("Cookie", cookie_h.as_str())];
        headers.extend(extra.iter().copied());
        let r = http(c.admin, "POST", &decide_path, &headers, &body).await;
        assert_eq!(r.status, 403, "{extra:?}");
    }
    assert_eq!(metric(&c, "mailgrip_admin_refused_total", "reason=\"csrf\"").await, 2.0);
    assert_eq!(metric(&c, "mailgrip_admin_refused_total", "reason=\"origin\"").await, 4.0);
    // Another session's token does not fit either.
    let otto = login(&c, "otto", AUDITOR_PW).await;
    let otto_page = http(c.admin, "GET", &format!("/item/{id}"), &[("Cookie", &otto)], "").await;
    assert_eq!(otto_page.status, 200, "the auditor views");
    assert!(otto_page.body.contains("id=\"view-only\"") && !otto_page.body.contains("id=\"decide\""));
    let otto_token = csrf_of(&otto_page.body);
    let r = decide(&anna, &[("action", "archive"), ("csrf", &otto_token)], None).await;
    assert_eq!(r.status, 403, "a token belongs to its session");
    // The auditor may not decide, even with a valid token of its own.
    let r = decide(&otto, &[("action", "archive"), ("csrf", &otto_token)], None).await;
    assert_eq!(r.status, 403, "auditor: {r:?}");
    assert_eq!(metric(&c, "mailgrip_admin_refused_total", "reason=\"role\"").await, 1.0);
    let review = c.dir.path().join("review");
    assert!(review.join(format!("{id}.eml")).exists(), "nothing decided yet");
    // An unknown action is refused.
    let r = decide(&anna, &[("action", "review"), ("csrf", &token)], None).await;
    assert_eq!(r.status, 400);

    // The archivist decides (with the headers a browser sends under Referrer-Policy: no-referrer).
    let body = form(&[("action", "archive"), ("class", "functioneel"), ("csrf", &token)]);
    let headers = [("Cookie", anna.as_str()), ("Origin", "null"), ("Sec-Fetch-Site", "same-origin")];
    let r = http(c.admin, "POST", &decide_path, &headers, &body).await;
    assert_eq!(r.status, 303, "{r:?}");
    assert!(r.header("location").unwrap().starts_with("/?decided="));
    let archived: Vec<_> = files_under(&c.dir.path().join("archive"));
    assert!(archived.iter().any(|p| p.file_name().unwrap() == format!("{id}.eml").as_str()), "{archived:?}");
    assert!(!review.join(format!("{id}.eml")).exists(), "left the queue");
    let queue = http(c.admin, "GET", "/", &[("Cookie", &anna)], "").await;
    assert!(queue.body.contains("0 of 0 held copies match"));
    let r = decide(&anna, &[("action", "archive"), ("csrf", &token)], None).await;
    assert_eq!(r.status, 404, "decided once");

    // The decision is in the reviewers' chain, with anna as reviewer, and the chain verifies.
    let chain = std::fs::read_to_string(c.dir.path().join("audit/review.jsonl")).unwrap();
    assert_eq!(chain.lines().count(), 1);
    assert!(chain.contains("\"reviewer\":\"anna\"") && chain.contains("\"action\":\"archive\""), "{chain}");
    assert!(!chain.contains("wetsvoorstel"), "no content in the audit trail");
    let audit = http(c.admin, "GET", "/audit", &[("Cookie", &otto)], "").await;
    assert_eq!(audit.status, 200);
    assert!(audit.body.contains("intact: 1 records"), "{}", audit.body);
    let decisions = std::fs::read_to_string(review.join("decisions.jsonl")).unwrap();
    assert!(decisions.contains("\"reviewer\":\"anna\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_session_expires_to_the_login_page() {
    let c = start_console(|cfg| {
        cfg.admin.session_idle_secs = 1;
        cfg.admin.secure_cookies = false;
    })
    .await;
    let cookie = login(&c, "otto", AUDITOR_PW).await;
    assert!(cookie.starts_with("mailgrip="), "plain name without Secure: {cookie}");
    assert_eq!(http(c.admin, "GET", "/", &[("Cookie", &cookie)], "").await.status, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = http(c.admin, "GET", "/", &[("Cookie", &cookie)], "").await;
    assert_eq!((r.status, r.header("location")), (303, Some("/login")), "idle past 1 s: log in again");
    let r = http(c.admin, "GET", "/audit", &[("Cookie", &cookie)], "").await;
    assert_eq!(r.status, 303, "the expired session is gone for good");
}

#[test]
fn config_requires_users_and_argon2_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let load = |toml: &str| {
        let path = dir.path().join("c.toml");
        std::fs::write(&path, toml).unwrap();
        Config::load_with_env(Some(&path), Vec::new())
    };
    let err = load("[admin]\nlisten = \"127.0.0.1:9926\"\n").unwrap_err();
    assert!(err.to_string().starts_with("admin.users:"), "{err}");
    let err = load(
        "[admin]\nlisten = \"127.0.0.1:9926\"\n[[admin.users]]\nname = \"a\"\nrole = \"archivist\"\n\
         password_hash = \"plain\"\n",
    )
    .unwrap_err();
    assert!(err.to_string().starts_with("admin.users:") && err.to_string().contains("PHC"), "{err}");
    let err = load(&format!(
        "[admin]\nlisten = \"127.0.0.1:9926\"\n[[admin.users]]\nname = \"a\"\nrole = \"boss\"\npassword_hash = \"{}\"\n",
        hash_password("x").unwrap()
    ))
    .unwrap_err();
    assert!(err.to_string().contains("boss"), "{err}");
    let ok = load(&format!(
        "[admin]\nlisten = \"127.0.0.1:9926\"\nsession_idle_secs = 60\n[[admin.users]]\nname = \"a\"\n\
         role = \"auditor\"\npassword_hash = \"{}\"\n",
        hash_password("x").unwrap()
    ))
    .unwrap();
    assert_eq!((ok.admin.users[0].role, ok.admin.session_idle_secs), (Role::Auditor, 60));
    let err = load("[admin]\nlisten = \"nonsense\"\n").unwrap_err();
    assert!(err.to_string().starts_with("admin.listen:"), "{err}");
}
