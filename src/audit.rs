//! Audit trail: an append-only, hash-chained JSONL file with one record per automated decision
//! and per human review, so that every archive decision can be accounted for afterwards.
//!
//! # Records
//!
//! `audit.path` holds one JSON object per line, members in this fixed order, no whitespace:
//!
//! ```text
//! {"seq":1,"time":"2026-11-23T10:00:00.123456789Z","kind":"decision","id":"…",
//!  "message_id_hash":"…","model":"…","model_version":"…","model_sha256":"…",
//!  "scores":{"functioneel":0.91,…},"policy_version":"…","class":"…","action":"…",
//!  "mode":"enforce","reason":null,"reviewer":null,"corrected_class":null,
//!  "prev":"<64 hex>","hash":"<64 hex>"}
//! ```
//!
//! - `seq` counts records from 1, globally: it continues across rotated files.
//! - `time` is when the record was written, RFC 3339 in UTC.
//! - The [`Entry`] fields follow; absent ones are `null`. There is never message content: the
//!   Message-ID only appears as `message_id_hash` = sha256(salt ‖ Message-ID) in hex
//!   ([`AuditLog::hash_message_id`]), where the salt is the hex-decoded content of the salt file.
//! - `prev` is the `hash` of the previous record, or 64 zeros for the first record ever.
//! - `hash` is always the last member.
//!
//! # What is hashed
//!
//! `hash` = lowercase hex of sha256 over the record's line exactly as written, with the trailing
//! `,"hash":"<64 hex>"` member removed, i.e. the bytes from the opening `{` up to (not including)
//! the final `,"hash":"`, followed by a single `}`. That is the record serialised without `hash`:
//! compact JSON, members in the order above, UTF-8, the way the writer produced it. Because the
//! hash covers the exact bytes rather than a re-serialisation, a verifier never has to reproduce
//! number or string formatting: in any language it cuts the line and hashes. `prev` is inside the
//! hashed bytes, so each record commits to the whole chain before it.
//!
//! An auditor can check a chain without mailgrip (`python3 verify.py audit.jsonl.0* audit.jsonl`,
//! rotated files in order, live file last; shell globbing sorts the zero-padded names right):
//!
//! ```python
//! import hashlib, json, sys
//! prev, seq = "0" * 64, 0
//! for path in sys.argv[1:]:
//!     for n, line in enumerate(open(path, "rb"), 1):
//!         i = line.rfind(b',"hash":"')
//!         body, h = line[:i] + b"}", line[i + 9:-3].decode()
//!         try:
//!             rec = json.loads(line)
//!         except ValueError:
//!             rec = {}
//!         if not (line.endswith(b'"}\n') and i > 0 and rec.get("hash") == h
//!                 and hashlib.sha256(body).hexdigest() == h
//!                 and rec["seq"] == seq + 1 and rec["prev"] == prev):
//!             sys.exit(f"{path}:{n}: broken record")
//!         prev, seq = h, rec["seq"]
//! print(f"{seq} records intact")
//! ```
//!
//! [`verify`] does the same and also checks the members' types; it names the first broken record
//! by file and line.
//!
//! # Writing and durability
//!
//! [`AuditLog::append`] returns once the record is written and fsynced. One writer thread owns
//! the file; concurrent callers are group-committed: the writer takes every request waiting in its
//! queue (up to 1024), writes them in one go and fsyncs once for the batch. The assigned `seq`
//! order is the order of the lines in the file. If an append future is dropped after its request
//! was queued, the record is still written. A write error rolls the file back to the last
//! committed record and fails that batch; an fsync error (or a failed rollback) stops the log, and
//! every later append fails until the daemon is restarted. An `flock` on `<path>.lock` keeps a
//! second writer (another process, or another `AuditLog` in this one) off the same chain.
//!
//! On open, the head of the chain is taken from the last record of the live file, or of the newest
//! rotated file if the live file is empty or missing. A torn last line (a crash in the middle of
//! a write, never acknowledged to anyone) is cut off with a warning; a last record whose own hash
//! does not check out stops the open.
//!
//! # Rotation
//!
//! When the live file exceeds `max_bytes` after a record is appended, it is renamed to
//! `<path>.<seq of its last record, 20 digits>` and a new live file is started whose first record's
//! `prev` is the last `hash` of the renamed file; the directory is then fsynced. [`chain_files`]
//! lists the rotated files in order, then the live file. Files are created 0600, folders 0700.
//!
//! # Limits
//!
//! A hash chain shows any change, deletion, insertion or reordering *before* the last record, and a
//! missing rotated file. It cannot show that records were cut off the end. To cover that, ship
//! [`AuditLog::head`] (seq and hash of the last record) somewhere the host cannot rewrite, e.g. the
//! central log, and compare.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

/// `prev` of the first record ever.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The member that ends every line; what precedes it (plus `}`) is what is hashed.
const HASH_MEMBER: &[u8] = b",\"hash\":\"";
/// Digits of the seq suffix of rotated files: u64::MAX has 20.
const SEQ_DIGITS: usize = 20;
/// Requests that may wait for the writer; further appends wait for room.
const QUEUE: usize = 4096;
/// Records written with one fsync at most.
const MAX_BATCH: usize = 1024;

/// The `[audit]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Write the audit trail at all.
    pub enabled: bool,
    /// The live file; rotated files sit beside it as `<path>.<seq>`.
    pub path: PathBuf,
    /// Rotate when the live file exceeds this many bytes.
    pub max_bytes: u64,
    /// Salt for Message-ID hashes, 32 random bytes in hex; empty means `<path>.salt`. Created
    /// (0600) on first use. Keep it: without it, hashes can no longer be matched to a Message-ID.
    pub salt_file: PathBuf,
    /// The chain of reviewer decisions (written by `mailgrip review decide` and the console,
    /// which run beside the daemon); same salt, same format.
    pub review_path: PathBuf,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            enabled: true,
            path: PathBuf::from("var/audit/audit.jsonl"),
            max_bytes: 64 * 1024 * 1024,
            salt_file: PathBuf::new(),
            review_path: PathBuf::from("var/audit/review.jsonl"),
        }
    }
}

impl AuditConfig {
    /// The configuration of the reviewer chain: its own file, the same salt.
    pub fn review_chain(&self) -> AuditConfig {
        AuditConfig { path: self.review_path.clone(), salt_file: self.salt_path(), ..self.clone() }
    }

    /// The salt file in effect.
    pub fn salt_path(&self) -> PathBuf {
        if self.salt_file.as_os_str().is_empty() { with_suffix(&self.path, "salt") } else { self.salt_file.clone() }
    }
}

/// What the pipeline or a reviewer records (no message content, ever).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// `decision` or `review`.
    pub kind: String,
    /// The decision id.
    pub id: String,
    /// [`AuditLog::hash_message_id`] of the Message-ID, where the message had one.
    pub message_id_hash: Option<String>,
    pub model: Option<String>,
    pub model_version: Option<String>,
    pub model_sha256: Option<String>,
    /// All calibrated probabilities, by class. Must be finite.
    pub scores: Option<BTreeMap<String, f64>>,
    pub policy_version: Option<String>,
    pub class: String,
    pub action: String,
    /// `enforce` or `shadow`.
    pub mode: String,
    pub reason: Option<String>,
    pub reviewer: Option<String>,
    pub corrected_class: Option<String>,
}

/// A record as written, without `hash`: the serialisation that is hashed. Member order is part of
/// the format.
#[derive(Serialize)]
struct Body<'a> {
    seq: u64,
    time: &'a str,
    kind: &'a str,
    id: &'a str,
    message_id_hash: &'a Option<String>,
    model: &'a Option<String>,
    model_version: &'a Option<String>,
    model_sha256: &'a Option<String>,
    scores: &'a Option<BTreeMap<String, f64>>,
    policy_version: &'a Option<String>,
    class: &'a str,
    action: &'a str,
    mode: &'a str,
    reason: &'a Option<String>,
    reviewer: &'a Option<String>,
    corrected_class: &'a Option<String>,
    prev: &'a str,
}

/// A record as read back; only used to check structure and types.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Parsed {
    seq: u64,
    time: String,
    kind: String,
    id: String,
    message_id_hash: Option<String>,
    model: Option<String>,
    model_version: Option<String>,
    model_sha256: Option<String>,
    scores: Option<BTreeMap<String, f64>>,
    policy_version: Option<String>,
    class: String,
    action: String,
    mode: String,
    reason: Option<String>,
    reviewer: Option<String>,
    corrected_class: Option<String>,
    prev: String,
    hash: String,
}

/// The last record of the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// 0 while the chain is empty.
    pub seq: u64,
    /// [`GENESIS`] while the chain is empty.
    pub hash: String,
}

struct Request {
    entry: Entry,
    done: oneshot::Sender<io::Result<()>>,
}

/// The open audit trail. Share it behind an `Arc`. Dropping it lets the writer thread finish the
/// queued records and waits for it (a few fsyncs at most), which releases the lock.
pub struct AuditLog {
    salt: Vec<u8>,
    tx: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
    head: Arc<Mutex<Head>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").field("enabled", &self.enabled()).field("head", &self.head()).finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Open (or start) the chain at `cfg.path`, load or create the salt and start the writer.
    /// With `enabled = false` nothing is touched on disk, appends are no-ops and Message-IDs are
    /// hashed with a salt that lives only as long as the process.
    pub fn open(cfg: &AuditConfig) -> io::Result<AuditLog> {
        if !cfg.enabled {
            return Ok(AuditLog {
                salt: random_bytes::<32>()?.to_vec(),
                tx: None,
                writer: None,
                head: Arc::new(Mutex::new(Head { seq: 0, hash: GENESIS.to_string() })),
            });
        }
        if cfg.path.file_name().is_none() {
            return Err(invalid(format!("audit.path {} is not a file name", cfg.path.display())));
        }
        if cfg.max_bytes == 0 {
            return Err(invalid("audit.max_bytes must be above 0".into()));
        }
        let path = cfg.path.clone();
        let dir = parent_dir(&path);
        create_private_dir(&dir)?;

        let lock_path = with_suffix(&path, "lock");
        let lock = open_private(&lock_path, false)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!(
                        "audit trail {} is in use by another writer ({} is locked)",
                        path.display(),
                        lock_path.display()
                    ),
                ));
            }
            Err(fs::TryLockError::Error(e)) => return Err(e),
        }

        let salt = load_or_create_salt(&cfg.salt_path())?;

        let existed = path.exists();
        let live = open_private(&path, true)?;
        if !existed {
            sync_dir(&dir)?;
        }
        let (good_len, last) = read_tail(&live)?;
        let len = live.metadata()?.len();
        if good_len < len {
            tracing::warn!(path = %path.display(), cut = len - good_len,
                           "audit trail ends in a torn record that was never acknowledged; cutting it off");
            live.set_len(good_len)?;
            live.sync_all()?;
        }
        let head = match last {
            Some(line) => head_of(&path, &line)?,
            None => {
                // Live file empty: the chain continues from the newest rotated file, if any.
                let files = chain_files(&path)?;
                match files.iter().rev().find(|p| **p != path) {
                    None => Head { seq: 0, hash: GENESIS.to_string() },
                    Some(rotated) => {
                        let f = File::open(rotated)?;
                        let (good, last) = read_tail(&f)?;
                        match last {
                            Some(line) if good == f.metadata()?.len() => head_of(rotated, &line)?,
                            _ => {
                                return Err(io::Error::new(
                                    io::ErrorKind::InvalidData,
                                    format!(
                                        "rotated audit file {} is empty or ends in a torn record; \
                                         run `mailgrip audit verify`",
                                        rotated.display()
                                    ),
                                ));
                            }
                        }
                    }
                }
            }
        };

        let shared = Arc::new(Mutex::new(head.clone()));
        let (tx, rx) = mpsc::channel(QUEUE);
        let writer = Writer {
            path,
            dir,
            max_bytes: cfg.max_bytes,
            file: Some(live),
            size: good_len,
            head,
            shared: shared.clone(),
            stopped: None,
            _lock: lock,
        };
        let handle = std::thread::Builder::new().name("audit-writer".into()).spawn(move || writer.run(rx))?;
        Ok(AuditLog { salt, tx: Some(tx), writer: Some(handle), head: shared })
    }

    /// Whether records are written at all.
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// sha256(salt ‖ `message_id`), lowercase hex. The Message-ID is hashed exactly as passed.
    pub fn hash_message_id(&self, message_id: &str) -> String {
        let mut h = Sha256::new();
        h.update(&self.salt);
        h.update(message_id.as_bytes());
        hex::encode(h.finalize())
    }

    /// The last committed record (seq 0 and [`GENESIS`] for an empty chain). Publish it
    /// elsewhere now and then to make truncation of the trail detectable.
    pub fn head(&self) -> Head {
        self.head.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Append one record; returns once it is written and fsynced. Fails without writing anything
    /// for an entry with an unknown `kind` or `mode`, an empty `id` or a non-finite score.
    pub async fn append(&self, entry: Entry) -> io::Result<()> {
        let Some(tx) = &self.tx else {
            return Ok(());
        };
        check_entry(&entry)?;
        let (done, rx) = oneshot::channel();
        tx.send(Request { entry, done }).await.map_err(|_| io::Error::other("audit writer has stopped"))?;
        rx.await.map_err(|_| io::Error::other("audit writer has stopped"))?
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        // Closing the queue lets the writer finish what is queued and exit; joining releases the
        // lock before a new AuditLog on the same path may open.
        self.tx.take();
        if let Some(h) = self.writer.take() {
            let _ = h.join();
        }
    }
}

fn check_entry(e: &Entry) -> io::Result<()> {
    if !matches!(e.kind.as_str(), "decision" | "review") {
        return Err(invalid(format!("audit kind must be decision or review, not {:?}", e.kind)));
    }
    if !matches!(e.mode.as_str(), "enforce" | "shadow") {
        return Err(invalid(format!("audit mode must be enforce or shadow, not {:?}", e.mode)));
    }
    if e.id.is_empty() {
        return Err(invalid("audit entry without a decision id".into()));
    }
    if let Some((k, v)) = e.scores.iter().flatten().find(|(_, v)| !v.is_finite()) {
        return Err(invalid(format!("audit score {k} is not finite: {v}")));
    }
    Ok(())
}

/// The single owner of the live file.
struct Writer {
    path: PathBuf,
    dir: PathBuf,
    max_bytes: u64,
    /// None after a rotation whose new live file could not be created yet.
    file: Option<File>,
    /// Committed length of the live file.
    size: u64,
    /// Last committed record.
    head: Head,
    shared: Arc<Mutex<Head>>,
    /// Set after an error that leaves the file in doubt; every later append fails with it.
    stopped: Option<String>,
    _lock: File,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            self.commit(&mut batch);
        }
    }

    /// Write the batch, fsyncing once, or once per file where it crosses a rotation.
    fn commit(&mut self, batch: &mut Vec<Request>) {
        let mut buf = Vec::with_capacity(batch.len() * 512);
        let mut waiting: Vec<oneshot::Sender<io::Result<()>>> = Vec::new();
        let mut next = self.head.clone();
        for req in batch.drain(..) {
            if let Some(why) = &self.stopped {
                let _ = req.done.send(Err(io::Error::other(why.clone())));
                continue;
            }
            let (line, hash) = match encode(next.seq + 1, &now_rfc3339(), &req.entry, &next.hash) {
                Ok(x) => x,
                Err(e) => {
                    let _ = req.done.send(Err(e));
                    continue;
                }
            };
            next = Head { seq: next.seq + 1, hash };
            buf.extend_from_slice(&line);
            waiting.push(req.done);
            if self.size + buf.len() as u64 > self.max_bytes {
                let ok = self.flush(&mut buf, &next, &mut waiting);
                next = self.head.clone();
                if ok {
                    self.rotate();
                }
            }
        }
        if !buf.is_empty() {
            self.flush(&mut buf, &next, &mut waiting);
        }
    }

    /// Write and fsync `buf`, which ends with record `next`, and answer `waiting`.
    fn flush(&mut self, buf: &mut Vec<u8>, next: &Head, waiting: &mut Vec<oneshot::Sender<io::Result<()>>>) -> bool {
        let result = self.write_synced(buf);
        buf.clear();
        let ok = result.is_ok();
        match result {
            Ok(()) => {
                self.head = next.clone();
                *self.shared.lock().unwrap_or_else(|e| e.into_inner()) = next.clone();
                for w in waiting.drain(..) {
                    let _ = w.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "writing the audit trail failed");
                for w in waiting.drain(..) {
                    let _ = w.send(Err(io::Error::new(e.kind(), e.to_string())));
                }
            }
        }
        ok
    }

    fn write_synced(&mut self, buf: &[u8]) -> io::Result<()> {
        if self.file.is_none() {
            let existed = self.path.exists();
            let f = open_private(&self.path, true)?;
            if !existed {
                sync_dir(&self.dir)?;
            }
            self.size = f.metadata()?.len();
            self.file = Some(f);
        }
        let f = self.file.as_mut().expect("opened above");
        if let Err(e) = f.write_all(buf) {
            // Take back whatever part of the batch made it, so the chain stays whole.
            if let Err(e2) = f.set_len(self.size).and_then(|()| f.sync_data()) {
                self.stopped =
                    Some(format!("audit trail stopped: a write failed ({e}) and could not be rolled back ({e2})"));
            }
            return Err(e);
        }
        if let Err(e) = f.sync_data() {
            // After a failed fsync the kernel may have dropped the pages: nothing is certain.
            self.stopped = Some(format!("audit trail stopped: fsync failed ({e})"));
            return Err(e);
        }
        self.size += buf.len() as u64;
        Ok(())
    }

    /// Rename the full live file after its last record and start a new one. Failures are logged:
    /// the records are already safe, and the next batch tries again.
    fn rotate(&mut self) {
        let target = with_suffix(&self.path, &format!("{:0w$}", self.head.seq, w = SEQ_DIGITS));
        if target.exists() {
            tracing::error!(target = %target.display(), "cannot rotate the audit trail: target exists");
            return;
        }
        if let Err(e) = fs::rename(&self.path, &target) {
            tracing::error!(target = %target.display(), error = %e, "cannot rotate the audit trail");
            return;
        }
        self.file = None;
        self.size = 0;
        match OpenOptions::new().read(true).append(true).create_new(true).mode(0o600).open(&self.path) {
            Ok(f) => self.file = Some(f),
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "cannot start a new audit file")
            }
        }
        if let Err(e) = sync_dir(&self.dir) {
            tracing::error!(dir = %self.dir.display(), error = %e, "fsync of the audit folder failed");
        }
        tracing::info!(rotated = %target.display(), seq = self.head.seq, "audit trail rotated");
    }
}

/// One line (with `\n`) and its hash.
fn encode(seq: u64, time: &str, e: &Entry, prev: &str) -> io::Result<(Vec<u8>, String)> {
    let body = Body {
        seq,
        time,
        kind: &e.kind,
        id: &e.id,
        message_id_hash: &e.message_id_hash,
        model: &e.model,
        model_version: &e.model_version,
        model_sha256: &e.model_sha256,
        scores: &e.scores,
        policy_version: &e.policy_version,
        class: &e.class,
        action: &e.action,
        mode: &e.mode,
        reason: &e.reason,
        reviewer: &e.reviewer,
        corrected_class: &e.corrected_class,
        prev,
    };
    let mut line = serde_json::to_vec(&body).map_err(io::Error::other)?;
    let hash = hex::encode(Sha256::digest(&line));
    line.pop(); // the closing brace
    line.extend_from_slice(HASH_MEMBER);
    line.extend_from_slice(hash.as_bytes());
    line.extend_from_slice(b"\"}\n");
    Ok((line, hash))
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// Why a record does not check out.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Broken {
    #[error("cannot read the file: {0}")]
    Io(String),
    #[error("not a valid audit record: {0}")]
    Malformed(String),
    #[error("incomplete record: the file does not end with a newline")]
    Torn,
    #[error("content does not match its hash: the record says {stated}, its content hashes to {computed}")]
    Hash { stated: String, computed: String },
    #[error("seq {found} where {expected} was expected: records are missing, repeated or out of order")]
    Seq { expected: u64, found: u64 },
    #[error("prev {found} is not the hash of the record before, {expected}")]
    Prev { expected: String, found: String },
}

/// The first broken record of a chain. `line` counts from 1 within `file` (0 when the file
/// could not be read at all).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}:{line}: {why}", file.display())]
pub struct VerifyError {
    pub file: PathBuf,
    pub line: u64,
    pub why: Broken,
}

/// Checks one line (without its `\n`) on its own: structure, types and its own hash.
fn check_line(line: &[u8]) -> Result<Parsed, Broken> {
    let parsed: Parsed = serde_json::from_slice(line).map_err(|e| Broken::Malformed(e.to_string()))?;
    let at = line
        .windows(HASH_MEMBER.len())
        .rposition(|w| w == HASH_MEMBER)
        .ok_or_else(|| Broken::Malformed("no hash member".into()))?;
    let stated = &line[at + HASH_MEMBER.len()..];
    if stated.len() != 64 + 2 || !stated.ends_with(b"\"}") || &stated[..64] != parsed.hash.as_bytes() {
        return Err(Broken::Malformed("hash must be the last member and 64 characters long".into()));
    }
    if !is_sha256_hex(&parsed.prev) {
        return Err(Broken::Malformed("prev is not a sha256 in hex".into()));
    }
    let mut h = Sha256::new();
    h.update(&line[..at]);
    h.update(b"}");
    let computed = hex::encode(h.finalize());
    if computed != parsed.hash {
        return Err(Broken::Hash { stated: parsed.hash, computed });
    }
    Ok(parsed)
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn head_of(path: &Path, line: &[u8]) -> io::Result<Head> {
    let p = check_line(line).map_err(|why| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the last record of {} is damaged ({why}); run `mailgrip audit verify`", path.display()),
        )
    })?;
    Ok(Head { seq: p.seq, hash: p.hash })
}

/// Verify a chain made of these files in order (as [`chain_files`] lists them): every record's
/// own hash, `seq` counting up by one from 1, and each `prev` equal to the `hash` before it
/// ([`GENESIS`] for the first). Returns the number of records, or the first broken one.
pub fn verify(paths: &[PathBuf]) -> Result<u64, VerifyError> {
    let mut head = Head { seq: 0, hash: GENESIS.to_string() };
    let mut count = 0u64;
    for path in paths {
        let broken = |line: u64, why: Broken| VerifyError { file: path.clone(), line, why };
        let f = File::open(path).map_err(|e| broken(0, Broken::Io(e.to_string())))?;
        let mut r = BufReader::with_capacity(1 << 16, f);
        let mut buf = Vec::with_capacity(1024);
        let mut n = 0u64;
        loop {
            buf.clear();
            let got = r.read_until(b'\n', &mut buf).map_err(|e| broken(n + 1, Broken::Io(e.to_string())))?;
            if got == 0 {
                break;
            }
            n += 1;
            if buf.pop() != Some(b'\n') {
                return Err(broken(n, Broken::Torn));
            }
            let rec = check_line(&buf).map_err(|why| broken(n, why))?;
            if rec.seq != head.seq + 1 {
                return Err(broken(n, Broken::Seq { expected: head.seq + 1, found: rec.seq }));
            }
            if rec.prev != head.hash {
                return Err(broken(n, Broken::Prev { expected: head.hash, found: rec.prev }));
            }
            head = Head { seq: rec.seq, hash: rec.hash };
            count += 1;
        }
    }
    Ok(count)
}

/// The live file plus its rotated siblings in chain order: `<live>.<digits>` by number, then
/// `live` itself if it exists. Errors if the folder cannot be read.
pub fn chain_files(live: &Path) -> io::Result<Vec<PathBuf>> {
    let name = live.file_name().ok_or_else(|| invalid(format!("{} is not a file name", live.display())))?.as_bytes();
    let mut rotated: Vec<(u64, PathBuf)> = Vec::new();
    for entry in fs::read_dir(parent_dir(live))? {
        let entry = entry?;
        let file_name = entry.file_name();
        let b = file_name.as_bytes();
        let Some(rest) = b.strip_prefix(name).and_then(|r| r.strip_prefix(b".")) else {
            continue;
        };
        if rest.is_empty() || !rest.iter().all(u8::is_ascii_digit) {
            continue;
        }
        let Some(seq) = std::str::from_utf8(rest).ok().and_then(|s| s.parse().ok()) else {
            continue;
        };
        rotated.push((seq, live.with_file_name(&file_name)));
    }
    rotated.sort();
    let mut files: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    if live.is_file() {
        files.push(live.to_path_buf());
    }
    Ok(files)
}

/// The end of the last complete line (just past its `\n`) and that line without its `\n`.
/// `(0, None)` when the file holds no complete line.
fn read_tail(f: &File) -> io::Result<(u64, Option<Vec<u8>>)> {
    let len = f.metadata()?.len();
    let mut buf = vec![0u8; 64 * 1024];
    let mut end: Option<u64> = None;
    let mut start = 0u64;
    let mut pos = len;
    'scan: while pos > 0 {
        let from = pos.saturating_sub(buf.len() as u64);
        let block = &mut buf[..(pos - from) as usize];
        f.read_exact_at(block, from)?;
        for i in (0..block.len()).rev() {
            if block[i] == b'\n' {
                let at = from + i as u64;
                if end.is_none() {
                    end = Some(at + 1);
                } else {
                    start = at + 1;
                    break 'scan;
                }
            }
        }
        pos = from;
    }
    let Some(end) = end else {
        return Ok((0, None));
    };
    let mut line = vec![0u8; (end - 1 - start) as usize];
    f.read_exact_at(&mut line, start)?;
    Ok((end, Some(line)))
}

fn load_or_create_salt(path: &Path) -> io::Result<Vec<u8>> {
    match read_salt(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        other => return other,
    }
    let dir = parent_dir(path);
    create_private_dir(&dir)?;
    let salt = random_bytes::<32>()?;
    let tmp = with_suffix(path, &format!("tmp{}", std::process::id()));
    {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(format!("{}\n", hex::encode(salt)).as_bytes())?;
        f.sync_all()?;
    }
    // A hard link never replaces an existing salt, should another process have been quicker.
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            sync_dir(&dir)?;
            tracing::info!(path = %path.display(), "created the audit salt");
            Ok(salt.to_vec())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => read_salt(path),
        Err(e) => Err(e),
    }
}

fn read_salt(path: &Path) -> io::Result<Vec<u8>> {
    let text = fs::read_to_string(path)?;
    if fs::metadata(path)?.permissions().mode() & 0o077 != 0 {
        tracing::warn!(path = %path.display(), "the audit salt is readable by others; it should be 0600");
    }
    match hex::decode(text.trim()) {
        Ok(salt) if salt.len() >= 16 => Ok(salt),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("audit salt {} must hold at least 16 bytes in hex", path.display()),
        )),
    }
}

fn random_bytes<const N: usize>() -> io::Result<[u8; N]> {
    let mut b = [0u8; N];
    File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b)
}

/// Open for reading and appending (or plain writing), creating it 0600 if missing.
fn open_private(path: &Path, append: bool) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.read(true).create(true).mode(0o600);
    if append {
        o.append(true);
    } else {
        o.write(true).truncate(false);
    }
    o.open(path)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".");
    s.push(suffix);
    PathBuf::from(s)
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_line_checks_and_hash_is_of_body() {
        let e = Entry {
            kind: "decision".into(),
            id: "d1".into(),
            class: "prive".into(),
            action: "none".into(),
            mode: "shadow".into(),
            reason: Some("quote \" and ,\"hash\":\" inside".into()),
            scores: Some([("prive".to_string(), 0.1 + 0.2)].into()),
            ..Entry::default()
        };
        let (line, hash) = encode(7, "2026-01-01T00:00:00Z", &e, GENESIS).unwrap();
        let text = std::str::from_utf8(&line).unwrap();
        assert!(text.starts_with("{\"seq\":7,\"time\":"));
        assert!(text.ends_with(&format!(",\"hash\":\"{hash}\"}}\n")));
        let body = format!("{}}}", &text[..text.len() - 76]);
        assert_eq!(hex::encode(Sha256::digest(body.as_bytes())), hash);
        let p = check_line(&line[..line.len() - 1]).unwrap();
        assert_eq!((p.seq, p.hash), (7, hash));
    }

    #[test]
    fn read_tail_finds_last_complete_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        for (content, want) in [
            (&b""[..], (0, None)),
            (b"abc", (0, None)),
            (b"abc\n", (4, Some(&b"abc"[..]))),
            (b"a\nbc\nde", (5, Some(&b"bc"[..]))),
            (b"\n", (1, Some(&b""[..]))),
        ] {
            fs::write(&p, content).unwrap();
            let (end, line) = read_tail(&File::open(&p).unwrap()).unwrap();
            assert_eq!((end, line.as_deref()), want, "{content:?}");
        }
        let mut big = vec![b'x'; 200_000];
        big.push(b'\n');
        big.extend(vec![b'y'; 150_000]);
        big.extend(b"\nzz");
        fs::write(&p, &big).unwrap();
        let (end, line) = read_tail(&File::open(&p).unwrap()).unwrap();
        assert_eq!(end, 350_002);
        assert_eq!(line.unwrap(), vec![b'y'; 150_000]);
    }
}
