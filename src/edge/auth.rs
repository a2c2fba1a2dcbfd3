//! Client keys: who is asking. With keys configured, every request but the page's and
//! `/healthz` names its client with `Authorization: Bearer KEY` (a stream GET may use
//! `?api_key=KEY` instead, for EventSource, which cannot set headers).
//!
//! Keys are compared in constant time: every configured key is compared in full, over a
//! fixed length, so neither which key nor how much of one matched shows in the timing.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// Keys longer than this are refused when read: every comparison runs over this many bytes.
pub const MAX_KEY_BYTES: usize = 256;

/// Who a request is from: a key's name, or without keys, the peer's IP address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Client {
    Key(String),
    /// Keys are off: every client may see everything; only the rate limits tell them apart.
    Address(Option<IpAddr>),
}

impl Client {
    /// The owner recorded on what this client creates: its key's name, or none without keys.
    pub fn owner(&self) -> Option<&str> {
        match self {
            Client::Key(name) => Some(name),
            Client::Address(_) => None,
        }
    }

    /// Whether this client may see a conversation owned by `owner`. Without keys everything
    /// is visible; with keys only one's own (a conversation made without keys has no owner
    /// and is then nobody's).
    pub fn may_see(&self, owner: Option<&str>) -> bool {
        match self {
            Client::Key(name) => owner == Some(name.as_str()),
            Client::Address(_) => true,
        }
    }

    /// The name the rate limits count under.
    pub fn limit_key(&self) -> String {
        match self {
            Client::Key(name) => format!("key:{name}"),
            Client::Address(Some(ip)) => format!("ip:{ip}"),
            Client::Address(None) => "ip:unknown".to_owned(),
        }
    }
}

/// One configured key: its name and its bytes padded to [`MAX_KEY_BYTES`].
struct Entry {
    name: String,
    padded: [u8; MAX_KEY_BYTES],
    len: usize,
}

/// A set of client keys, parsed from `NAME:KEY` entries.
#[derive(Default)]
pub struct ClientKeys {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for ClientKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.entries.iter().map(|e| e.name.as_str()).collect();
        f.debug_struct("ClientKeys").field("names", &names).finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("{0}")]
    Entry(String),
    #[error("{file}: cannot read it: {source}")]
    Read { file: String, source: std::io::Error },
    #[error("{file}, line {line}: {reason}")]
    Line { file: String, line: usize, reason: String },
}

impl ClientKeys {
    /// `NAME:KEY,NAME:KEY` (the `--api-keys` form).
    pub fn from_list(raw: &str) -> Result<Self, KeysError> {
        let mut keys = Self::default();
        for item in raw.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            keys.add(item)
                .map_err(|reason| KeysError::Entry(format!("--api-keys: {reason}")))?;
        }
        Ok(keys)
    }

    /// One `NAME:KEY` a line; `#` comments and blank lines ignored (`--api-keys-file`).
    pub fn from_file(path: &Path) -> Result<Self, KeysError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| KeysError::Read {
            file: file.clone(),
            source,
        })?;
        let mut keys = Self::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            keys.add(line).map_err(|reason| KeysError::Line {
                file: file.clone(),
                line: i + 1,
                reason,
            })?;
        }
        Ok(keys)
    }

    /// Both sources together: the list's keys and the file's.
    pub fn merged(mut self, other: ClientKeys) -> Self {
        self.entries.extend(other.entries);
        self
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The error never quotes the key: a log line or a terminal may be shared.
    fn add(&mut self, entry: &str) -> Result<(), String> {
        let (name, key) = entry
            .split_once(':')
            .map(|(n, k)| (n.trim(), k.trim()))
            .ok_or_else(|| "expected NAME:KEY (no `:` found)".to_owned())?;
        if name.is_empty() {
            return Err("the name before `:` is empty".into());
        }
        if key.is_empty() {
            return Err(format!("the key of {name:?} is empty"));
        }
        if key.len() > MAX_KEY_BYTES {
            return Err(format!("the key of {name:?} is longer than {MAX_KEY_BYTES} bytes"));
        }
        if self.entries.iter().any(|e| e.name == name) {
            return Err(format!("the name {name:?} is given twice"));
        }
        let mut padded = [0u8; MAX_KEY_BYTES];
        padded[..key.len()].copy_from_slice(key.as_bytes());
        self.entries.push(Entry {
            name: name.to_owned(),
            padded,
            len: key.len(),
        });
        Ok(())
    }

    /// The name of the key `presented`, if it is one of these. Every key is compared in full.
    pub fn name_of(&self, presented: &str) -> Option<&str> {
        let presented = presented.as_bytes();
        if presented.is_empty() || presented.len() > MAX_KEY_BYTES {
            return None;
        }
        let mut padded = [0u8; MAX_KEY_BYTES];
        padded[..presented.len()].copy_from_slice(presented);
        let mut found = None;
        for entry in &self.entries {
            if same(&entry.padded, entry.len, &padded, presented.len()) {
                found = Some(entry.name.as_str());
            }
        }
        found
    }
}

/// Constant-time equality of two padded keys and their lengths: no early exit, and
/// `black_box` keeps the compiler from adding one.
fn same(a: &[u8; MAX_KEY_BYTES], a_len: usize, b: &[u8; MAX_KEY_BYTES], b_len: usize) -> bool {
    let mut diff = (a_len ^ b_len) as u64;
    for i in 0..MAX_KEY_BYTES {
        diff |= u64::from(std::hint::black_box(a[i] ^ b[i]));
    }
    std::hint::black_box(diff) == 0
}

/// The keys in force, replaced whole on a reload (SIGHUP re-reads the keys file).
#[derive(Debug)]
pub struct Keyring {
    /// `--api-keys`: fixed for the process's life.
    listed: String,
    /// `--api-keys-file`: re-read on [`Keyring::reload`].
    file: Option<PathBuf>,
    current: RwLock<Arc<ClientKeys>>,
}

impl Keyring {
    /// Reads both sources; a bad entry stops start-up with the file, line and reason.
    pub fn load(listed: Option<&str>, file: Option<&Path>) -> Result<Self, KeysError> {
        let listed = listed.unwrap_or_default().to_owned();
        let keys = read(&listed, file)?;
        Ok(Self {
            listed,
            file: file.map(Path::to_owned),
            current: RwLock::new(Arc::new(keys)),
        })
    }

    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    pub fn current(&self) -> Arc<ClientKeys> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Re-reads the keys; on an error the keys in force stay as they are.
    pub fn reload(&self) -> Result<usize, KeysError> {
        let keys = read(&self.listed, self.file.as_deref())?;
        let count = keys.len();
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
        Ok(count)
    }
}

fn read(listed: &str, file: Option<&Path>) -> Result<ClientKeys, KeysError> {
    let keys = ClientKeys::from_list(listed)?;
    Ok(match file {
        Some(path) => keys.merged(ClientKeys::from_file(path)?),
        None => keys,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_found_only_whole() {
        let keys = ClientKeys::from_list("alice:sk-alice-1, bob:sk-bob-2").unwrap();
        assert_eq!(keys.name_of("sk-alice-1"), Some("alice"));
        assert_eq!(keys.name_of("sk-bob-2"), Some("bob"));
        for wrong in ["", "sk-alice-", "sk-alice-12", "SK-ALICE-1", "alice", &"x".repeat(300)] {
            assert_eq!(keys.name_of(wrong), None, "{wrong}");
        }
    }

    #[test]
    fn a_bad_file_names_its_line_and_never_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, "# clients\n\nalice:sk-a\nsk-secret-without-name\n").unwrap();
        let error = ClientKeys::from_file(&path).unwrap_err().to_string();
        assert!(error.contains("line 4") && error.contains("keys"), "{error}");
        assert!(!error.contains("sk-secret"), "{error}");
        std::fs::write(&path, "# clients\n\nalice:sk-a\n bob : sk-b \n").unwrap();
        let keys = ClientKeys::from_file(&path).unwrap();
        assert_eq!(keys.name_of("sk-b"), Some("bob"));
        assert!(ClientKeys::from_list("a:x,a:y").is_err(), "a name given twice");
    }

    #[test]
    fn ownership_matters_only_with_keys() {
        let alice = Client::Key("alice".into());
        assert!(alice.may_see(Some("alice")));
        assert!(!alice.may_see(Some("bob")) && !alice.may_see(None));
        assert!(Client::Address(None).may_see(Some("bob")) && Client::Address(None).may_see(None));
    }
}
