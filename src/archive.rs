//! Archive: durable copies of tagged mail, with a JSON sidecar, laid out by date.
//!
//! `archive.dir/YYYY/MM/DD/<decision id>.eml` holds the exact tagged message and
//! `<decision id>.json` the decision. A copy is first *staged* (written and fsynced under
//! `archive.dir/.tmp/`), the message is relayed, and only then *committed* by atomic rename and a
//! directory fsync. If the relay fails, the staged copy is discarded and the MTA retries, so the
//! archive never holds a message that was not delivered.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::envelope::Envelope;

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
}

/// A copy written and fsynced, not yet visible.
#[must_use = "a staged copy must be committed or discarded"]
pub struct Staged {
    files: Vec<(PathBuf, PathBuf)>,
    dest_dir: PathBuf,
}

impl Archive {
    /// An archive store laid out by date.
    pub fn new(dir: &Path) -> Archive {
        Archive { dir: dir.to_path_buf(), dated: true }
    }

    /// A flat store (the review queue): `dir/<id>.eml` + `dir/<id>.json`.
    pub fn flat(dir: &Path) -> Archive {
        Archive { dir: dir.to_path_buf(), dated: false }
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
        let mut files = Vec::new();
        // The sidecars are renamed first, so whoever sees an .eml also finds its metadata.
        let mut all: Vec<(String, &[u8])> = vec![(format!("{id}.json"), &json[..])];
        all.extend(extra.iter().map(|(name, bytes)| (name.clone(), &bytes[..])));
        all.push((format!("{id}.eml"), tagged));
        for (name, bytes) in all {
            let staged = tmp.join(&name);
            write_synced(&staged, bytes)?;
            files.push((staged, dest_dir.join(name)));
        }
        Ok(Staged { files, dest_dir })
    }
}

impl Staged {
    /// Make the copy visible: atomic renames, then fsync of the directory.
    pub fn commit(self) -> io::Result<PathBuf> {
        create_private_dir(&self.dest_dir)?;
        for (from, to) in &self.files {
            fs::rename(from, to)?;
        }
        sync_dir(&self.dest_dir)?;
        Ok(self.files.last().map(|(_, to)| to.clone()).unwrap_or_default())
    }

    pub fn discard(self) {
        for (from, _) in &self.files {
            let _ = fs::remove_file(from);
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
fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
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
