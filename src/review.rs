//! The review queue: archive copies held until a person decides (action `review`).
//!
//! Held copies live in `review.dir` as `<id>.eml` + `<id>.json` (the decision sidecar), files
//! 0600 and folders 0700, written durably by the pipeline like archive copies. An archivist
//! decides with `mailgrip review decide` (or the console): the copy moves into the general or
//! restricted archive, or is deleted, and the decision — with the corrected class — is appended
//! to `review.dir/decisions.jsonl`, which `mailgrip review export` turns into training data.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::archive::{Archive, create_private_dir, sync_dir};
use crate::classify::LABELS;
use crate::decide::Action;

/// A held copy, as listed for review.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReviewItem {
    pub id: String,
    pub class: String,
    pub reason: String,
    #[serde(default)]
    pub scores: serde_json::Map<String, serde_json::Value>,
    pub model: String,
    pub model_version: String,
    pub time: String,
    #[serde(default)]
    pub message_id: Option<String>,
    #[serde(default)]
    pub size: usize,
    /// Seconds since the copy was held (filled in when listing).
    #[serde(default)]
    pub age_secs: u64,
}

/// One reviewer decision, as appended to `decisions.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReviewDecision {
    pub time: String,
    pub id: String,
    pub predicted: String,
    pub corrected: String,
    pub action: Action,
    pub reviewer: String,
    pub model: String,
    pub model_version: String,
    /// The model text of the message (layout of the model), for retraining.
    pub text: String,
    /// The message's Message-ID (hashed before it goes into the audit trail).
    #[serde(default)]
    pub message_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("no held copy with id {0:?} in the review queue")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The reviewers' audit chain could not be opened or written: nothing was decided (when it
    /// could not be opened) or the decision stands without its record (when the append failed).
    #[error("reviewers' audit chain: {0}")]
    Audit(io::Error),
}

pub struct ReviewQueue {
    dir: PathBuf,
}

impl ReviewQueue {
    pub fn new(dir: &Path) -> ReviewQueue {
        ReviewQueue { dir: dir.to_path_buf() }
    }

    /// The store the pipeline stages held copies into.
    pub fn store(&self) -> Archive {
        Archive::flat(&self.dir)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Held copies, oldest first.
    pub fn list(&self) -> io::Result<Vec<ReviewItem>> {
        let mut items = Vec::new();
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(items),
            Err(e) => return Err(e),
        };
        let now = std::time::SystemTime::now();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") || !path.with_extension("eml").exists() {
                continue;
            }
            let Ok(bytes) = fs::read(&path) else { continue };
            let Ok(mut item) = serde_json::from_slice::<ReviewItem>(&bytes) else { continue };
            let modified = entry.metadata().and_then(|m| m.modified()).unwrap_or(now);
            item.age_secs = now.duration_since(modified).map(|d| d.as_secs()).unwrap_or(0);
            items.push(item);
        }
        items.sort_by(|a, b| a.time.cmp(&b.time).then(a.id.cmp(&b.id)));
        Ok(items)
    }

    /// Queue depth and the age in seconds of the oldest held copy (for metrics).
    pub fn depth_and_oldest(&self) -> (usize, u64) {
        let items = self.list().unwrap_or_default();
        (items.len(), items.iter().map(|i| i.age_secs).max().unwrap_or(0))
    }

    pub fn message(&self, id: &str) -> Result<Vec<u8>, ReviewError> {
        check_id(id)?;
        fs::read(self.dir.join(format!("{id}.eml"))).map_err(|_| ReviewError::NotFound(id.to_string()))
    }

    /// The first `limit` bytes of a held copy (enough for its header, e.g. to show the subject).
    pub fn head(&self, id: &str, limit: u64) -> Result<Vec<u8>, ReviewError> {
        use std::io::Read;
        check_id(id)?;
        let file =
            fs::File::open(self.dir.join(format!("{id}.eml"))).map_err(|_| ReviewError::NotFound(id.to_string()))?;
        let mut buf = Vec::new();
        file.take(limit).read_to_end(&mut buf)?;
        Ok(buf)
    }

    /// Seconds since the copy was held (0 when unknown), as [`ReviewQueue::list`] reports it.
    pub fn age_secs(&self, id: &str) -> u64 {
        if check_id(id).is_err() {
            return 0;
        }
        fs::metadata(self.dir.join(format!("{id}.json")))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| std::time::SystemTime::now().duration_since(t).ok())
            .map_or(0, |d| d.as_secs())
    }

    pub fn item(&self, id: &str) -> Result<ReviewItem, ReviewError> {
        check_id(id)?;
        let bytes = fs::read(self.dir.join(format!("{id}.json"))).map_err(|_| ReviewError::NotFound(id.to_string()))?;
        serde_json::from_slice(&bytes).map_err(|e| ReviewError::Invalid(format!("{id}.json: {e}")))
    }

    /// Apply a reviewer's decision: move the copy into `archive` / `restricted` or delete it,
    /// and record the decision. Returns the decision and where the copy went.
    pub fn decide(
        &self,
        id: &str,
        action: Action,
        corrected: Option<&str>,
        reviewer: &str,
        archive: &Archive,
        restricted: &Archive,
        mdto: &crate::mdto::MdtoConfig,
    ) -> Result<(ReviewDecision, Option<PathBuf>), ReviewError> {
        if action == Action::Review {
            return Err(ReviewError::Invalid("a review decision is archive, archive-restricted or none".into()));
        }
        if reviewer.trim().is_empty() {
            return Err(ReviewError::Invalid("the reviewer must be named".into()));
        }
        let item = self.item(id)?;
        let raw = self.message(id)?;
        let corrected = corrected.unwrap_or(&item.class).to_string();
        if !LABELS.contains(&corrected.as_str()) {
            return Err(ReviewError::Invalid(format!("unknown class {corrected:?}; known: {}", LABELS.join(", "))));
        }
        let now = time::OffsetDateTime::now_utc();
        let stamp = now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        let sidecar_path = self.dir.join(format!("{id}.json"));
        let mut sidecar: serde_json::Value = serde_json::from_slice(&fs::read(&sidecar_path)?)
            .map_err(|e| ReviewError::Invalid(format!("{id}.json: {e}")))?;
        let extracted = crate::parse::extract(&raw);
        let dest = match action {
            Action::Archive | Action::ArchiveRestricted => {
                let store = if action == Action::Archive { archive } else { restricted };
                sidecar["class"] = corrected.clone().into();
                sidecar["action"] = action.as_str().into();
                sidecar["reason"] = format!("review by {reviewer} at {stamp} (predicted {})", item.class).into();
                sidecar["reviewer"] = reviewer.into();
                let dir = store.dest_dir(now);
                create_private_dir(&dir)?;
                crate::archive::write_durably(
                    &dir,
                    &format!("{id}.json"),
                    &serde_json::to_vec_pretty(&sidecar).unwrap(),
                )?;
                let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&raw));
                let model_id = format!("{}@{}", item.model, item.model_version);
                let eml_file = format!("{id}.eml");
                let reason = format!("beoordeeld door {reviewer}: {}", action.as_str());
                let record = crate::mdto::Record {
                    id,
                    message_id: extracted.message_id.as_deref(),
                    subject: &extracted.subject,
                    class: &corrected,
                    model: &model_id,
                    sent: extracted.date.as_deref().and_then(|d| {
                        time::OffsetDateTime::parse(d, &time::format_description::well_known::Rfc3339).ok()
                    }),
                    archived: now,
                    eml_file: &eml_file,
                    size: raw.len() as u64,
                    sha256: &sha,
                    restricted: action == Action::ArchiveRestricted,
                    restriction_reason: (action == Action::ArchiveRestricted).then_some(reason.as_str()),
                };
                for (name, bytes) in crate::archive::mdto_files(mdto, &record) {
                    crate::archive::write_durably(&dir, &name, &bytes)?;
                }
                let dest = crate::archive::write_durably(&dir, &format!("{id}.eml"), &raw)?;
                // The SMTP archive sink gets reviewed copies like any other archive copy.
                let env: crate::envelope::Envelope =
                    serde_json::from_value(sidecar["envelope"].clone()).unwrap_or_default();
                store.enqueue_outbox(id, action.as_str(), &env, &raw)?;
                Some(dest)
            }
            _ => None,
        };
        let text = extracted.model_text();
        let decision = ReviewDecision {
            time: stamp,
            id: id.to_string(),
            predicted: item.class.clone(),
            corrected,
            action,
            reviewer: reviewer.to_string(),
            model: item.model.clone(),
            model_version: item.model_version.clone(),
            text,
            message_id: extracted.message_id.clone(),
        };
        // Record first, then release the held copy: a crash in between leaves a decided copy
        // still in the queue (decided again, harmless), never a lost decision.
        let mut log = fs::OpenOptions::new().create(true).append(true).open(self.dir.join("decisions.jsonl"))?;
        let mut line = serde_json::to_vec(&decision).unwrap();
        line.push(b'\n');
        log.write_all(&line)?;
        log.sync_all()?;
        fs::remove_file(self.dir.join(format!("{id}.eml")))?;
        fs::remove_file(&sidecar_path)?;
        sync_dir(&self.dir)?;
        Ok((decision, dest))
    }

    /// All reviewer decisions so far.
    pub fn decisions(&self) -> io::Result<Vec<ReviewDecision>> {
        let path = self.dir.join("decisions.jsonl");
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
    }
}

/// Decide on a held copy and record it in the reviewers' audit chain (`audit.review_path`): what
/// `mailgrip review decide` and the console both do. The chain is opened first (no decision
/// without a record of it) and closed again afterwards, so that the CLI and the console, which
/// run beside the daemon, take turns on its lock. The file work runs on the blocking pool.
pub async fn decide_audited(
    cfg: &crate::config::Config,
    id: &str,
    action: Action,
    corrected: Option<&str>,
    reviewer: &str,
) -> Result<(ReviewDecision, Option<PathBuf>), ReviewError> {
    use crate::audit::{AuditLog, Entry};
    let blocking = |e: tokio::task::JoinError| ReviewError::Io(io::Error::other(e.to_string()));
    let audit_cfg = cfg.audit.review_chain();
    let audit = tokio::task::spawn_blocking(move || AuditLog::open(&audit_cfg))
        .await
        .map_err(blocking)?
        .map_err(ReviewError::Audit)?;
    // A copy archived here goes to the SMTP archive sink too; the daemon's sender finds it.
    let outbox = crate::archive::outbox::Outbox::open(cfg, std::sync::Arc::new(crate::telemetry::Metrics::new()))
        .map_err(ReviewError::Io)?;
    let (queue, archive, restricted, mdto) = (
        ReviewQueue::new(&cfg.review.dir),
        Archive::new(&cfg.archive.dir).with_outbox(outbox.clone()),
        Archive::new(&cfg.archive.restricted_dir).with_outbox(outbox),
        cfg.mdto.clone(),
    );
    let (id, corrected, reviewer) = (id.to_string(), corrected.map(str::to_string), reviewer.to_string());
    let decided = tokio::task::spawn_blocking(move || {
        queue.decide(&id, action, corrected.as_deref(), &reviewer, &archive, &restricted, &mdto)
    })
    .await
    .map_err(blocking)?;
    let (decision, dest) = match decided {
        Ok(d) => d,
        Err(e) => {
            tokio::task::spawn_blocking(move || drop(audit)).await.map_err(blocking)?;
            return Err(e);
        }
    };
    let message_id = decision.message_id.as_deref().map(|m| audit.hash_message_id(m));
    let appended = audit
        .append(Entry {
            kind: "review".into(),
            id: decision.id.clone(),
            message_id_hash: message_id,
            model: Some(decision.model.clone()),
            model_version: Some(decision.model_version.clone()),
            class: decision.predicted.clone(),
            corrected_class: Some(decision.corrected.clone()),
            action: decision.action.as_str().to_string(),
            mode: "enforce".into(),
            reviewer: Some(decision.reviewer.clone()),
            reason: Some("reviewer decision".into()),
            ..Default::default()
        })
        .await;
    // Dropping the log joins its writer thread: not on an async worker.
    tokio::task::spawn_blocking(move || drop(audit)).await.map_err(blocking)?;
    appended.map_err(ReviewError::Audit)?;
    Ok((decision, dest))
}

/// Ids are ours (hex); anything else could walk out of the folder.
fn check_id(id: &str) -> Result<(), ReviewError> {
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(ReviewError::NotFound(id.to_string()));
    }
    Ok(())
}
