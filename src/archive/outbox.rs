//! The SMTP archive sink: archive copies also go by SMTP to a journaling address (an existing
//! mail archiver), through a durable outbox with retry.
//!
//! # Durability: in the outbox iff in the archive
//!
//! An outbox entry is part of the staged archive copy ([`super::Staged`]): [`Outbox::stage`]
//! writes it, fsynced, under `outbox_dir/.tmp/<id>/` when the archive copy is staged, and the
//! commit that makes the archive copy visible renames it to `outbox_dir/<id>/` (one atomic
//! rename of a complete folder) and fsyncs `outbox_dir`. A discarded copy (the next hop did not
//! take the mail) discards its entry too. So the archiver receives exactly what the archive
//! holds, and an entry survives a restart and any outage of the archiver.
//!
//! An entry is a folder with two files:
//! - `message.eml`: the tagged message, byte for byte the archive's `<id>.eml`;
//! - `state.json` ([`EntryState`]): the original envelope, when the copy was made, how many
//!   attempts failed, when the next is due and the last error. Retries rewrite it atomically,
//!   so the backoff survives a restart.
//!
//! # Sending
//!
//! [`Outbox::run`] (one task, started by [`crate::run`]) scans the outbox at start-up, after
//! each commit (notified) and at least every [`RESCAN`]; it sends due entries oldest first with
//! the pooled SMTP client of [`crate::relay::smtp`]. The archiver's answer decides:
//! - `250`: the entry is deleted (files, folder, then an fsync of `outbox_dir`);
//! - `4xx` or unreachable: the entry is rescheduled with exponential backoff from
//!   `retry_initial_secs` up to `retry_max_secs`, and the whole outbox pauses as long (an
//!   archiver that is down is down for every copy: no point in knocking per message);
//! - `5xx`: the entry moves to `outbox_dir/failed/<id>/` with a `reason.txt`, is logged at
//!   error level and counted. A copy older than `max_age_hours` moves there too (reason
//!   `expired`). Nothing in `failed/` is ever deleted by mailgrip: a person looks at it (the
//!   `MailgripArchiveOutboxFailed` alert) and can move the folder back into `outbox_dir` to retry.
//!
//! Delivery to the archiver is at-least-once: if mailgrip stops between the archiver's `250`
//! and the deletion, the copy is sent again after the restart (archivers deduplicate on
//! Message-ID; a duplicate journal copy is harmless, a missing one is a lost record).
//!
//! # The original envelope
//!
//! The archiver gets its own envelope (`mail_from` → `rcpt_to`, the journaling address), so the
//! original sender and recipients — BCC recipients above all, who appear in no header — are
//! added as header fields above the tagged message:
//!
//! ```text
//! X-Mailgrip-Envelope-From: <j.devries@minbzk.nl>
//! X-Mailgrip-Envelope-To: <a.bakker@minfin.nl>
//! X-Mailgrip-Envelope-To: <bcc@minfin.nl>
//! ```
//!
//! Why header fields rather than an Exchange-style envelope journal report (a wrapper message
//! with the envelope as text and the original as a `message/rfc822` attachment): the archiver
//! indexes the copy as the ordinary message it is (subject, sender, body, attachments) and the
//! original bytes follow the added fields unchanged, just as on the relayed copy; the journal
//! report format is Exchange's own (X-MS-Journal-Report), and an imitation that an archiver
//! half-recognises is worse than plain fields every archiver keeps. One field per recipient
//! keeps lines short without folding. The fields cannot be forged from outside: [`crate::tag`]
//! removes every `X-Mailgrip-*` field that arrives with a message.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{create_private_dir, sync_dir, write_durably, write_synced};
use crate::config::{Config, ConfigError, RelayConfig};
use crate::decide::Action;
use crate::envelope::Envelope;
use crate::relay::RelayError;
use crate::relay::smtp::SmtpRelay;
use crate::telemetry::Metrics;

/// The outbox is scanned at least this often, even without a commit (e.g. for entries written by
/// `mailgrip review decide` in another process, and to keep the age metric fresh).
pub const RESCAN: Duration = Duration::from_secs(30);

/// How long an in-flight send may finish after shutdown was requested; after that it is cut off
/// and sent again after the restart.
const SHUTDOWN_SEND_GRACE: Duration = Duration::from_secs(10);

const MESSAGE: &str = "message.eml";
const STATE: &str = "state.json";
const REASON: &str = "reason.txt";
const FAILED: &str = "failed";

/// `[archive.smtp]`: archive copies also go by SMTP to a journaling address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveSmtpConfig {
    /// Send archive copies to the archiver at all.
    pub enabled: bool,
    /// host:port of the archiver's SMTP listener.
    pub next_hop: String,
    /// Envelope sender towards the archiver. Empty: the null sender `<>`, so that a bounce from
    /// the archiver (or a hop before it) is never sent back into the mail flow — a journal copy
    /// is machine-made, its failures are mailgrip's to handle (`failed/`, alert), and a DSN to
    /// a person would reveal the journaling.
    pub mail_from: String,
    /// Envelope recipients: the journaling address(es).
    pub rcpt_to: Vec<String>,
    /// Whose copies are sent: `archive` and/or `archive-restricted`.
    pub actions: Vec<String>,
    /// The durable outbox: `<id>/` entries, `.tmp/` for staged ones, `failed/` for given-up ones.
    pub outbox_dir: PathBuf,
    /// Seconds before the first retry; doubled per failed attempt.
    pub retry_initial_secs: u64,
    /// Longest wait between retries, in seconds.
    pub retry_max_secs: u64,
    /// Copies not delivered after this many hours move to `outbox_dir/failed/` (kept, alerted).
    pub max_age_hours: u64,
}

impl Default for ArchiveSmtpConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            next_hop: "127.0.0.1:10027".into(),
            mail_from: String::new(),
            rcpt_to: Vec::new(),
            actions: vec!["archive".into()],
            outbox_dir: "var/archive-outbox".into(),
            retry_initial_secs: 60,
            retry_max_secs: 3600,
            max_age_hours: 120,
        }
    }
}

fn invalid(key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, problem: problem.into() }
}

/// A bare mailbox as given to MAIL FROM / RCPT TO (without the angle brackets).
fn plausible_address(a: &str) -> bool {
    let ok_chars = !a.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>'));
    ok_chars && a.rsplit_once('@').is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty())
}

impl ArchiveSmtpConfig {
    /// Checks for [`Config::validate`]; errors name the key.
    pub fn validate(&self, smtp_listen: &str) -> Result<(), ConfigError> {
        for action in &self.actions {
            match Action::parse(action) {
                Some(Action::Archive | Action::ArchiveRestricted) => {}
                _ => {
                    return Err(invalid(
                        "archive.smtp.actions",
                        format!("{action:?}: only archive and archive-restricted copies can be sent"),
                    ));
                }
            }
        }
        if !self.enabled {
            return Ok(());
        }
        let hop = self.next_hop.trim();
        if hop.is_empty() || hop.rsplit_once(':').is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err()) {
            return Err(invalid("archive.smtp.next_hop", format!("{:?} must be host:port", self.next_hop)));
        }
        if hop == smtp_listen {
            return Err(invalid("archive.smtp.next_hop", "equals smtp.listen: copies would loop"));
        }
        if !self.mail_from.is_empty() && !plausible_address(&self.mail_from) {
            return Err(invalid(
                "archive.smtp.mail_from",
                format!("{:?} is not an address (empty: <>)", self.mail_from),
            ));
        }
        if self.rcpt_to.is_empty() {
            return Err(invalid("archive.smtp.rcpt_to", "at least one journaling address when archive.smtp.enabled"));
        }
        if let Some(bad) = self.rcpt_to.iter().find(|a| !plausible_address(a)) {
            return Err(invalid("archive.smtp.rcpt_to", format!("{bad:?} is not an address")));
        }
        if self.actions.is_empty() {
            return Err(invalid("archive.smtp.actions", "empty: nothing would be sent"));
        }
        if self.outbox_dir.as_os_str().is_empty() {
            return Err(invalid("archive.smtp.outbox_dir", "required when archive.smtp.enabled"));
        }
        if self.retry_initial_secs == 0 {
            return Err(invalid("archive.smtp.retry_initial_secs", "must be greater than 0"));
        }
        if self.retry_max_secs < self.retry_initial_secs {
            return Err(invalid("archive.smtp.retry_max_secs", "must be at least archive.smtp.retry_initial_secs"));
        }
        if self.max_age_hours == 0 {
            return Err(invalid("archive.smtp.max_age_hours", "must be greater than 0"));
        }
        Ok(())
    }

    fn sends(&self, action: &str) -> bool {
        self.actions.iter().any(|a| a == action)
    }

    /// The wait after `attempts` failed attempts: initial, doubled each time, capped.
    pub fn backoff(&self, attempts: u32) -> Duration {
        let factor = 1u64.checked_shl(attempts.saturating_sub(1)).unwrap_or(u64::MAX);
        Duration::from_secs(self.retry_initial_secs.saturating_mul(factor).min(self.retry_max_secs))
    }
}

/// `state.json` of an outbox entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntryState {
    /// The decision id (also the archive copy's name).
    pub id: String,
    /// `archive` or `archive-restricted`.
    pub action: String,
    /// The original envelope, for the `X-Mailgrip-Envelope-*` fields.
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    pub body_8bitmime: bool,
    pub smtputf8: bool,
    /// Unix seconds: when the copy was staged.
    pub created: u64,
    /// Failed attempts so far.
    pub attempts: u32,
    /// Unix seconds: not sent before this.
    pub next_attempt: u64,
    /// The last failure, for `reason.txt` and whoever looks.
    #[serde(default)]
    pub last_error: String,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Header-field value without control characters (no injection through an envelope address).
fn field_safe(v: &str) -> String {
    v.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// The message as the archiver gets it: the original envelope as header fields, then the tagged
/// message unchanged.
pub fn with_envelope_fields(state: &EntryState, message: &[u8]) -> Vec<u8> {
    let mut head = format!("X-Mailgrip-Envelope-From: <{}>\r\n", field_safe(&state.mail_from));
    for r in &state.rcpt_to {
        head.push_str(&format!("X-Mailgrip-Envelope-To: <{}>\r\n", field_safe(r)));
    }
    let mut out = Vec::with_capacity(head.len() + message.len());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(message);
    out
}

/// One entry found by a scan.
struct Found {
    dir: PathBuf,
    state: EntryState,
}

/// What a scan of the outbox found.
struct Scan {
    entries: Vec<Found>,
    failed: usize,
}

/// How a pass ended.
enum Pass {
    /// Every due entry was handled; the next one is due at this unix second (if any).
    Done(Option<u64>),
    /// The archiver is down or deferring: pause the whole outbox.
    ArchiverUnavailable,
    /// Shutdown was requested.
    Stopped,
}

/// The outbox and its sender.
pub struct Outbox {
    cfg: ArchiveSmtpConfig,
    dir: PathBuf,
    relay: SmtpRelay,
    notify: Notify,
    metrics: Arc<Metrics>,
}

impl Outbox {
    /// The outbox for `cfg.archive.smtp`, or `None` when disabled. Creates the folders now, so a
    /// folder that cannot be written stops the start rather than the first archive copy.
    pub fn open(cfg: &Config, metrics: Arc<Metrics>) -> io::Result<Option<Arc<Outbox>>> {
        let sc = &cfg.archive.smtp;
        if !sc.enabled {
            return Ok(None);
        }
        for d in [sc.outbox_dir.clone(), sc.outbox_dir.join(".tmp"), sc.outbox_dir.join(FAILED)] {
            create_private_dir(&d)
                .map_err(|e| io::Error::new(e.kind(), format!("archive.smtp.outbox_dir {}: {e}", d.display())))?;
        }
        // The pooled client of the relay, pointed at the archiver; timeouts and EHLO name as for
        // the next hop. A couple of idle connections is plenty for one sender task.
        let relay = SmtpRelay::new(&RelayConfig { next_hop: sc.next_hop.clone(), pool_size: 2, ..cfg.relay.clone() });
        Ok(Some(Arc::new(Outbox {
            cfg: sc.clone(),
            dir: sc.outbox_dir.clone(),
            relay,
            notify: Notify::new(),
            metrics,
        })))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether copies of `action` go to the archiver.
    pub fn wants(&self, action: &str) -> bool {
        self.cfg.sends(action)
    }

    /// Write the entry for one archive copy under `.tmp/<id>/`, fsynced. Returns the staged
    /// folder and where the commit renames it to.
    pub(super) fn stage(
        &self,
        id: &str,
        action: &str,
        env: &Envelope,
        tagged: &[u8],
    ) -> io::Result<(PathBuf, PathBuf)> {
        let now = unix_now();
        let state = EntryState {
            id: id.to_string(),
            action: action.to_string(),
            mail_from: env.mail_from.clone(),
            rcpt_to: env.rcpt_to.clone(),
            body_8bitmime: env.body_8bitmime,
            smtputf8: env.smtputf8,
            created: now,
            attempts: 0,
            next_attempt: now,
            last_error: String::new(),
        };
        let tmp = self.dir.join(".tmp").join(id);
        // A leftover of an earlier, interrupted attempt with the same id cannot exist (ids are
        // fresh UUIDv7s), but a stale folder must not make staging fail.
        let _ = fs::remove_dir_all(&tmp);
        create_private_dir(&tmp)?;
        write_synced(&tmp.join(MESSAGE), tagged)?;
        write_synced(&tmp.join(STATE), &serde_json::to_vec_pretty(&state).map_err(io::Error::other)?)?;
        sync_dir(&tmp)?;
        Ok((tmp, self.dir.join(id)))
    }

    /// Make a staged entry visible (called by [`super::Staged::commit`]) and wake the sender.
    pub(super) fn commit(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)?;
        sync_dir(&self.dir)?;
        self.notify.notify_one();
        Ok(())
    }

    /// Wake the sender (e.g. after an entry was added by other means).
    pub fn wake(&self) {
        self.notify.notify_one();
    }

    /// Entries waiting now, oldest first, and how many were given up (`failed/`). Folders without
    /// `state.json` are the remains of a deletion cut short, and are finished off.
    fn scan(&self) -> io::Result<Scan> {
        let mut entries = Vec::new();
        for e in fs::read_dir(&self.dir)? {
            let e = e?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || name == FAILED || !e.file_type()?.is_dir() {
                continue;
            }
            let dir = e.path();
            match fs::read(dir.join(STATE)) {
                Ok(bytes) => match serde_json::from_slice::<EntryState>(&bytes) {
                    Ok(state) => entries.push(Found { dir, state }),
                    Err(err) => {
                        // Written atomically, so this is damage from outside: keep it for a person.
                        self.metrics.archive_outbox_failures.with_label_values(&["corrupt"]).inc();
                        error!(entry = %dir.display(), error = %err,
                               "archive outbox entry unreadable; moving it to failed/");
                        self.move_to_failed(&dir, &format!("state.json unreadable: {err}"))?;
                    }
                },
                Err(err) if err.kind() == io::ErrorKind::NotFound => {
                    let _ = fs::remove_file(dir.join(MESSAGE));
                    fs::remove_dir(&dir)?;
                    sync_dir(&self.dir)?;
                }
                Err(err) => return Err(err),
            }
        }
        entries.sort_by(|a, b| (a.state.created, &a.state.id).cmp(&(b.state.created, &b.state.id)));
        let failed = fs::read_dir(self.dir.join(FAILED)).map(|d| d.flatten().count()).unwrap_or(0);
        Ok(Scan { entries, failed })
    }

    fn set_gauges(&self, pending: &[&EntryState], failed: usize) {
        let now = unix_now();
        let m = &self.metrics;
        m.archive_outbox_depth.set(pending.len() as i64);
        m.archive_outbox_oldest_seconds
            .set(pending.iter().map(|s| now.saturating_sub(s.created)).max().unwrap_or(0) as i64);
        m.archive_outbox_failed.set(failed as i64);
    }

    /// Give an entry up: move it to `failed/<id>/` with a `reason.txt`. Never deletes it.
    fn move_to_failed(&self, dir: &Path, reason: &str) -> io::Result<()> {
        let failed = self.dir.join(FAILED);
        create_private_dir(&failed)?;
        let name = dir.file_name().ok_or_else(|| io::Error::other("entry without a name"))?;
        let mut dest = failed.join(name);
        if dest.exists() {
            // Moved back by a person and failed again: keep both.
            dest = failed.join(format!("{}.{}", name.to_string_lossy(), unix_now()));
        }
        let stamp =
            time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        write_durably(dir, REASON, format!("{stamp} {reason}\n").as_bytes())?;
        fs::rename(dir, &dest)?;
        sync_dir(&failed)?;
        sync_dir(&self.dir)
    }

    /// Delete a delivered entry: `state.json` first (so a deletion cut short is recognisable),
    /// then the message and the folder.
    fn delete(&self, dir: &Path) -> io::Result<()> {
        fs::remove_file(dir.join(STATE))?;
        fs::remove_file(dir.join(MESSAGE))?;
        fs::remove_dir(dir)?;
        sync_dir(&self.dir)
    }

    /// Record a failed attempt in `state.json` (atomically), with the next attempt's time.
    fn reschedule(&self, found: &mut Found, error: &str) -> io::Result<Duration> {
        let s = &mut found.state;
        s.attempts = s.attempts.saturating_add(1);
        let wait = self.cfg.backoff(s.attempts);
        s.next_attempt = unix_now() + wait.as_secs();
        s.last_error = error.to_string();
        write_durably(&found.dir, STATE, &serde_json::to_vec_pretty(s).map_err(io::Error::other)?)?;
        Ok(wait)
    }

    /// Scan, give up expired entries, refresh the gauges, and (when `sending`) send every due
    /// entry once, oldest first.
    async fn pass(self: &Arc<Self>, shutdown: &CancellationToken, sending: bool) -> io::Result<Pass> {
        let this = self.clone();
        let scan = tokio::task::spawn_blocking(move || this.scan()).await.map_err(io::Error::other)??;
        let Scan { entries, mut failed } = scan;
        let now = unix_now();
        let max_age = self.cfg.max_age_hours.saturating_mul(3600);
        let mut pending: Vec<Found> = Vec::with_capacity(entries.len());
        for found in entries {
            if now.saturating_sub(found.state.created) > max_age {
                let reason = format!(
                    "expired: not delivered within archive.smtp.max_age_hours = {} after {} attempts; last error: {}",
                    self.cfg.max_age_hours, found.state.attempts, found.state.last_error
                );
                self.give_up(&found, "expired", &reason).await?;
                failed += 1;
            } else {
                pending.push(found);
            }
        }
        self.set_gauges(&pending.iter().map(|f| &f.state).collect::<Vec<_>>(), failed);
        if !sending {
            return Ok(Pass::Done(None));
        }

        let mut next_due: Option<u64> = None;
        let mut remaining: Vec<usize> = Vec::new();
        let mut outcome = None;
        for i in 0..pending.len() {
            if outcome.is_none() && shutdown.is_cancelled() {
                outcome = Some(Pass::Stopped);
            }
            if outcome.is_some() || pending[i].state.next_attempt > unix_now() {
                next_due =
                    Some(next_due.map_or(pending[i].state.next_attempt, |d| d.min(pending[i].state.next_attempt)));
                remaining.push(i);
                continue;
            }
            match self.send_one(&mut pending[i], shutdown).await? {
                Sent::Delivered => {}
                Sent::Refused => failed += 1,
                Sent::Retry => {
                    remaining.push(i);
                    outcome = Some(Pass::ArchiverUnavailable);
                }
                Sent::Stopped => {
                    remaining.push(i);
                    outcome = Some(Pass::Stopped);
                }
            }
        }
        self.set_gauges(&remaining.iter().map(|&i| &pending[i].state).collect::<Vec<_>>(), failed);
        Ok(outcome.unwrap_or(Pass::Done(next_due)))
    }

    async fn give_up(self: &Arc<Self>, found: &Found, kind: &'static str, reason: &str) -> io::Result<()> {
        self.metrics.archive_outbox_failures.with_label_values(&[kind]).inc();
        error!(id = %found.state.id, kind, attempts = found.state.attempts, reason,
               "archive copy NOT delivered to the archiver; kept in archive.smtp.outbox_dir/failed/ for a person");
        let (this, dir, reason) = (self.clone(), found.dir.clone(), reason.to_string());
        tokio::task::spawn_blocking(move || this.move_to_failed(&dir, &reason)).await.map_err(io::Error::other)?
    }

    async fn send_one(self: &Arc<Self>, found: &mut Found, shutdown: &CancellationToken) -> io::Result<Sent> {
        let message = match tokio::fs::read(found.dir.join(MESSAGE)).await {
            Ok(m) => m,
            Err(e) => {
                self.give_up(found, "corrupt", &format!("message.eml unreadable: {e}")).await?;
                return Ok(Sent::Refused);
            }
        };
        let message = with_envelope_fields(&found.state, &message);
        let env = Envelope {
            mail_from: self.cfg.mail_from.clone(),
            rcpt_to: self.cfg.rcpt_to.clone(),
            body_8bitmime: found.state.body_8bitmime,
            smtputf8: found.state.smtputf8,
            xforward: Vec::new(),
            journal: None,
        };
        let send = self.relay.send(&env, &message);
        tokio::pin!(send);
        let result = tokio::select! {
            r = &mut send => r,
            _ = shutdown.cancelled() => match tokio::time::timeout(SHUTDOWN_SEND_GRACE, &mut send).await {
                Ok(r) => r,
                Err(_) => return Ok(Sent::Stopped),
            },
        };
        let m = &self.metrics;
        match result {
            Ok(reply) => {
                let (this, dir) = (self.clone(), found.dir.clone());
                tokio::task::spawn_blocking(move || this.delete(&dir)).await.map_err(io::Error::other)??;
                m.archive_outbox_sent.inc();
                info!(id = %found.state.id, action = %found.state.action, attempts = found.state.attempts,
                      archiver = %reply.text, "archive copy delivered to the archiver");
                Ok(Sent::Delivered)
            }
            Err(e @ RelayError::Refused(_)) => {
                let reason = format!("refused by the archiver after {} attempts: {e}", found.state.attempts + 1);
                self.give_up(found, "refused", &reason).await?;
                Ok(Sent::Refused)
            }
            Err(e) => {
                m.archive_outbox_failures.with_label_values(&[e.kind()]).inc();
                let (this, mut f, err) =
                    (self.clone(), Found { dir: found.dir.clone(), state: found.state.clone() }, e.to_string());
                let (wait, f) = tokio::task::spawn_blocking(move || (this.reschedule(&mut f, &err), f))
                    .await
                    .map_err(io::Error::other)?;
                found.state = f.state;
                let wait = wait?;
                warn!(id = %found.state.id, attempts = found.state.attempts, retry_in_secs = wait.as_secs(), error = %e,
                      "archive copy not delivered to the archiver; will retry");
                Ok(Sent::Retry)
            }
        }
    }

    /// The sender: runs until `shutdown` is cancelled. Entries survive any stop.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        info!(next_hop = %self.cfg.next_hop, outbox = %self.dir.display(), "archive outbox sender started");
        // While the archiver is unavailable nothing is sent until `paused_until`; the pause grows
        // like a retry with each consecutive outage. Scans go on every RESCAN (expiry, gauges).
        let mut outages = 0u32;
        let mut paused_until: Option<tokio::time::Instant> = None;
        loop {
            let now = tokio::time::Instant::now();
            let sending = paused_until.is_none_or(|t| now >= t);
            let wait = match self.pass(&shutdown, sending).await {
                Ok(Pass::Stopped) => break,
                Ok(Pass::Done(next_due)) if sending => {
                    (outages, paused_until) = (0, None);
                    let until_due = next_due.map(|d| Duration::from_secs(d.saturating_sub(unix_now()).max(1)));
                    until_due.unwrap_or(RESCAN).min(RESCAN)
                }
                Ok(Pass::Done(_)) => RESCAN,
                Ok(Pass::ArchiverUnavailable) => {
                    outages = outages.saturating_add(1);
                    paused_until = Some(now + self.cfg.backoff(outages));
                    RESCAN
                }
                Err(e) => {
                    self.metrics.archive_outbox_failures.with_label_values(&["io"]).inc();
                    error!(error = %e, outbox = %self.dir.display(), "archive outbox unreadable; retrying");
                    RESCAN
                }
            };
            let wake = tokio::time::Instant::now() + wait;
            let wake = paused_until.map_or(wake, |t| wake.min(t));
            tokio::select! {
                _ = shutdown.cancelled() => break,
                // While paused, new copies only wait: no knocking on a closed door per commit.
                _ = self.notify.notified(), if paused_until.is_none() => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
        info!("archive outbox sender stopped");
    }
}

enum Sent {
    Delivered,
    /// Given up (5xx or unreadable): moved to `failed/`.
    Refused,
    /// 4xx or unreachable: rescheduled.
    Retry,
    Stopped,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ArchiveSmtpConfig {
        ArchiveSmtpConfig { enabled: true, rcpt_to: vec!["journal@archief.example.nl".into()], ..Default::default() }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let c = cfg();
        let secs: Vec<u64> = [1, 2, 3, 6, 7, 8, 40, u32::MAX].iter().map(|&n| c.backoff(n).as_secs()).collect();
        assert_eq!(secs, [60, 120, 240, 1920, 3600, 3600, 3600, 3600]);
    }

    #[test]
    fn validation_names_the_key() {
        assert!(cfg().validate("127.0.0.1:10025").is_ok());
        let check = |f: &dyn Fn(&mut ArchiveSmtpConfig), key: &str| {
            let mut c = cfg();
            f(&mut c);
            let err = c.validate("127.0.0.1:10025").unwrap_err().to_string();
            assert!(err.starts_with(&format!("{key}:")), "{err}");
        };
        check(&|c| c.rcpt_to.clear(), "archive.smtp.rcpt_to");
        check(&|c| c.rcpt_to = vec!["no address".into()], "archive.smtp.rcpt_to");
        check(&|c| c.actions = vec!["review".into()], "archive.smtp.actions");
        check(&|c| c.next_hop = "archiver".into(), "archive.smtp.next_hop");
        check(&|c| c.next_hop = "127.0.0.1:10025".into(), "archive.smtp.next_hop");
        check(&|c| c.mail_from = "<x@y>".into(), "archive.smtp.mail_from");
        check(&|c| c.retry_max_secs = 1, "archive.smtp.retry_max_secs");
        check(&|c| c.max_age_hours = 0, "archive.smtp.max_age_hours");
        // Disabled: only the action names are checked.
        let off = ArchiveSmtpConfig { enabled: false, ..Default::default() };
        assert!(off.validate("").is_ok());
    }

    #[test]
    fn envelope_fields_come_first_and_cannot_inject() {
        let state = EntryState {
            id: "i".into(),
            action: "archive".into(),
            mail_from: String::new(),
            rcpt_to: vec!["a@x.nl".into(), "bcc@x.nl\r\nX-Evil: 1".into()],
            body_8bitmime: false,
            smtputf8: false,
            created: 0,
            attempts: 0,
            next_attempt: 0,
            last_error: String::new(),
        };
        let out = with_envelope_fields(&state, b"X-Mailgrip-Class: functioneel\r\nSubject: s\r\n\r\nbody\r\n");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "X-Mailgrip-Envelope-From: <>\r\nX-Mailgrip-Envelope-To: <a@x.nl>\r\n\
             X-Mailgrip-Envelope-To: <bcc@x.nl??X-Evil: 1>\r\nX-Mailgrip-Class: functioneel\r\nSubject: s\r\n\r\nbody\r\n"
        );
    }
}
