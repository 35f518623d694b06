//! The audit trail: concurrent appends, tamper detection, rotation, reopening.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mailgrip::audit::{AuditConfig, AuditLog, Broken, Entry, GENESIS, VerifyError, chain_files, verify};

fn cfg(dir: &Path, max_bytes: u64) -> AuditConfig {
    AuditConfig { path: dir.join("audit/audit.jsonl"), max_bytes, ..AuditConfig::default() }
}

fn entry(id: &str) -> Entry {
    let scores: BTreeMap<String, f64> = [
        ("functioneel", 0.712_345_678_9),
        ("prive", 0.1 + 0.2),
        ("niet-functioneel", 1e-7),
        ("personeelsvertrouwelijk", 0.0),
        ("partijpolitiek", 0.087_654_321),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    Entry {
        kind: "decision".into(),
        id: id.into(),
        message_id_hash: Some("ab".repeat(32)),
        model: Some("baseline".into()),
        model_version: Some("2026.1".into()),
        model_sha256: Some("cd".repeat(32)),
        scores: Some(scores),
        policy_version: Some("p1".into()),
        class: "functioneel".into(),
        action: "archive".into(),
        mode: "enforce".into(),
        reason: Some("min expected cost, \"quoted\"\nnewline, ünïcode".into()),
        reviewer: None,
        corrected_class: None,
    }
}

fn review(id: &str) -> Entry {
    Entry {
        kind: "review".into(),
        id: id.into(),
        class: "prive".into(),
        action: "none".into(),
        mode: "enforce".into(),
        reviewer: Some("archivaris1".into()),
        corrected_class: Some("prive".into()),
        ..Entry::default()
    }
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn all_records(live: &Path) -> Vec<serde_json::Value> {
    chain_files(live).unwrap().iter().flat_map(|p| lines(p)).collect()
}

async fn append_n(log: &AuditLog, from: usize, n: usize) {
    for i in from..from + n {
        let e = if i % 5 == 4 { review(&format!("r{i}")) } else { entry(&format!("d{i}")) };
        log.append(e).await.unwrap();
    }
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_form_one_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(tmp.path(), 64 << 20);
    let log = Arc::new(AuditLog::open(&c).unwrap());
    const TASKS: usize = 48;
    const EACH: usize = 40;
    let started = std::time::Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let log = log.clone();
        set.spawn(async move {
            for i in 0..EACH {
                log.append(entry(&format!("t{t}-{i}"))).await.unwrap();
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    let elapsed = started.elapsed();
    let n = (TASKS * EACH) as u64;
    eprintln!("{n} concurrent appends in {elapsed:?}");
    assert_eq!(log.head().seq, n);

    let files = chain_files(&c.path).unwrap();
    assert_eq!(files, vec![c.path.clone()]);
    assert_eq!(verify(&files), Ok(n));

    let recs = lines(&c.path);
    assert_eq!(recs.len() as u64, n);
    let mut prev = GENESIS.to_string();
    let mut next_of_task = vec![0usize; TASKS];
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r["seq"], i as u64 + 1, "seq in file order");
        assert_eq!(r["prev"], prev.as_str());
        prev = r["hash"].as_str().unwrap().to_string();
        // Each task appended in order, so its records appear in order.
        let (t, k) = r["id"].as_str().unwrap()[1..].split_once('-').unwrap();
        let (t, k): (usize, usize) = (t.parse().unwrap(), k.parse().unwrap());
        assert_eq!(k, next_of_task[t]);
        next_of_task[t] += 1;
        assert!(r["time"].as_str().unwrap().ends_with('Z'));
    }
    assert_eq!(log.head().hash, prev);
    assert!(next_of_task.iter().all(|&k| k == EACH));

    // Scores come back exactly; the record holds no message content.
    assert_eq!(recs[0]["scores"]["prive"], 0.1 + 0.2);
    assert_eq!(recs[0]["scores"]["niet-functioneel"], 1e-7);

    // Private files; a salt of 32 random bytes in hex that keys the Message-ID hash.
    assert_eq!(mode(&c.path), 0o600);
    assert_eq!(mode(c.path.parent().unwrap()), 0o700);
    let salt_path = c.salt_path();
    assert_eq!(salt_path, tmp.path().join("audit/audit.jsonl.salt"));
    assert_eq!(mode(&salt_path), 0o600);
    let salt = fs::read_to_string(&salt_path).unwrap();
    assert_eq!(salt.trim().len(), 64);
    let h = log.hash_message_id("<abc@example.nl>");
    let mut salted = hex::decode(salt.trim()).unwrap();
    salted.extend_from_slice(b"<abc@example.nl>");
    use sha2::Digest;
    assert_eq!(h, hex::encode(sha2::Sha256::digest(&salted)));
    assert_ne!(h, hex::encode(sha2::Sha256::digest(b"<abc@example.nl>")));
}

/// Overwrite byte `pos` of `files[file]` with `to` in place, verify, restore.
fn verify_altered(files: &[PathBuf], file: usize, pos: usize, to: u8) -> Result<u64, VerifyError> {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new().read(true).write(true).open(&files[file]).unwrap();
    let mut orig = [0u8];
    f.read_exact_at(&mut orig, pos as u64).unwrap();
    assert_ne!(orig[0], to);
    f.write_all_at(&[to], pos as u64).unwrap();
    let r = verify(files);
    f.write_all_at(&orig, pos as u64).unwrap();
    r
}

fn line_of(bytes: &[u8], pos: usize) -> u64 {
    bytes[..pos].iter().filter(|&&b| b == b'\n').count() as u64 + 1
}

#[tokio::test]
async fn every_altered_byte_is_detected_at_its_record() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(tmp.path(), 64 << 20);
    let log = AuditLog::open(&c).unwrap();
    append_n(&log, 0, 6).await;
    let files = chain_files(&c.path).unwrap();
    assert_eq!(verify(&files), Ok(6));
    let bytes = fs::read(&c.path).unwrap();
    let mut tried = 0;
    for pos in 0..bytes.len() {
        let b = bytes[pos];
        let mut alts = vec![b ^ 0x01];
        if b.is_ascii_digit() {
            alts.push(b'0' + (b - b'0' + 5) % 10);
        } else if b.is_ascii_lowercase() {
            alts.push(b'a' + (b - b'a' + 3) % 26);
        }
        for to in alts {
            let err = verify_altered(&files, 0, pos, to)
                .expect_err(&format!("byte {pos} ({:?} -> {:?}) went unnoticed", b as char, to as char));
            assert_eq!(err.file, c.path);
            assert_eq!(err.line, line_of(&bytes, pos), "byte {pos}: {err}");
            tried += 1;
        }
    }
    eprintln!("{tried} single-byte alterations all detected");
}

/// Byte offset of the `nth` occurrence of `needle` in `hay`, plus `skip`.
fn find(hay: &[u8], needle: &str, nth: usize, skip: usize) -> usize {
    let n = needle.as_bytes();
    hay.windows(n.len()).enumerate().filter(|(_, w)| *w == n).nth(nth).unwrap().0 + skip
}

#[tokio::test]
async fn rotation_keeps_the_chain_and_alterations_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    // Each decision record is ~700 bytes: a file rotates after its third record.
    let c = cfg(tmp.path(), 1800);
    let log = AuditLog::open(&c).unwrap();
    append_n(&log, 0, 20).await;
    let files = chain_files(&c.path).unwrap();
    assert!(files.len() >= 4, "{files:?}");
    assert_eq!(files.last(), Some(&c.path));
    assert_eq!(verify(&files), Ok(20));

    // Names carry the seq of their last record; each file ends with the record that took it
    // past max_bytes; each first record chains to the previous file's last hash.
    let mut prev = GENESIS.to_string();
    for f in &files {
        let recs = lines(f);
        if recs.is_empty() {
            continue;
        }
        assert_eq!(recs[0]["prev"], prev.as_str(), "{f:?}");
        prev = recs.last().unwrap()["hash"].as_str().unwrap().to_string();
        assert_eq!(mode(f), 0o600);
        if *f != c.path {
            let last_seq = recs.last().unwrap()["seq"].as_u64().unwrap();
            assert_eq!(f.file_name().unwrap().to_str().unwrap(), format!("audit.jsonl.{last_seq:020}"));
            let text = fs::read_to_string(f).unwrap();
            let without_last = text.trim_end().rsplit_once('\n').map_or(0, |(a, _)| a.len() + 1);
            assert!(text.len() as u64 > c.max_bytes && without_last as u64 <= c.max_bytes);
        }
    }
    let seqs: Vec<u64> = all_records(&c.path).iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());

    // Targeted alterations, each named at its file and line.
    let second = fs::read(&files[1]).unwrap();
    let first = fs::read(&files[0]).unwrap();
    let cases = [
        // inside prev of the first record of the second file
        (1, find(&second, "\"prev\":\"", 0, 20), 1),
        // inside hash of the second record of the first file
        (0, find(&first, "\"hash\":\"", 1, 30), 2),
        // last hex digit of the hash of the first record of the second file
        (1, find(&second, "\"}\n", 0, 0) - 1, 1),
        // inside a score of the third record of the first file
        (0, find(&first, "\"prive\":0.3000", 2, 12), 3),
        // a digit of the seq of the second record of the second file
        (1, find(&second, "\"seq\":", 1, 6), 2),
    ];
    for (file, pos, line) in cases {
        let bytes = fs::read(&files[file]).unwrap();
        let to = if bytes[pos] == b'1' { b'2' } else { b'1' };
        let err = verify_altered(&files, file, pos, to).unwrap_err();
        assert_eq!((&err.file, err.line), (&files[file], line), "{err}");
        assert!(matches!(err.why, Broken::Hash { .. }), "{err}");
    }
    assert_eq!(verify(&files), Ok(20), "restored");

    // A missing middle file: named at the first record of the file after it.
    let mut without = files.clone();
    without.remove(1);
    let err = verify(&without).unwrap_err();
    assert_eq!((&err.file, err.line), (&files[2], 1), "{err}");
    assert!(matches!(err.why, Broken::Seq { .. }), "{err}");
    // So is a missing first file.
    let err = verify(&files[1..]).unwrap_err();
    assert_eq!((&err.file, err.line), (&files[1], 1), "{err}");
    // And files out of order.
    let mut swapped = files.clone();
    swapped.swap(1, 2);
    assert_eq!(verify(&swapped).unwrap_err().file, files[2]);

    // Deleting it on disk shows the same through chain_files.
    fs::remove_file(&files[1]).unwrap();
    let err = verify(&chain_files(&c.path).unwrap()).unwrap_err();
    assert_eq!((&err.file, err.line), (&files[2], 1), "{err}");
}

#[tokio::test]
async fn deleted_repeated_or_swapped_lines_are_detected() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(tmp.path(), 64 << 20);
    let log = AuditLog::open(&c).unwrap();
    append_n(&log, 0, 8).await;
    drop(log);
    let orig = fs::read_to_string(&c.path).unwrap();
    let ls: Vec<&str> = orig.split_inclusive('\n').collect();
    let files = vec![c.path.clone()];
    let check = |content: String, line: u64| {
        fs::write(&c.path, content).unwrap();
        let err = verify(&files).unwrap_err();
        assert_eq!((&err.file, err.line), (&c.path, line), "{err}");
        err
    };
    // Deleted line 4: line 4 now holds seq 5.
    let mut v = ls.clone();
    v.remove(3);
    let err = check(v.concat(), 4);
    assert_eq!(err.why, Broken::Seq { expected: 4, found: 5 });
    // Deleted first line.
    check(ls[1..].concat(), 1);
    // Repeated line 3.
    let mut v = ls.clone();
    v.insert(3, ls[2]);
    check(v.concat(), 4);
    // Swapped lines 5 and 6.
    let mut v = ls.clone();
    v.swap(4, 5);
    check(v.concat(), 5);
    // A record renumbered to paper over a deletion breaks its hash.
    let mut v: Vec<String> = ls.iter().map(|s| s.to_string()).collect();
    v.remove(3);
    v[3] = v[3].replacen("\"seq\":5,", "\"seq\":4,", 1);
    let err = check(v.concat(), 4);
    assert!(matches!(err.why, Broken::Hash { .. }), "{err}");
    // A torn last line.
    check(orig[..orig.len() - 10].to_string(), 8);
    fs::write(&c.path, &orig).unwrap();
    assert_eq!(verify(&files), Ok(8));
}

#[tokio::test]
async fn reopening_continues_the_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(tmp.path(), 64 << 20);
    let log = AuditLog::open(&c).unwrap();
    let mid = log.hash_message_id("<m@x.nl>");
    append_n(&log, 0, 5).await;
    let head = log.head();
    assert_eq!(head.seq, 5);
    drop(log);

    let log = AuditLog::open(&c).unwrap();
    assert_eq!(log.head(), head);
    assert_eq!(log.hash_message_id("<m@x.nl>"), mid, "salt persisted");
    append_n(&log, 5, 5).await;
    drop(log);
    let files = chain_files(&c.path).unwrap();
    assert_eq!(verify(&files), Ok(10));
    let recs = lines(&c.path);
    assert_eq!(recs[5]["prev"], head.hash.as_str());

    // A crash in the middle of a write leaves a torn line; reopening cuts it off.
    let mut f = fs::OpenOptions::new().append(true).open(&c.path).unwrap();
    use std::io::Write;
    f.write_all(b"{\"seq\":11,\"time\":\"2026").unwrap();
    drop(f);
    assert_eq!(verify(&files).unwrap_err().why, Broken::Torn);
    let log = AuditLog::open(&c).unwrap();
    assert_eq!(log.head().seq, 10);
    append_n(&log, 10, 2).await;
    drop(log);
    assert_eq!(verify(&files), Ok(12));

    // A damaged last record stops the open.
    let good = fs::read(&c.path).unwrap();
    let mut bad = good.clone();
    let at = bad.len() - 100;
    bad[at] ^= 0x01;
    fs::write(&c.path, &bad).unwrap();
    let err = AuditLog::open(&c).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    fs::write(&c.path, &good).unwrap();
}

#[tokio::test]
async fn reopening_after_rotation_continues_from_the_rotated_file() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(tmp.path(), 1800);
    let log = AuditLog::open(&c).unwrap();
    // Three decision records take the live file past max_bytes: rotated, new live file empty.
    append_n(&log, 0, 3).await;
    let head = log.head();
    drop(log);
    let files = chain_files(&c.path).unwrap();
    assert_eq!(files.len(), 2, "{files:?}");
    assert_eq!(fs::metadata(&c.path).unwrap().len(), 0);
    // Even with the empty live file gone.
    fs::remove_file(&c.path).unwrap();

    let log = AuditLog::open(&c).unwrap();
    assert_eq!(log.head(), head);
    append_n(&log, 3, 4).await;
    drop(log);
    let files = chain_files(&c.path).unwrap();
    assert!(files.len() >= 3, "{files:?}");
    assert_eq!(verify(&files), Ok(7));
    assert_eq!(lines(&files[1])[0]["prev"], head.hash.as_str());
}

#[tokio::test]
async fn a_second_writer_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(tmp.path(), 64 << 20);
    let log = AuditLog::open(&c).unwrap();
    let err = AuditLog::open(&c).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock, "{err}");
    drop(log);
    AuditLog::open(&c).unwrap();
}

#[tokio::test]
async fn invalid_entries_are_refused_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let c = cfg(tmp.path(), 64 << 20);
    let log = AuditLog::open(&c).unwrap();
    let mut nan = entry("d1");
    nan.scores.as_mut().unwrap().insert("prive".into(), f64::NAN);
    let mut kind = entry("d2");
    kind.kind = "other".into();
    let mut mode = entry("d3");
    mode.mode = "dry-run".into();
    for e in [nan, kind, mode, entry("")] {
        let err = log.append(e).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    }
    log.append(entry("d4")).await.unwrap();
    assert_eq!(verify(&chain_files(&c.path).unwrap()), Ok(1));
}

#[tokio::test]
async fn disabled_touches_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let c = AuditConfig { enabled: false, ..cfg(tmp.path(), 10) };
    let log = AuditLog::open(&c).unwrap();
    assert!(!log.enabled());
    log.append(entry("d1")).await.unwrap();
    assert_eq!(log.hash_message_id("<a@b>").len(), 64);
    assert!(!tmp.path().join("audit").exists());
}

#[test]
fn config_defaults_and_parsing() {
    let d = AuditConfig::default();
    assert!(d.enabled);
    assert_eq!(d.path, PathBuf::from("var/audit/audit.jsonl"));
    assert_eq!(d.max_bytes, 64 * 1024 * 1024);
    assert_eq!(d.salt_path(), PathBuf::from("var/audit/audit.jsonl.salt"));
    let c: AuditConfig = toml::from_str("max_bytes = 1000\nsalt_file = \"/etc/mailgrip/salt\"").unwrap();
    assert_eq!(c.max_bytes, 1000);
    assert_eq!(c.salt_path(), PathBuf::from("/etc/mailgrip/salt"));
    assert!(toml::from_str::<AuditConfig>("max_byte = 1").is_err());
}

/// The Python verifier in the module docs agrees with `verify`, so an auditor can rely on it.
#[tokio::test]
async fn the_documented_python_verifier_agrees() {
    let Ok(out) = std::process::Command::new("python3").arg("--version").output() else {
        eprintln!("python3 not found; skipped");
        return;
    };
    assert!(out.status.success());
    let src = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/audit.rs")).unwrap();
    let script: String = src
        .lines()
        .skip_while(|l| *l != "//! ```python")
        .skip(1)
        .take_while(|l| *l != "//! ```")
        .map(|l| format!("{}\n", l.strip_prefix("//! ").unwrap_or("")))
        .collect();
    assert!(script.contains("hashlib"), "snippet not found");

    let tmp = tempfile::tempdir().unwrap();
    let script_path = tmp.path().join("verify.py");
    fs::write(&script_path, &script).unwrap();
    let c = cfg(tmp.path(), 1800);
    let log = AuditLog::open(&c).unwrap();
    append_n(&log, 0, 12).await;
    drop(log);
    let files = chain_files(&c.path).unwrap();
    assert!(files.len() >= 3);
    let run = |files: &[PathBuf]| std::process::Command::new("python3").arg(&script_path).args(files).output().unwrap();
    let out = run(&files);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "12 records intact");

    // Tampering the Rust verifier catches, Python catches too, at the same place.
    let bytes = fs::read(&files[1]).unwrap();
    for pos in [5, 100, 300, bytes.len() - 20, bytes.len() - 1] {
        let mut bad = bytes.clone();
        bad[pos] ^= 0x01;
        fs::write(&files[1], &bad).unwrap();
        let err = verify(&files).unwrap_err();
        let out = run(&files);
        assert!(!out.status.success(), "python missed byte {pos}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("broken record") {
            assert!(stderr.contains(&format!(":{}: broken", err.line)), "{stderr} vs {err}");
        }
    }
    fs::write(&files[1], &bytes).unwrap();
    let mut without = files.clone();
    without.remove(1);
    assert!(!run(&without).status.success());
}
