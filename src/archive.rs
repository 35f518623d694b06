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
}

/// A copy written and fsynced, not yet visible.
#[must_use = "a staged copy must be committed or discarded"]
pub struct Staged {
    files: Vec<(PathBuf, PathBuf)>,
    dest_dir: PathBuf,
}

impl Archive {
    pub fn new(dir: &Path) -> Archive {
        Archive {
            dir: dir.to_path_buf(),
        }
    }

    /// Write the copy and its sidecar to the staging area, fsynced.
    pub fn stage(
        &self,
        id: &str,
        date: time::OffsetDateTime,
        tagged: &[u8],
        sidecar: &mut Sidecar<'_>,
    ) -> io::Result<Staged> {
        sidecar.sha256 = hex::encode(Sha256::digest(tagged));
        sidecar.size = tagged.len();
        let json = serde_json::to_vec_pretty(&sidecar).map_err(io::Error::other)?;
        let tmp = self.dir.join(".tmp");
        fs::create_dir_all(&tmp)?;
        let dest_dir = self.dir.join(format!(
            "{:04}/{:02}/{:02}",
            date.year(),
            date.month() as u8,
            date.day()
        ));
        let mut files = Vec::new();
        // The sidecar is renamed first, so whoever sees an .eml also finds its .json.
        for (ext, bytes) in [("json", &json[..]), ("eml", tagged)] {
            let staged = tmp.join(format!("{id}.{ext}"));
            write_synced(&staged, bytes)?;
            files.push((staged, dest_dir.join(format!("{id}.{ext}"))));
        }
        Ok(Staged { files, dest_dir })
    }
}

impl Staged {
    /// Make the copy visible: atomic renames, then fsync of the directory.
    pub fn commit(self) -> io::Result<PathBuf> {
        fs::create_dir_all(&self.dest_dir)?;
        for (from, to) in &self.files {
            fs::rename(from, to)?;
        }
        sync_dir(&self.dest_dir)?;
        Ok(self
            .files
            .last()
            .map(|(_, to)| to.clone())
            .unwrap_or_default())
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
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    write_synced(&tmp, bytes)?;
    let dest = dir.join(name);
    fs::rename(&tmp, &dest)?;
    sync_dir(dir)?;
    Ok(dest)
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
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
        let staged = archive.stage("id1", date, b"mail", &mut sc).unwrap();
        assert!(
            !tmp.path().join("2026/11/23/id1.eml").exists(),
            "not visible before commit"
        );
        let path = staged.commit().unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"mail");
        let json: serde_json::Value =
            serde_json::from_slice(&fs::read(tmp.path().join("2026/11/23/id1.json")).unwrap())
                .unwrap();
        assert_eq!(json["sha256"], hex::encode(Sha256::digest(b"mail")));
        let staged = archive.stage("id2", date, b"mail", &mut sc).unwrap();
        staged.discard();
        assert!(!tmp.path().join("2026/11/23/id2.eml").exists());
        assert_eq!(fs::read_dir(tmp.path().join(".tmp")).unwrap().count(), 0);
    }
}
