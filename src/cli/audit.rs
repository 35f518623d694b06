//! `mailgrip audit verify PATH...`: check a hash chain, across rotated files.

use std::path::PathBuf;

use crate::audit;

/// Exit status 0 when intact; otherwise the first broken record is named and the status is 1.
pub fn verify(paths: &[PathBuf]) -> anyhow::Result<bool> {
    // One live file given: include its rotated predecessors, in chain order.
    let files = if paths.len() == 1 { audit::chain_files(&paths[0])? } else { paths.to_vec() };
    if files.is_empty() {
        anyhow::bail!("no audit files at {}", paths[0].display());
    }
    match audit::verify(&files) {
        Ok(n) => {
            println!("ok: {n} records intact in {} file(s)", files.len());
            Ok(true)
        }
        Err(e) => {
            println!("BROKEN: {e}");
            Ok(false)
        }
    }
}
