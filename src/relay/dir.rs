//! Relay into a local folder: `<id>.eml` (the tagged message) and `<id>.envelope.json`, each
//! written durably (fsync, atomic rename). The embedded default, so a newcomer sees the whole
//! flow with nothing else installed.

use std::path::{Path, PathBuf};

use super::{RelayError, Reply};
use crate::archive::write_durably;
use crate::envelope::Envelope;

pub struct DirRelay {
    dir: PathBuf,
}

impl DirRelay {
    pub fn new(dir: &Path) -> DirRelay {
        DirRelay { dir: dir.to_path_buf() }
    }

    pub async fn send(&self, id: &str, env: &Envelope, message: &[u8]) -> Result<Reply, RelayError> {
        let dir = self.dir.clone();
        let id = id.to_string();
        let envelope = serde_json::to_vec_pretty(env).map_err(|e| RelayError::Io(e.to_string()))?;
        let message = message.to_vec();
        tokio::task::spawn_blocking(move || -> std::io::Result<PathBuf> {
            // Envelope first: a reader that sees the .eml also finds its envelope.
            write_durably(&dir, &format!("{id}.envelope.json"), &envelope)?;
            write_durably(&dir, &format!("{id}.eml"), &message)
        })
        .await
        .map_err(|e| RelayError::Io(e.to_string()))?
        .map(|path| Reply { code: 250, text: format!("2.0.0 written to {}", path.display()) })
        .map_err(|e| RelayError::Io(format!("{}: {e}", self.dir.display())))
    }

    pub async fn probe(&self) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        let meta = std::fs::metadata(&self.dir).map_err(|e| e.to_string())?;
        if meta.permissions().readonly() {
            return Err(format!("{} is read-only", self.dir.display()));
        }
        Ok(())
    }
}
