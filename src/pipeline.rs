//! The flow of one message after end-of-data:
//! parse → classify → decide → tag → stage archive copy → relay → commit archive copy.
//!
//! [`Gateway::process`] is the whole flow, called by the SMTP session ([`crate::ingress`]) once per
//! transaction. It returns the reply for the client; every failure is an explicit outcome (see the
//! table in the README): next hop 2xx → `250`; next hop 4xx or unreachable → `451`; next hop 5xx →
//! that 5xx; classifier failure → relayed as `unclassified` or `451`, per `classify.on_error`,
//! never 5xx.
//!
//! Front ends that do not relay themselves use the two halves: [`Gateway::analyze`] (everything up
//! to a staged archive copy) and [`Verdict::commit`] once the mail is safe elsewhere: the milter
//! commits when the MTA takes the message over, journal mode when the archive copy is the goal.

use std::sync::Arc;
use std::time::Instant;

use tracing::{Instrument, info, info_span, warn};

use crate::archive::outbox::Outbox;
use crate::archive::{Archive, Sidecar, Staged};
use crate::audit::{AuditLog, Entry};
use crate::classify::{Classifier, Scores};
use crate::config::{Config, JournalConfig, OnClassifyError};
use crate::decide::{Action, Decision, Policy, PolicyMode};
use crate::envelope::{Envelope, JournalEnvelope};
use crate::ingress::reply::SmtpReply;
use crate::mdto::MdtoConfig;
use crate::parse;
use crate::relay::{Relay, RelayError};
use crate::review::ReviewQueue;
use crate::tag::{Tags, tag};
use crate::telemetry::Metrics;

/// Everything a message passes through, shared by all sessions.
pub struct Gateway {
    pub classifier: Classifier,
    pub policy: Policy,
    pub relay: Relay,
    /// Exchange journal mode (`[journal]`): see [`Gateway::process_journal`].
    pub journal: JournalConfig,
    /// The general archive, the restricted archive and the review queue's store.
    pub archive: Archive,
    pub restricted: Archive,
    pub review: ReviewQueue,
    review_store: Archive,
    pub metrics: Arc<Metrics>,
    pub on_classify_error: OnClassifyError,
    /// Every decision is recorded here before the client gets an answer. Shared across reloads:
    /// the chain has one writer, holding its lock for the life of the process.
    pub audit: Arc<AuditLog>,
    pub mdto: MdtoConfig,
    /// The SMTP archive sink (`[archive.smtp]`); its sender is started by [`crate::run`].
    pub outbox: Option<Arc<Outbox>>,
}

impl Gateway {
    pub fn new(cfg: &Config, classifier: Classifier, metrics: Arc<Metrics>) -> std::io::Result<Gateway> {
        let outbox = Outbox::open(cfg, metrics.clone())?;
        Ok(Self::with_shared(cfg, classifier, metrics, Arc::new(AuditLog::open(&cfg.audit)?), outbox))
    }

    /// As [`Gateway::new`], keeping the audit trail and the archive outbox that are already open
    /// (reload): each has one writer or sender for the life of the process.
    pub fn with_shared(
        cfg: &Config,
        classifier: Classifier,
        metrics: Arc<Metrics>,
        audit: Arc<AuditLog>,
        outbox: Option<Arc<Outbox>>,
    ) -> Gateway {
        Gateway {
            audit,
            mdto: cfg.mdto.clone(),
            journal: cfg.journal.clone(),
            classifier,
            policy: Policy::new(&cfg.policy, &cfg.archive),
            relay: Relay::new(&cfg.relay),
            archive: Archive::new(&cfg.archive.dir).with_outbox(outbox.clone()),
            restricted: Archive::new(&cfg.archive.restricted_dir).with_outbox(outbox.clone()),
            outbox,
            review: ReviewQueue::new(&cfg.review.dir),
            review_store: Archive::flat(&cfg.review.dir),
            metrics,
            on_classify_error: cfg.classify.on_error,
        }
    }

    /// Where the copy for `action` goes; none in shadow mode.
    fn store_for(&self, action: Action) -> Option<&Archive> {
        if self.policy.mode() == PolicyMode::Shadow {
            return None;
        }
        match action {
            Action::Archive => Some(&self.archive),
            Action::ArchiveRestricted => Some(&self.restricted),
            Action::Review => Some(&self.review_store),
            Action::None => None,
        }
    }

    /// A new decision id (UUIDv7: sortable by time).
    pub fn new_id() -> String {
        uuid::Uuid::now_v7().simple().to_string()
    }

    /// Process one received message and say what to answer the client.
    pub async fn process(self: &Arc<Self>, env: Envelope, raw: Vec<u8>) -> SmtpReply {
        let mut journal = self.journal.enabled && parse::journal::is_report(&raw);
        if journal && !self.journal.trusts(&env.mail_from, &env.rcpt_to) {
            journal = false;
            self.metrics.journal_reports.with_label_values(&["untrusted"]).inc();
            warn!(mail_from = %env.mail_from, "journal report from an untrusted sender or for another address: relayed as ordinary mail");
        }
        let id = Self::new_id();
        let span = info_span!("message", id = %id, queue_id = env.queue_id().unwrap_or("-"), size = raw.len(), rcpts = env.rcpt_to.len(), journal);
        let started = Instant::now();
        let reply = async {
            if journal {
                return self.process_journal(&id, env, raw).await;
            }
            match self.analyze(&id, &env, raw).await {
                Ok(verdict) => self.relay_and_commit(&env, verdict).await,
                Err(reply) => reply,
            }
        }
        .instrument(span)
        .await;
        self.metrics.processing_seconds.observe(started.elapsed().as_secs_f64());
        reply
    }

    /// Parse, classify, decide, audit, tag and stage the archive copy of one message. `env` is the
    /// envelope recorded with the archive copy. `Err` is the reply for the client when the message
    /// cannot be handled now (always 4xx: the sender keeps it and retries).
    pub async fn analyze(self: &Arc<Self>, id: &str, env: &Envelope, raw: Vec<u8>) -> Result<Verdict, SmtpReply> {
        let m = &self.metrics;
        // Parse on the blocking pool: a 20 MB message is real CPU work.
        let (raw, extracted, text) = match tokio::task::spawn_blocking(move || {
            let e = parse::extract(&raw);
            let text = e.model_text();
            (raw, e, text)
        })
        .await
        {
            Ok(r) => r,
            Err(e) => {
                m.error("parse", "panic");
                warn!(error = %e, "parser crashed");
                return Err(SmtpReply::new(451, "4.3.0 internal error while parsing, try again later"));
            }
        };

        let model = self.classifier.info().clone();
        let (decision, scores): (Decision, Option<Scores>) = match &extracted.parse_error {
            Some(why) => {
                m.error("parse", "unparseable");
                (self.policy.unclassified(&format!("parse: {why}")), None)
            }
            None => match self.classifier.classify(text).await {
                Ok(scores) => (self.policy.decide(&scores), Some(scores)),
                Err(e) => {
                    m.error("classify", e.kind());
                    warn!(error = %e, "classification failed");
                    match self.on_classify_error {
                        OnClassifyError::Tempfail => {
                            m.messages.with_label_values(&["unclassified", "tempfailed"]).inc();
                            return Err(SmtpReply::new(451, "4.3.0 classifier unavailable, try again later"));
                        }
                        OnClassifyError::RelayUnclassified => {
                            (self.policy.unclassified(&format!("classify: {e}")), None)
                        }
                    }
                }
            },
        };

        let tags = Tags {
            class: decision.class.clone(),
            scores: scores.map(|s| s.header_value()),
            model: model.id(),
            id: id.to_string(),
            action: decision.action.as_str().to_string(),
            reason: scores.is_none().then(|| decision.reason.clone()),
            policy: format!("{} {}", self.policy.version(), self.policy.mode().as_str()),
        };
        let now = time::OffsetDateTime::now_utc();
        let mode = self.policy.mode().as_str();
        m.decisions.with_label_values(&[decision.action.as_str(), mode]).inc();
        // The decision is on record (fsynced) before anything is routed or answered.
        let entry = Entry {
            kind: "decision".into(),
            id: id.to_string(),
            message_id_hash: extracted.message_id.as_deref().map(|mid| self.audit.hash_message_id(mid)),
            model: Some(model.name.clone()),
            model_version: Some(model.version.clone()),
            model_sha256: Some(model.sha256.clone()),
            scores: scores
                .map(|s| crate::classify::LABELS.iter().zip(s.0).map(|(l, p)| (l.to_string(), p as f64)).collect()),
            policy_version: Some(self.policy.version().to_string()),
            class: decision.class.clone(),
            action: decision.action.as_str().to_string(),
            mode: mode.to_string(),
            reason: Some(decision.reason.clone()),
            reviewer: None,
            corrected_class: None,
        };
        if let Err(e) = self.audit.append(entry).await {
            m.error("audit", "write");
            warn!(error = %e, "audit trail not writable; deferring");
            m.messages.with_label_values(&[&decision.class, "tempfailed"]).inc();
            return Err(SmtpReply::new(451, "4.3.0 audit trail unavailable, try again later"));
        }
        let archive_copy = self.store_for(decision.action).is_some();
        let this = self.clone();
        let (id_owned, env_owned, decision_owned) = (id.to_string(), env.clone(), decision.clone());
        let tags_kept = tags.clone();
        // Tagging copies the message and staging fsyncs it: both off the async workers.
        let staged = tokio::task::spawn_blocking(move || {
            let (tagged, forged) = tag(&raw, &tags);
            let staged = if archive_copy {
                let archive = this.store_for(decision_owned.action).expect("checked");
                let mut sidecar = Sidecar {
                    id: &id_owned,
                    class: &decision_owned.class,
                    action: decision_owned.action.as_str(),
                    reason: &decision_owned.reason,
                    scores: scores.map(|s| s.as_map()).unwrap_or_default(),
                    model: &model.name,
                    model_version: &model.version,
                    model_sha256: &model.sha256,
                    time: now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
                    envelope: &env_owned,
                    message_id: extracted.message_id.as_deref(),
                    sha256: String::new(),
                    size: 0,
                };
                let restricted = decision_owned.action == Action::ArchiveRestricted;
                let mdto_wanted = matches!(decision_owned.action, Action::Archive | Action::ArchiveRestricted);
                let model_id = model.id();
                let sent = extracted
                    .date
                    .as_deref()
                    .and_then(|d| time::OffsetDateTime::parse(d, &time::format_description::well_known::Rfc3339).ok());
                let eml_file = format!("{id_owned}.eml");
                let extras = |sha: &str, size: usize| {
                    if !mdto_wanted {
                        return Vec::new();
                    }
                    let record = crate::mdto::Record {
                        id: &id_owned,
                        message_id: extracted.message_id.as_deref(),
                        subject: &extracted.subject,
                        class: &decision_owned.class,
                        model: &model_id,
                        sent,
                        archived: now,
                        eml_file: &eml_file,
                        size: size as u64,
                        sha256: sha,
                        restricted,
                        restriction_reason: restricted.then_some(decision_owned.reason.as_str()),
                    };
                    crate::archive::mdto_files(&this.mdto, &record)
                };
                Some(archive.stage(&id_owned, now, &tagged, &mut sidecar, &extras))
            } else {
                None
            };
            (tagged, forged, staged)
        })
        .await;
        let (tagged, forged, staged) = match staged {
            Ok((_, _, Some(Err(e)))) => {
                m.error("archive", "stage");
                warn!(error = %e, "archive copy could not be written; deferring");
                m.messages.with_label_values(&[&decision.class, "tempfailed"]).inc();
                return Err(SmtpReply::new(451, "4.3.0 archive store unavailable, try again later"));
            }
            Ok((tagged, forged, staged)) => (tagged, forged, staged.map(|s| s.expect("matched above"))),
            Err(e) => {
                m.error("tag", "panic");
                warn!(error = %e, "tagging crashed");
                return Err(SmtpReply::new(451, "4.3.0 internal error, try again later"));
            }
        };
        if forged > 0 {
            m.error("tag", "forged_header_removed");
            warn!(removed = forged, "removed X-Mailgrip headers that arrived from outside");
        }

        Ok(Verdict {
            id: id.to_string(),
            decision,
            tags: tags_kept,
            tagged,
            forged,
            scores_log: scores.map(|s| s.header_value()).unwrap_or_default(),
            staged,
        })
    }

    /// Journal mode: unwrap an Exchange envelope journal report, classify the original and keep its
    /// archive copy with the report's envelope (BCC included). Nothing is relayed: the original
    /// was already delivered by Exchange, and the report is for the archive only.
    ///
    /// A malformed report gets `451 4.6.0`: Exchange keeps it queued and retries, so a report
    /// format we misread is not lost, a fixed mailgrip picks the queue up, and after Exchange's
    /// expiry it lands in the organisation's JournalingReportNdrTo mailbox (Exchange's own
    /// place for undeliverable reports). Archiving the report as-is would instead record the
    /// journaling mailbox as the only recipient and hide the failure. Because nothing else
    /// holds the message, a failed commit of the archive copy is also a `451`, unlike in
    /// [`Verdict::commit`]'s relay case (a retry may leave a second copy; never none).
    async fn process_journal(self: &Arc<Self>, id: &str, env: Envelope, raw: Vec<u8>) -> SmtpReply {
        let m = &self.metrics;
        let report = match tokio::task::spawn_blocking(move || parse::journal::unwrap(&raw)).await {
            Ok(Ok(report)) => report,
            Ok(Err(e)) => {
                m.journal_reports.with_label_values(&["malformed"]).inc();
                warn!(error = %e, "malformed journal report; deferring, not relaying");
                return SmtpReply::new(451, format!("4.6.0 malformed journal report ({e}), try again later"));
            }
            Err(e) => {
                m.error("parse", "panic");
                warn!(error = %e, "journal report parser crashed");
                return SmtpReply::new(451, "4.3.0 internal error while parsing, try again later");
            }
        };
        let journal_env = Envelope {
            mail_from: report.sender.clone(),
            rcpt_to: report.recipients.iter().map(|r| r.address.clone()).collect(),
            body_8bitmime: env.body_8bitmime,
            smtputf8: env.smtputf8,
            xforward: env.xforward.clone(),
            journal: Some(JournalEnvelope {
                recipients: report.recipients,
                on_behalf_of: report.on_behalf_of,
                message_id: report.message_id,
                report_mail_from: env.mail_from.clone(),
                report_rcpt_to: env.rcpt_to.clone(),
            }),
        };
        let verdict = match self.analyze(id, &journal_env, report.original).await {
            Ok(verdict) => verdict,
            Err(reply) => return reply,
        };
        let (class, action) = (verdict.decision.class.clone(), verdict.decision.action);
        if verdict.has_archive_copy() && !verdict.commit(m).await {
            m.messages.with_label_values(&[&class, "tempfailed"]).inc();
            return SmtpReply::new(451, "4.3.0 archive store unavailable, try again later");
        }
        m.journal_reports.with_label_values(&["unwrapped"]).inc();
        m.messages.with_label_values(&[&class, "journaled"]).inc();
        info!(class = %class, action = action.as_str(), recipients = journal_env.rcpt_to.len(), "journaled");
        SmtpReply::new(250, format!("2.0.0 Ok: {id} {class} {} journaled", action.as_str()))
    }

    /// Relay the tagged message; commit its archive copy only once the next hop holds it.
    async fn relay_and_commit(&self, env: &Envelope, verdict: Verdict) -> SmtpReply {
        let m = &self.metrics;
        let relay_timer = m.relay_seconds.with_label_values(&[self.relay.mode()]).start_timer();
        let relayed = self.relay.send(&verdict.id, env, &verdict.tagged).await;
        relay_timer.observe_duration();
        match relayed {
            Ok(remote) => {
                let mode = self.policy.mode().as_str();
                let (id, class, action) = (verdict.id.clone(), verdict.decision.class.clone(), verdict.decision.action);
                info!(class = %class, action = action.as_str(), mode, policy = %self.policy.version(), scores = %verdict.scores_log,
                      model = %self.classifier.info().id(), reason = %verdict.decision.reason, next_hop = %remote.text, "relayed");
                verdict.commit(m).await;
                m.messages.with_label_values(&[&class, "relayed"]).inc();
                SmtpReply::new(250, format!("2.0.0 Ok: {id} {class} {}", action.as_str()))
            }
            Err(e) => {
                let decision = verdict.decision.clone();
                verdict.discard();
                m.error("relay", e.kind());
                let (outcome, reply) = match &e {
                    RelayError::Refused(r) => ("rejected", SmtpReply::new(r.code, r.text.clone())),
                    RelayError::Deferred(r) => ("tempfailed", SmtpReply::new(r.code, r.text.clone())),
                    RelayError::Unreachable(_) | RelayError::Io(_) => {
                        ("tempfailed", SmtpReply::new(451, "4.4.1 next hop unavailable, try again later"))
                    }
                };
                m.messages.with_label_values(&[&decision.class, outcome]).inc();
                warn!(class = %decision.class, error = %e, outcome, "not relayed");
                reply
            }
        }
    }
}

/// The outcome of [`Gateway::analyze`]: the decision, the headers to add, the tagged message and
/// its staged (fsynced, not yet visible) archive copy. Commit it once the mail is safe elsewhere,
/// or discard it; dropping it leaves the staged files in `.tmp`.
pub struct Verdict {
    pub id: String,
    pub decision: Decision,
    pub tags: Tags,
    /// The message as relayed: our headers first, forged `X-Mailgrip-*` fields removed.
    pub tagged: Vec<u8>,
    /// How many forged `X-Mailgrip-*` fields were removed.
    pub forged: usize,
    /// The scores as in the `X-Mailgrip-Scores` header (empty when unscored).
    pub scores_log: String,
    staged: Option<Staged>,
}

impl Verdict {
    /// Whether there is an archive copy (archive, restricted or review) to commit.
    pub fn has_archive_copy(&self) -> bool {
        self.staged.is_some()
    }

    /// Make the archive copy visible. Called once the mail is delivered or otherwise held, so a
    /// failure here is logged and counted, never turned into a reply: answering 4xx now would
    /// deliver twice. The staged copy then stays under `.tmp` for recovery. Returns whether a
    /// copy was committed.
    pub async fn commit(self, m: &Metrics) -> bool {
        let Some(staged) = self.staged else { return false };
        let action = self.decision.action;
        match tokio::task::spawn_blocking(move || staged.commit()).await {
            Ok(Ok(_)) => {
                m.archived.with_label_values(&[action.as_str()]).inc();
                true
            }
            other => {
                m.error("archive", "commit");
                warn!(result = ?other.map(|r| r.err()), "archive commit failed after delivery; staged copy kept in .tmp");
                false
            }
        }
    }

    /// Throw the staged copy away (the mail was not taken; the sender will retry).
    pub fn discard(self) {
        if let Some(staged) = self.staged {
            staged.discard();
        }
    }
}

/// The gateway in use, replaced whole by a reload (SIGHUP). Each transaction takes the current one
/// with [`GatewayHandle::get`] and keeps it to the end, so mail in flight finishes on the model
/// and policy it started with; the old model is freed when its last transaction is done.
pub struct GatewayHandle {
    current: std::sync::RwLock<Arc<Gateway>>,
    /// The metrics registry outlives reloads.
    pub metrics: Arc<Metrics>,
}

impl GatewayHandle {
    pub fn new(gateway: Gateway) -> GatewayHandle {
        let metrics = gateway.metrics.clone();
        GatewayHandle { current: std::sync::RwLock::new(Arc::new(gateway)), metrics }
    }

    pub fn get(&self) -> Arc<Gateway> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Put `next` in place; returns the gateway it replaced.
    pub fn replace(&self, next: Gateway) -> Arc<Gateway> {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        std::mem::replace(&mut *current, Arc::new(next))
    }
}
