//! The archivist's web console on `admin.listen`: the review queue with filters, a detail view of
//! each held copy (headers, the body as escaped text, scores, the baseline's top terms, the model),
//! and the decision form. Archivists decide; auditors look, and see whether the reviewers' audit
//! chain is intact.
//!
//! Started by [`crate::run`] when the binary bound `admin.listen`. Decisions go through
//! [`crate::review::decide_audited`], exactly like `mailgrip review decide`.
//!
//! Defences, all server-side: argon2 passwords ([`auth`]), random session ids in an
//! `HttpOnly; SameSite=Strict` (and `Secure`) cookie with idle and absolute expiry, a synchronizer
//! CSRF token in every POST form plus an `Origin` check, a per-address brake on failed logins,
//! and security headers on every response (a CSP without scripts, no framing, no caching, no
//! referrer). Pages are rendered by [`pages`], which escapes everything it did not write itself.

pub mod auth;
pub mod pages;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::classify::baseline::BaselineBackend;
use crate::classify::manifest::VerifiedModel;
use crate::config::Config;
use crate::decide::Action;
use crate::review::{ReviewError, ReviewQueue};
use crate::telemetry::Metrics;
pub use auth::{AdminUser, Role};
use auth::{Session, Sessions, Throttle, Users};

/// The `[admin]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the web console. Empty (the default) disables it: the console shows mail
    /// content, so it only listens where an operator chose an address and configured users.
    pub listen: String,
    /// Seconds without a request after which a session ends.
    pub session_idle_secs: u64,
    /// Seconds after login after which a session ends, however active.
    pub session_max_secs: u64,
    /// Mark the session cookie `Secure` (and name it `__Host-mailgrip`): browsers then send it
    /// over HTTPS only. Browsers treat loopback (`http://127.0.0.1`, `http://localhost`) as secure
    /// too, so it works there as well; turn it off only for plain HTTP to another address (which
    /// sends passwords in the clear: better put a TLS proxy in front).
    pub secure_cookies: bool,
    /// Baseline model directory whose top terms explain a held copy's class. Empty: no
    /// explanations.
    pub explain_model: PathBuf,
    /// Console users: `[[admin.users]]` tables with `name`, `role` (`archivist` or `auditor`)
    /// and `password_hash` (argon2 PHC string from `mailgrip admin hash-password`).
    pub users: Vec<AdminUser>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: String::new(),
            session_idle_secs: 900,
            session_max_secs: 28_800,
            secure_cookies: true,
            explain_model: PathBuf::from("models/mailgrip-baseline"),
            users: Vec::new(),
        }
    }
}

impl AdminConfig {
    /// Check the section; the error names the key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.listen.is_empty() {
            return Ok(());
        }
        if self.listen.parse::<SocketAddr>().is_err() {
            return Err(("admin.listen", format!("{:?} is not an ip:port address", self.listen)));
        }
        if self.users.is_empty() {
            return Err(("admin.users", "at least one user is required when admin.listen is set".into()));
        }
        let mut seen = std::collections::HashSet::new();
        for u in &self.users {
            if u.name.is_empty() || u.name.len() > 64 || u.name.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(("admin.users", format!("name {:?}: 1 to 64 characters, no spaces", u.name)));
            }
            if !seen.insert(&u.name) {
                return Err(("admin.users", format!("name {:?} appears twice", u.name)));
            }
            auth::check_hash(&u.password_hash)
                .map_err(|e| ("admin.users", format!("password_hash of {:?}: {e}", u.name)))?;
        }
        if self.session_idle_secs == 0 {
            return Err(("admin.session_idle_secs", "must be greater than 0".into()));
        }
        if self.session_max_secs < self.session_idle_secs {
            return Err(("admin.session_max_secs", "must be at least admin.session_idle_secs".into()));
        }
        Ok(())
    }
}

/// Largest request body read (login and decision forms are a few hundred bytes).
const MAX_BODY: usize = 16 * 1024;
/// Argon2 verifications running at once (each takes ~19 MiB and tens of milliseconds).
const VERIFY_SLOTS: usize = 2;
/// Top terms shown per held copy.
const TOP_TERMS: usize = 12;

/// The console's shared state.
pub struct Console {
    cfg: Arc<Config>,
    users: Users,
    sessions: Sessions,
    throttle: Throttle,
    /// The explanation model and its `name@version`.
    explainer: Option<(String, BaselineBackend)>,
    verify_slots: Semaphore,
    /// One decision (and chain check) at a time: each opens the reviewers' audit chain, whose
    /// lock admits one writer.
    decide_lock: Mutex<()>,
    metrics: Arc<Metrics>,
    cookie: &'static str,
}

type Resp = Response<Full<Bytes>>;

impl Console {
    /// Load the explanation model and prepare the users. Fails (before anything listens) when
    /// `admin.explain_model` cannot be loaded.
    pub async fn start(cfg: &Config, metrics: Arc<Metrics>) -> Result<Arc<Console>, String> {
        let admin = cfg.admin.clone();
        let (users, explainer) = tokio::task::spawn_blocking(move || {
            let explainer = if admin.explain_model.as_os_str().is_empty() {
                None
            } else {
                let bad =
                    |e: &dyn std::fmt::Display| format!("admin.explain_model {}: {e}", admin.explain_model.display());
                let model = VerifiedModel::load(&admin.explain_model).map_err(|e| bad(&e))?;
                if model.manifest.kind != "baseline" {
                    return Err(bad(&format!(
                        "kind {:?}; the explanations need a baseline model",
                        model.manifest.kind
                    )));
                }
                let id = format!("{}@{}", model.manifest.name, model.manifest.version);
                Some((id, BaselineBackend::load(&model).map_err(|e| bad(&e))?))
            };
            Ok((Users::new(&admin.users), explainer))
        })
        .await
        .map_err(|e| e.to_string())??;
        let a = &cfg.admin;
        Ok(Arc::new(Console {
            cfg: Arc::new(cfg.clone()),
            users,
            sessions: Sessions::new(Duration::from_secs(a.session_idle_secs), Duration::from_secs(a.session_max_secs)),
            throttle: Throttle::default(),
            explainer,
            verify_slots: Semaphore::new(VERIFY_SLOTS),
            decide_lock: Mutex::new(()),
            metrics,
            cookie: if a.secure_cookies { "__Host-mailgrip" } else { "mailgrip" },
        }))
    }

    fn queue(&self) -> ReviewQueue {
        ReviewQueue::new(&self.cfg.review.dir)
    }
}

/// Serve the console until `shutdown`; connections in flight finish their request.
pub async fn serve_admin(listener: TcpListener, console: Arc<Console>, shutdown: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    continue;
                }
            },
        };
        let console = console.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let console = console.clone();
                async move { Ok::<_, Infallible>(with_security_headers(handle(&console, req, peer.ip()).await)) }
            });
            let conn = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(10), conn).await;
                }
            }
        });
    }
}

/// The headers every console response carries.
fn with_security_headers(mut resp: Resp) -> Resp {
    let h = resp.headers_mut();
    let set = |h: &mut hyper::HeaderMap, name: &'static str, value: &'static str| {
        h.insert(name, HeaderValue::from_static(value));
    };
    set(
        h,
        "content-security-policy",
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; \
         base-uri 'none'",
    );
    set(h, "x-content-type-options", "nosniff");
    set(h, "referrer-policy", "no-referrer");
    set(h, "x-frame-options", "DENY");
    set(h, "cache-control", "no-store");
    set(h, "cross-origin-opener-policy", "same-origin");
    resp
}

fn html(status: StatusCode, body: String) -> Resp {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

fn redirect(to: &str) -> Resp {
    Response::builder().status(StatusCode::SEE_OTHER).header(header::LOCATION, to).body(Full::default()).unwrap()
}

fn refuse(console: &Console, reason: &str, text: &str, s: Option<&Session>) -> Resp {
    console.metrics.admin_refused.with_label_values(&[reason]).inc();
    html(StatusCode::FORBIDDEN, pages::message("Forbidden", text, s))
}

fn cookie_value<'a>(req: &'a Request<hyper::body::Incoming>, name: &str) -> Option<&'a str> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Where a POST came from, as the browser tells: a cross-site form post carries `Sec-Fetch-Site:
/// cross-site` (or `same-site`) and a foreign `Origin`. Our own forms come with `Sec-Fetch-Site:
/// same-origin`, and, because of `Referrer-Policy: no-referrer`, with `Origin: null` (the Fetch
/// standard serialises the origin as null under that policy), so "null" is only accepted with
/// `same-origin` beside it. Clients that send neither header (curl, scripts) still need the CSRF
/// token; that token, not this check, is the primary defence.
fn origin_ok(req: &Request<hyper::body::Incoming>) -> bool {
    let header = |name| req.headers().get(name).map(|v: &HeaderValue| v.to_str().unwrap_or("?"));
    let site = header("sec-fetch-site");
    if site.is_some_and(|s| s != "same-origin") {
        return false;
    }
    match header(header::ORIGIN.as_str()) {
        None => true,
        Some("null") => site == Some("same-origin"),
        Some(origin) => {
            let host = header(header::HOST.as_str()).unwrap_or("");
            !host.is_empty() && (origin == format!("http://{host}") || origin == format!("https://{host}"))
        }
    }
}

async fn read_form(req: Request<hyper::body::Incoming>) -> Option<HashMap<String, String>> {
    let body = Limited::new(req.into_body(), MAX_BODY).collect().await.ok()?.to_bytes();
    Some(form_urlencoded::parse(&body).into_owned().collect())
}

fn csrf_ok(form: &HashMap<String, String>, s: &Session) -> bool {
    form.get("csrf").is_some_and(|t| auth::constant_time_eq(t.as_bytes(), s.csrf.as_bytes()))
}

async fn handle(console: &Arc<Console>, req: Request<hyper::body::Incoming>, ip: IpAddr) -> Resp {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    if method == Method::GET && path == "/style.css" {
        return Response::builder()
            .header(header::CONTENT_TYPE, "text/css; charset=utf-8")
            .body(Full::new(Bytes::from_static(pages::CSS.as_bytes())))
            .unwrap();
    }
    let sid = cookie_value(&req, console.cookie).map(str::to_string);
    let session = sid.as_deref().and_then(|id| console.sessions.get(id));
    if path == "/login" {
        return match method {
            Method::GET if session.is_some() => redirect("/"),
            Method::GET => html(StatusCode::OK, pages::login(None)),
            Method::POST => login(console, req, ip).await,
            _ => html(StatusCode::METHOD_NOT_ALLOWED, pages::message("Not allowed", "Use GET or POST.", None)),
        };
    }
    let Some(session) = session else {
        // No session, or it expired: log in (again). Nothing is done for an unauthenticated POST.
        return redirect("/login");
    };
    if method == Method::POST {
        if !origin_ok(&req) {
            return refuse(console, "origin", "The request came from another site.", Some(&session));
        }
        let Some(form) = read_form(req).await else {
            return html(StatusCode::BAD_REQUEST, pages::message("Bad request", "Unreadable form.", Some(&session)));
        };
        if !csrf_ok(&form, &session) {
            return refuse(
                console,
                "csrf",
                "The form's security token is missing or wrong; reload the page.",
                Some(&session),
            );
        }
        if path == "/logout" {
            console.sessions.remove(sid.as_deref().unwrap_or(""));
            tracing::info!(user = %session.user, "console logout");
            let mut resp = redirect("/login");
            resp.headers_mut().insert(header::SET_COOKIE, clear_cookie(console));
            return resp;
        }
        if let Some(id) = path.strip_prefix("/item/").and_then(|p| p.strip_suffix("/decide")) {
            if session.role != Role::Archivist {
                return refuse(
                    console,
                    "role",
                    "Auditors may view held copies but not decide on them.",
                    Some(&session),
                );
            }
            return decide(console, id, &form, &session).await;
        }
        return not_found(&session);
    }
    if method != Method::GET {
        return html(StatusCode::METHOD_NOT_ALLOWED, pages::message("Not allowed", "Use GET or POST.", Some(&session)));
    }
    match path.as_str() {
        "/" => queue_page(console, &query, &session).await,
        "/audit" => audit_page(console, &session).await,
        p => match p.strip_prefix("/item/") {
            Some(id) if !id.contains('/') => detail_page(console, id, &session).await,
            _ => not_found(&session),
        },
    }
}

fn not_found(s: &Session) -> Resp {
    html(StatusCode::NOT_FOUND, pages::message("Not found", "No such page or held copy.", Some(s)))
}

fn session_cookie(console: &Console, id: &str) -> HeaderValue {
    let a = &console.cfg.admin;
    let secure = if a.secure_cookies { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        console.cookie, a.session_max_secs
    ))
    .expect("hex id")
}

fn clear_cookie(console: &Console) -> HeaderValue {
    let secure = if console.cfg.admin.secure_cookies { "; Secure" } else { "" };
    HeaderValue::from_str(&format!("{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}", console.cookie))
        .expect("ascii")
}

async fn login(console: &Arc<Console>, req: Request<hyper::body::Incoming>, ip: IpAddr) -> Resp {
    if !origin_ok(&req) {
        return refuse(console, "origin", "The request came from another site.", None);
    }
    let count = |result: &str| console.metrics.admin_logins.with_label_values(&[result]).inc();
    if console.throttle.blocked(ip) {
        count("throttled");
        tracing::warn!(peer = %ip, "console login refused: too many failed attempts");
        return html(
            StatusCode::TOO_MANY_REQUESTS,
            pages::login(Some("Too many failed logins from your address; try again later.")),
        );
    }
    let Some(form) = read_form(req).await else {
        return html(StatusCode::BAD_REQUEST, pages::login(Some("Unreadable form.")));
    };
    let user = form.get("user").cloned().unwrap_or_default();
    let password = form.get("password").cloned().unwrap_or_default();
    let role = {
        let Ok(_slot) = console.verify_slots.acquire().await else {
            return html(StatusCode::SERVICE_UNAVAILABLE, pages::login(Some("Shutting down.")));
        };
        let c = console.clone();
        let name = user.clone();
        tokio::task::spawn_blocking(move || c.users.verify(&name, &password)).await.ok().flatten()
    };
    match role {
        Some(role) => {
            console.throttle.succeeded(ip);
            count("success");
            tracing::info!(user = %user, role = role.as_str(), peer = %ip, "console login");
            let id = console.sessions.create(&user, role);
            let mut resp = redirect("/");
            resp.headers_mut().insert(header::SET_COOKIE, session_cookie(console, &id));
            resp
        }
        None => {
            console.throttle.failed(ip);
            count("failure");
            tracing::warn!(peer = %ip, "console login failed");
            html(StatusCode::UNAUTHORIZED, pages::login(Some("Unknown name or wrong password.")))
        }
    }
}

async fn queue_page(console: &Arc<Console>, query: &str, s: &Session) -> Resp {
    let filter = match pages::Filter::parse(query) {
        Ok(f) => f,
        Err(e) => return html(StatusCode::BAD_REQUEST, pages::message("Bad filter", &e, Some(s))),
    };
    let flash = form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "decided")
        .map(|(_, id)| format!("Decision recorded for {id}."));
    let queue = console.queue();
    let f = filter.clone();
    let listed = tokio::task::spawn_blocking(move || {
        let items = queue.list()?;
        let total = items.len();
        let matching: Vec<_> = items.into_iter().filter(|i| f.matches(i)).collect();
        let matched = matching.len();
        let rows: Vec<pages::Row> = matching
            .into_iter()
            .take(pages::MAX_ROWS)
            .map(|item| {
                let subject = queue.head(&item.id, 64 * 1024).map(|h| subject_of(&h)).unwrap_or_default();
                pages::Row { item, subject }
            })
            .collect();
        Ok::<_, std::io::Error>((rows, matched, total))
    })
    .await;
    match listed {
        Ok(Ok((rows, matched, total))) => {
            html(StatusCode::OK, pages::queue(&rows, matched, total, &filter, flash.as_deref(), s))
        }
        Ok(Err(e)) => server_error("reading the review queue", &e, s),
        Err(e) => server_error("reading the review queue", &e, s),
    }
}

fn server_error(what: &str, e: &dyn std::fmt::Display, s: &Session) -> Resp {
    tracing::error!(error = %e, "console: {what}");
    html(StatusCode::INTERNAL_SERVER_ERROR, pages::message("Error", &format!("{what}: {e}"), Some(s)))
}

/// The subject from the header block of a message (the part before the first empty line).
fn subject_of(head: &[u8]) -> String {
    let end = head.windows(4).position(|w| w == b"\r\n\r\n").or_else(|| head.windows(2).position(|w| w == b"\n\n"));
    let header = &head[..end.map_or(head.len(), |e| e + 2)];
    mail_parser::MessageParser::default()
        .parse_headers(header)
        .and_then(|m| m.subject().map(str::to_string))
        .unwrap_or_default()
}

fn addresses(a: Option<&mail_parser::Address>) -> String {
    a.map(|a| {
        a.iter()
            .map(|x| match (x.name(), x.address()) {
                (Some(n), Some(ad)) => format!("{n} <{ad}>"),
                (None, Some(ad)) => ad.to_string(),
                (Some(n), None) => n.to_string(),
                (None, None) => String::new(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    })
    .unwrap_or_default()
}

async fn detail_page(console: &Arc<Console>, id: &str, s: &Session) -> Resp {
    let c = console.clone();
    let id = id.to_string();
    let built = tokio::task::spawn_blocking(move || {
        let queue = c.queue();
        let mut item = queue.item(&id)?;
        let raw = queue.message(&id)?;
        item.age_secs = queue.age_secs(&id);
        let extracted = crate::parse::extract(&raw);
        let mut headers = Vec::new();
        if let Some(m) = mail_parser::MessageParser::default().parse(&raw) {
            headers.push(("From", addresses(m.from())));
            headers.push(("To", addresses(m.to())));
            if m.cc().is_some() {
                headers.push(("Cc", addresses(m.cc())));
            }
            headers.push(("Date", m.date().map(|d| d.to_rfc3339()).unwrap_or_default()));
            headers.push(("Subject", m.subject().unwrap_or_default().to_string()));
            headers.push(("Message-ID", m.message_id().unwrap_or_default().to_string()));
        }
        let explanation = c
            .explainer
            .as_ref()
            .map(|(name, model)| (name.clone(), model.explain(&extracted.model_text(), &item.class, TOP_TERMS)));
        Ok::<_, ReviewError>(pages::Detail {
            item,
            headers,
            body: extracted.body,
            attachments: extracted.attachments,
            parse_error: extracted.parse_error,
            explanation,
        })
    })
    .await;
    match built {
        Ok(Ok(d)) => html(StatusCode::OK, pages::detail(&d, s)),
        Ok(Err(ReviewError::NotFound(_))) => not_found(s),
        Ok(Err(e)) => server_error("reading the held copy", &e, s),
        Err(e) => server_error("reading the held copy", &e, s),
    }
}

async fn decide(console: &Arc<Console>, id: &str, form: &HashMap<String, String>, s: &Session) -> Resp {
    let action = form.get("action").map(String::as_str).unwrap_or("");
    let Some(action) = Action::parse(action).filter(|a| *a != Action::Review) else {
        return html(
            StatusCode::BAD_REQUEST,
            pages::message("Bad request", "Choose archive, archive-restricted or not archived.", Some(s)),
        );
    };
    let class = form.get("class").map(String::as_str).filter(|c| !c.is_empty());
    let decided = {
        let _turn = console.decide_lock.lock().await;
        crate::review::decide_audited(&console.cfg, id, action, class, &s.user).await
    };
    match decided {
        Ok((d, dest)) => {
            tracing::info!(id = %d.id, action = d.action.as_str(), predicted = %d.predicted, corrected = %d.corrected,
                           reviewer = %d.reviewer, archived_as = ?dest, "console decision");
            let q: String = form_urlencoded::Serializer::new(String::new()).append_pair("decided", &d.id).finish();
            redirect(&format!("/?{q}"))
        }
        Err(ReviewError::NotFound(_)) => html(
            StatusCode::NOT_FOUND,
            pages::message("Not found", "This copy is no longer in the queue (already decided?).", Some(s)),
        ),
        Err(ReviewError::Invalid(e)) => html(StatusCode::BAD_REQUEST, pages::message("Bad request", &e, Some(s))),
        Err(e @ ReviewError::Audit(_)) => {
            tracing::error!(id, error = %e, "console decision: audit chain");
            html(StatusCode::SERVICE_UNAVAILABLE, pages::message("Audit trail unavailable", &e.to_string(), Some(s)))
        }
        Err(e) => server_error("deciding", &e, s),
    }
}

async fn audit_page(console: &Arc<Console>, s: &Session) -> Resp {
    let audit = console.cfg.audit.clone();
    let _turn = console.decide_lock.lock().await;
    let status = tokio::task::spawn_blocking(move || {
        if !audit.enabled {
            return vec![("reviewers' chain".to_string(), Err("the audit trail is disabled (audit.enabled)".into()))];
        }
        let path = audit.review_path.clone();
        let status = match crate::audit::chain_files(&path) {
            Ok(files) if files.is_empty() => Ok("no records yet".to_string()),
            Ok(files) => match crate::audit::verify(&files) {
                Ok(n) => Ok(format!("intact: {n} records in {} file(s)", files.len())),
                Err(e) => Err(format!("BROKEN: {e}")),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok("no records yet".to_string()),
            Err(e) => Err(format!("cannot read: {e}")),
        };
        vec![(format!("reviewers' chain ({})", path.display()), status)]
    })
    .await
    .unwrap_or_else(|e| vec![("reviewers' chain".into(), Err(e.to_string()))]);
    html(StatusCode::OK, pages::audit(&status, s))
}
