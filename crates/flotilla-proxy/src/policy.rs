//! Who may run what: client passwords, the deny list, and the audit log.
//!
//! The decisions are pure ([`Policy::auth`], [`Policy::denied`]); the audit log is
//! the one side effect, one JSON line per denied command, per deny-listed command an
//! admin runs, and per `AUTH` that fails or makes a client admin. It names the
//! command, never its arguments.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// What the proxy refuses by default (`--deny` replaces it).
pub const DEFAULT_DENY: &[&str] = &[
    "FLUSHALL",
    "FLUSHDB",
    "CONFIG",
    "DEBUG",
    "SHUTDOWN",
    "REPLICAOF",
    "SLAVEOF",
    "FAILOVER",
    "MONITOR",
    "CLUSTER",
    "SCRIPT",
    "KEYS",
];

/// Who a client authenticated as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum User {
    /// The user password (or no password configured).
    Default,
    /// The admin password: the deny list does not apply.
    Admin,
}

impl User {
    /// As the audit log names it.
    pub fn name(self) -> &'static str {
        match self {
            User::Default => "default",
            User::Admin => "admin",
        }
    }
}

/// The outcome of an `AUTH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// Authenticated as this user.
    Ok(User),
    /// Wrong user name or password.
    WrongPass,
    /// Not `AUTH password` or `AUTH user password`.
    Syntax,
}

/// The proxy's rules for clients.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// The user password; `None`: clients start as [`User::Default`].
    pub password: Option<String>,
    /// The admin password; `None`: nobody is admin.
    pub admin_password: Option<String>,
    /// Command names refused to non-admins, upper case.
    pub deny: BTreeSet<String>,
}

impl Policy {
    /// A policy with the default deny list.
    pub fn new(password: Option<String>, admin_password: Option<String>) -> Policy {
        Policy {
            password,
            admin_password,
            deny: DEFAULT_DENY.iter().map(|c| c.to_string()).collect(),
        }
    }

    /// Replaces the deny list (names in any case).
    pub fn with_deny<I: IntoIterator<Item = S>, S: AsRef<str>>(mut self, deny: I) -> Policy {
        self.deny = deny
            .into_iter()
            .map(|c| c.as_ref().trim().to_ascii_uppercase())
            .filter(|c| !c.is_empty())
            .collect();
        self
    }

    /// The user a new client starts as: none while a password is required.
    pub fn initial_user(&self) -> Option<User> {
        match self.password {
            Some(_) => None,
            None => Some(User::Default),
        }
    }

    /// `AUTH` with these arguments (after the command's name).
    pub fn auth(&self, args: &[&[u8]]) -> Auth {
        let (user, password) = match args {
            [p] => (None, *p),
            [u, p] => (Some(*u), *p),
            _ => return Auth::Syntax,
        };
        let is = |secret: &Option<String>| {
            secret
                .as_deref()
                .is_some_and(|s| constant_time_eq(s.as_bytes(), password))
        };
        match user {
            None if is(&self.admin_password) => Auth::Ok(User::Admin),
            None if is(&self.password) => Auth::Ok(User::Default),
            Some(b"admin") if is(&self.admin_password) => Auth::Ok(User::Admin),
            Some(b"default") if is(&self.password) => Auth::Ok(User::Default),
            _ => Auth::WrongPass,
        }
    }

    /// Whether `user` may not run `command` (upper case).
    pub fn denied(&self, user: User, command: &str) -> bool {
        user != User::Admin && self.deny.contains(command)
    }

    /// Whether `command` is on the deny list (an admin running it is audited).
    pub fn listed(&self, command: &str) -> bool {
        self.deny.contains(command)
    }
}

/// Equal bytes, in a time that does not depend on where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The deny error a client gets, naming the command.
pub fn deny_error(command: &str) -> String {
    format!(
        "-ERR command '{}' is denied by the flotilla proxy\r\n",
        command.to_ascii_lowercase()
    )
}

/// What happened, for the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Refused by the deny list.
    Denied,
    /// A deny-listed command an admin ran.
    Allowed,
    /// `AUTH` that failed.
    WrongPass,
    /// `AUTH` as admin.
    Admin,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Outcome::Denied => "denied",
            Outcome::Allowed => "allowed",
            Outcome::WrongPass => "wrongpass",
            Outcome::Admin => "admin",
        }
    }
}

/// The audit log: one JSON line per event, appended.
#[derive(Debug)]
pub struct Audit {
    file: Option<Mutex<std::fs::File>>,
    path: Option<PathBuf>,
}

impl Audit {
    /// No audit log.
    pub fn none() -> Audit {
        Audit {
            file: None,
            path: None,
        }
    }

    /// Appends to `path` (created if missing).
    pub fn open(path: &Path) -> std::io::Result<Audit> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Audit {
            file: Some(Mutex::new(file)),
            path: Some(path.to_path_buf()),
        })
    }

    /// Records one event: never the command's arguments.
    pub fn record(&self, client: SocketAddr, user: Option<User>, command: &str, outcome: Outcome) {
        let Some(file) = &self.file else { return };
        let line = serde_json::json!({
            "time": jiff::Timestamp::now().to_string(),
            "client": client.to_string(),
            "user": user.map_or("none", User::name),
            "command": command.to_ascii_lowercase(),
            "outcome": outcome.name(),
        });
        let mut text = line.to_string();
        text.push('\n');
        let written = match file.lock() {
            Ok(mut f) => f.write_all(text.as_bytes()),
            Err(poisoned) => poisoned.into_inner().write_all(text.as_bytes()),
        };
        if let Err(e) = written {
            tracing::error!(file = ?self.path, error = %e, "cannot write the audit log");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_make_users() {
        let p = Policy::new(Some("user-pw".into()), Some("admin-pw".into()));
        assert_eq!(p.initial_user(), None);
        assert_eq!(p.auth(&[b"user-pw"]), Auth::Ok(User::Default));
        assert_eq!(p.auth(&[b"default", b"user-pw"]), Auth::Ok(User::Default));
        assert_eq!(p.auth(&[b"admin-pw"]), Auth::Ok(User::Admin));
        assert_eq!(p.auth(&[b"admin", b"admin-pw"]), Auth::Ok(User::Admin));
        assert_eq!(p.auth(&[b"default", b"admin-pw"]), Auth::WrongPass);
        assert_eq!(p.auth(&[b"nope"]), Auth::WrongPass);
        assert_eq!(p.auth(&[]), Auth::Syntax);
        let open = Policy::new(None, None);
        assert_eq!(open.initial_user(), Some(User::Default));
        assert_eq!(open.auth(&[b""]), Auth::WrongPass);
    }

    #[test]
    fn the_deny_list_binds_all_but_admin() {
        let p = Policy::new(None, None);
        for c in DEFAULT_DENY {
            assert!(p.denied(User::Default, c));
            assert!(!p.denied(User::Admin, c));
        }
        assert!(!p.denied(User::Default, "GET"));
        let p = p.with_deny(["get", " set "]);
        assert!(p.denied(User::Default, "SET") && !p.denied(User::Default, "FLUSHALL"));
        assert_eq!(
            deny_error("FLUSHALL"),
            "-ERR command 'flushall' is denied by the flotilla proxy\r\n"
        );
    }
}
