//! Who may use the console: local users with argon2 password hashes, server-side sessions with
//! idle and absolute expiry, per-session CSRF tokens, and a brake on password guessing.
//!
//! Sessions live in memory only: a restart logs everyone out, which is the safe direction, and
//! nothing about a session (not even its id) ever touches the disk.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use serde::{Deserialize, Serialize};

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Views the queue and decides on held copies.
    Archivist,
    /// Views the queue, the held copies and the audit-chain status; decides nothing.
    Auditor,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Archivist => "archivist",
            Role::Auditor => "auditor",
        }
    }
}

/// One `[[admin.users]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminUser {
    /// Login name; also the reviewer named in decisions and the audit trail.
    pub name: String,
    /// `archivist` or `auditor`.
    pub role: Role,
    /// Argon2 hash in PHC form (`$argon2id$v=19$...`), from `mailgrip admin hash-password`.
    pub password_hash: String,
}

/// Hash a password for `[[admin.users]]` (argon2id with the crate's default cost, random salt).
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| e.to_string())
}

/// Check that `phc` is an argon2 hash in PHC form (for config validation).
pub fn check_hash(phc: &str) -> Result<(), String> {
    let hash = PasswordHash::new(phc).map_err(|e| format!("not a PHC string ({e})"))?;
    match hash.algorithm.as_str() {
        "argon2id" | "argon2i" | "argon2d" => Ok(()),
        other => Err(format!("algorithm {other:?} is not argon2")),
    }
}

/// The configured users, plus a dummy hash so that an unknown name costs as much as a wrong password.
pub struct Users {
    users: HashMap<String, (Role, String)>,
    dummy: String,
}

impl Users {
    pub fn new(users: &[AdminUser]) -> Users {
        let mut random = [0u8; 16];
        OsRng.fill_bytes(&mut random);
        Users {
            users: users.iter().map(|u| (u.name.clone(), (u.role, u.password_hash.clone()))).collect(),
            dummy: hash_password(&hex::encode(random)).expect("argon2 with default parameters"),
        }
    }

    /// The user's role when `password` is right. CPU-heavy (argon2): call it on the blocking pool.
    /// Unknown names are verified against the dummy hash, so both failures take about as long.
    pub fn verify(&self, name: &str, password: &str) -> Option<Role> {
        let (role, phc) = match self.users.get(name) {
            Some((role, phc)) => (Some(*role), phc.as_str()),
            None => (None, self.dummy.as_str()),
        };
        let ok = PasswordHash::new(phc)
            .map(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
            .unwrap_or(false);
        if ok { role } else { None }
    }
}

/// 32 random bytes in hex: session ids and CSRF tokens.
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// Equality whose time does not depend on where the inputs first differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A logged-in user.
#[derive(Debug, Clone)]
pub struct Session {
    pub user: String,
    pub role: Role,
    /// The synchronizer token every POST form of this session must carry.
    pub csrf: String,
    created: Instant,
    last_seen: Instant,
}

/// Most sessions kept at once; past it the least recently used one is dropped (bounded memory
/// even if someone logs in in a loop).
const MAX_SESSIONS: usize = 10_000;

/// Server-side sessions by random id.
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
    idle: Duration,
    max: Duration,
}

impl Sessions {
    pub fn new(idle: Duration, max: Duration) -> Sessions {
        Sessions { map: Mutex::new(HashMap::new()), idle, max }
    }

    /// Start a session; returns its id (the cookie value).
    pub fn create(&self, user: &str, role: Role) -> String {
        let now = Instant::now();
        let id = random_token();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, s| !self.expired(s, now));
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map.iter().min_by_key(|(_, s)| s.last_seen).map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(
            id.clone(),
            Session { user: user.to_string(), role, csrf: random_token(), created: now, last_seen: now },
        );
        id
    }

    /// The live session with this id, marked as used now; an expired one is removed.
    pub fn get(&self, id: &str) -> Option<Session> {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let session = map.get_mut(id)?;
        if self.expired(session, now) {
            map.remove(id);
            return None;
        }
        session.last_seen = now;
        Some(session.clone())
    }

    pub fn remove(&self, id: &str) {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }

    fn expired(&self, s: &Session, now: Instant) -> bool {
        now.duration_since(s.last_seen) >= self.idle || now.duration_since(s.created) >= self.max
    }
}

/// Failed logins from one address within [`THROTTLE_WINDOW`] before further attempts are refused
/// (`429`) until the window has passed. Per address rather than per user, so that nobody can lock
/// an archivist out by guessing at their name.
pub const MAX_FAILED_LOGINS: u32 = 10;
pub const THROTTLE_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Addresses tracked at most (bounded memory); past it the oldest windows are forgotten.
const MAX_TRACKED: usize = 10_000;

/// Counts failed logins per client address.
#[derive(Default)]
pub struct Throttle {
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl Throttle {
    /// Whether `ip` has used up its failed attempts for now.
    pub fn blocked(&self, ip: IpAddr) -> bool {
        let map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&ip).is_some_and(|(n, since)| *n >= MAX_FAILED_LOGINS && since.elapsed() < THROTTLE_WINDOW)
    }

    pub fn failed(&self, ip: IpAddr) {
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_TRACKED {
            map.retain(|_, (_, since)| now.duration_since(*since) < THROTTLE_WINDOW);
        }
        if map.len() >= MAX_TRACKED {
            map.clear();
        }
        let entry = map.entry(ip).or_insert((0, now));
        if now.duration_since(entry.1) >= THROTTLE_WINDOW {
            *entry = (0, now);
        }
        entry.0 += 1;
    }

    pub fn succeeded(&self, ip: IpAddr) {
        self.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_unknown_users_fail() {
        let phc = hash_password("correct horse").unwrap();
        check_hash(&phc).unwrap();
        assert!(check_hash("$2b$12$abcdefghijklmnopqrstuv").is_err());
        let users = Users::new(&[AdminUser { name: "anna".into(), role: Role::Archivist, password_hash: phc }]);
        assert_eq!(users.verify("anna", "correct horse"), Some(Role::Archivist));
        assert_eq!(users.verify("anna", "wrong"), None);
        assert_eq!(users.verify("nobody", "correct horse"), None);
    }

    #[test]
    fn sessions_expire_when_idle() {
        let s = Sessions::new(Duration::ZERO, Duration::from_secs(60));
        let id = s.create("anna", Role::Auditor);
        assert!(s.get(&id).is_none(), "idle expiry of zero: gone at once");
        let s = Sessions::new(Duration::from_secs(60), Duration::from_secs(60));
        let id = s.create("anna", Role::Auditor);
        let got = s.get(&id).unwrap();
        assert_eq!((got.user.as_str(), got.role, got.csrf.len()), ("anna", Role::Auditor, 64));
        s.remove(&id);
        assert!(s.get(&id).is_none());
    }

    #[test]
    fn throttle_blocks_after_the_limit() {
        let t = Throttle::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..MAX_FAILED_LOGINS {
            assert!(!t.blocked(ip));
            t.failed(ip);
        }
        assert!(t.blocked(ip));
        assert!(!t.blocked("192.0.2.2".parse().unwrap()));
        t.succeeded(ip);
        assert!(!t.blocked(ip));
    }
}
