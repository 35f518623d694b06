//! Archive: durable copies of tagged mail, with a JSON sidecar, laid out by date.
//!
//! `archive.dir/YYYY/MM/DD/<decision id>.eml` holds the exact tagged message and
//! `<decision id>.json` the decision. A copy is first *staged* (written and fsynced under
//! `archive.dir/.tmp/`), the message is relayed, and only then *committed* by atomic rename and a
//! directory fsync. If the relay fails, the staged copy is discarded and the MTA retries, so the
//! archive never holds a message that was not delivered.
//!
//! With `[archive.smtp]` enabled, a store also stages an entry in the SMTP outbox ([`outbox`])
//! with each copy whose action is sent; the same commit makes both visible, the same discard
//! drops both.

pub mod outbox;

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::envelope::Envelope;
use outbox::Outbox;

/// The JSON sidecar of an archive copy.
#[derive(Debug, Serialize)]
pub struct Sidecar<'a> {
    pub id: &'a str,
    pub class: &'a str,
    pub action: &'a str,
    pub reason: &'a str,
    pub scores: serde_json::Map<String, serde_json::Value>,
    pub model: &'a str,
    pub model_version: &'a str,
    pub model_sha256: &'a str,
    /// RFC 3339, UTC.
    pub time: String,
    pub envelope: &'a Envelope,
    pub message_id: Option<&'a str>,
    /// sha256 of the `.eml` file.
    pub sha256: String,
    pub size: usize,
}

pub struct Archive {
    dir: PathBuf,
    /// `YYYY/MM/DD/` sub-folders (archive stores) or one flat folder (the review queue).
    dated: bool,
    /// The SMTP archive sink's outbox, when copies of this store go to an archiver too.
    outbox: Option<Arc<Outbox>>,
}

/// A copy written and fsynced, not yet visible.
#[must_use = "a staged copy must be committed or discarded"]
pub struct Staged {
    files: Vec<(PathBuf, PathBuf)>,
    dest_dir: PathBuf,
    /// The staged outbox entry folder, where it goes, and its outbox.
    outbox: Option<(PathBuf, PathBuf, Arc<Outbox>)>,
}

impl Archive {
    /// An archive store laid out by date.
    pub fn new(dir: &Path) -> Archive {
        Archive { dir: dir.to_path_buf(), dated: true, outbox: None }
    }

    /// Also stage an SMTP outbox entry with every copy whose action the outbox sends.
    pub fn with_outbox(mut self, outbox: Option<Arc<Outbox>>) -> Archive {
        self.outbox = outbox;
        self
    }

    /// A flat store (the review queue): `dir/<id>.eml` + `dir/<id>.json`.
    pub fn flat(dir: &Path) -> Archive {
        Archive { dir: dir.to_path_buf(), dated: false, outbox: None }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where a copy made at `date` goes.
    pub fn dest_dir(&self, date: time::OffsetDateTime) -> PathBuf {
        if self.dated {
            self.dir.join(format!("{:04}/{:02}/{:02}", date.year(), date.month() as u8, date.day()))
        } else {
            self.dir.clone()
        }
    }

    /// Write the copy and its sidecar to the staging area, fsynced.
    pub fn stage(
        &self,
        id: &str,
        date: time::OffsetDateTime,
        tagged: &[u8],
        sidecar: &mut Sidecar<'_>,
        extras: &dyn Fn(&str, usize) -> Vec<(String, Vec<u8>)>,
    ) -> io::Result<Staged> {
        sidecar.sha256 = hex::encode(Sha256::digest(tagged));
        sidecar.size = tagged.len();
        let extra = extras(&sidecar.sha256, tagged.len());
        let json = serde_json::to_vec_pretty(&sidecar).map_err(io::Error::other)?;
        let tmp = self.dir.join(".tmp");
        create_private_dir(&tmp)?;
        let dest_dir = self.dest_dir(date);
        // The sidecars are renamed first, so whoever sees an .eml also finds its metadata.
        let mut all: Vec<(String, &[u8])> = vec![(format!("{id}.json"), &json[..])];
        all.extend(extra.iter().map(|(name, bytes)| (name.clone(), &bytes[..])));
        all.push((format!("{id}.eml"), tagged));
        let mut staged = Staged { files: Vec::new(), dest_dir, outbox: None };
        for (name, bytes) in all {
            let path = tmp.join(&name);
            if let Err(e) = write_synced(&path, bytes) {
                let _ = fs::remove_file(&path);
                staged.discard();
                return Err(e);
            }
            staged.files.push((path, staged.dest_dir.join(name)));
        }
        if let Some(outbox) = self.outbox.as_ref().filter(|o| o.wants(sidecar.action)) {
            match outbox.stage(id, sidecar.action, sidecar.envelope, tagged) {
                Ok((from, to)) => staged.outbox = Some((from, to, outbox.clone())),
                Err(e) => {
                    let _ = fs::remove_dir_all(outbox.dir().join(".tmp").join(id));
                    staged.discard();
                    return Err(io::Error::new(e.kind(), format!("archive outbox {}: {e}", outbox.dir().display())));
                }
            }
        }
        Ok(staged)
    }

    /// For copies that reach this store outside [`Archive::stage`] (a reviewer's decision): put
    /// the already archived copy into the SMTP outbox too, when its action is sent. Returns
    /// whether an entry was made.
    pub fn enqueue_outbox(&self, id: &str, action: &str, env: &Envelope, tagged: &[u8]) -> io::Result<bool> {
        let Some(outbox) = self.outbox.as_ref().filter(|o| o.wants(action)) else { return Ok(false) };
        let (from, to) = outbox.stage(id, action, env, tagged)?;
        if let Err(e) = outbox.commit(&from, &to) {
            let _ = fs::remove_dir_all(&from);
            return Err(e);
        }
        Ok(true)
    }
}

impl Staged {
    /// Make the copy visible: atomic renames, then fsync of the directory; then its outbox entry
    /// (one folder rename and an fsync). The archive copy goes first: it is the record, the
    /// archiver's copy follows from it. If the process dies in between, the MTA has not had its
    /// 250 yet (SMTP relay path) and delivers the mail again, to archive and outbox both.
    pub fn commit(self) -> io::Result<PathBuf> {
        create_private_dir(&self.dest_dir)?;
        for (from, to) in &self.files {
            fs::rename(from, to)?;
        }
        sync_dir(&self.dest_dir)?;
        if let Some((from, to, outbox)) = &self.outbox {
            outbox
                .commit(from, to)
                .map_err(|e| io::Error::new(e.kind(), format!("archive outbox {}: {e}", outbox.dir().display())))?;
        }
        Ok(self.files.last().map(|(_, to)| to.clone()).unwrap_or_default())
    }

    pub fn discard(self) {
        for (from, _) in &self.files {
            let _ = fs::remove_file(from);
        }
        if let Some((from, _, _)) = &self.outbox {
            let _ = fs::remove_dir_all(from);
        }
    }
}

/// Write `bytes` to `dir/name` so that it is either absent or complete and on disk:
/// temp file, fsync, rename, fsync of the directory.
pub fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<PathBuf> {
    create_private_dir(dir)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    write_synced(&tmp, bytes)?;
    let dest = dir.join(name);
    fs::rename(&tmp, &dest)?;
    sync_dir(dir)?;
    Ok(dest)
}

/// Mail copies are readable by the service user only: files 0600, folders 0700.
pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The MDTO sidecars of an archived copy: `<id>.mdto.xml` (informatieobject) and
/// `<id>.eml.mdto.xml` (bestand), for [`Archive::stage`]'s `extras`.
pub fn mdto_files(cfg: &crate::mdto::MdtoConfig, record: &crate::mdto::Record<'_>) -> Vec<(String, Vec<u8>)> {
    if !cfg.enabled {
        return Vec::new();
    }
    vec![
        (format!("{}.mdto.xml", record.id), crate::mdto::informatieobject(cfg, record).into_bytes()),
        (format!("{}.eml.mdto.xml", record.id), crate::mdto::bestand(cfg, record).into_bytes()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_then_commit_or_discard() {
        let tmp = tempfile::tempdir().unwrap();
        let archive = Archive::new(tmp.path());
        let env = Envelope::default();
        let date = time::macros::datetime!(2026-11-23 10:00 UTC);
        let mut sc = Sidecar {
            id: "id1",
            class: "functioneel",
            action: "archive",
            reason: "r",
            scores: Default::default(),
            model: "m",
            model_version: "1",
            model_sha256: "x",
            time: "t".into(),
            envelope: &env,
            message_id: None,
            sha256: String::new(),
            size: 0,
        };
        let staged = archive.stage("id1", date, b"mail", &mut sc, &|_, _| vec![]).unwrap();
        assert!(!tmp.path().join("2026/11/23/id1.eml").exists(), "not visible before commit");
        let path = staged.commit().unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"mail");
        let json: serde_json::Value =
            serde_json::from_slice(&fs::read(tmp.path().join("2026/11/23/id1.json")).unwrap()).unwrap();
        assert_eq!(json["sha256"], hex::encode(Sha256::digest(b"mail")));
        let staged =
            archive.stage("id2", date, b"mail", &mut sc, &|_, _| vec![("id2.x".into(), b"x".to_vec())]).unwrap();
        staged.discard();
        assert!(!tmp.path().join("2026/11/23/id2.eml").exists());
        assert_eq!(fs::read_dir(tmp.path().join(".tmp")).unwrap().count(), 0);
    }
}
