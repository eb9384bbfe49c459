//! The cluster key (`-cluster.key-file`): every gossip packet is sealed with ChaCha20-Poly1305
//! (ring) under the first key of the file, and a packet is accepted when any key of the file
//! opens it, so keys rotate without a restart (docs/security.md).
//!
//! The file holds one key per line, 64 hex digits (32 random bytes, `oklog keygen`); `#`
//! lines are comments. A sealed packet is `K`, a version byte (1), a random 96-bit nonce, and
//! the ciphertext with its 16-byte tag.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::{Context, bail};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

const MAGIC: [u8; 2] = [b'K', 1];
const AAD: &[u8] = b"oklog-gossip/1";
/// Bytes a sealed packet adds to the plaintext.
pub const OVERHEAD: usize = MAGIC.len() + NONCE_LEN + 16;

/// Make a new key: 32 random bytes as 64 hex digits.
pub fn generate() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("no randomness from the system"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn parse(text: &str) -> anyhow::Result<Vec<[u8; 32]>> {
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.len() != 64 || !line.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!(
                "line {}: a key is 64 hex digits (make one with `oklog keygen`)",
                i + 1
            );
        }
        let mut key = [0u8; 32];
        for (j, k) in key.iter_mut().enumerate() {
            *k = u8::from_str_radix(&line[2 * j..2 * j + 2], 16).unwrap_or(0);
        }
        keys.push(key);
    }
    if keys.is_empty() {
        bail!("no key in it (make one with `oklog keygen`)");
    }
    Ok(keys)
}

/// The keys of `-cluster.key-file`: the first seals, every one opens.
pub struct Keyring {
    path: PathBuf,
    keys: RwLock<Arc<Vec<LessSafeKey>>>,
    rng: SystemRandom,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keyring({})", self.path.display())
    }
}

impl Keyring {
    /// Load `path` (which other users must not be able to read).
    pub fn open(path: &Path) -> anyhow::Result<Arc<Keyring>> {
        Ok(Arc::new(Keyring {
            path: path.to_path_buf(),
            keys: RwLock::new(Arc::new(Self::load(path)?)),
            rng: SystemRandom::new(),
        }))
    }

    /// A keyring of the given keys (tests).
    pub fn from_text(text: &str) -> anyhow::Result<Keyring> {
        Ok(Keyring {
            path: PathBuf::new(),
            keys: RwLock::new(Arc::new(to_keys(parse(text)?))),
            rng: SystemRandom::new(),
        })
    }

    fn load(path: &Path) -> anyhow::Result<Vec<LessSafeKey>> {
        super::check_private(path, "-cluster.key-file")?;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("-cluster.key-file {}", path.display()))?;
        let keys = parse(&text).with_context(|| format!("-cluster.key-file {}", path.display()))?;
        Ok(to_keys(keys))
    }

    fn keys(&self) -> Arc<Vec<LessSafeKey>> {
        Arc::clone(&self.keys.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Seal `packet` under the first key.
    pub fn seal(&self, packet: &[u8]) -> Vec<u8> {
        let keys = self.keys();
        let mut nonce = [0u8; NONCE_LEN];
        // SystemRandom fails only without a kernel source of randomness.
        let _ = self.rng.fill(&mut nonce);
        let mut out = Vec::with_capacity(packet.len() + OVERHEAD);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(packet);
        let mut body = out.split_off(MAGIC.len() + NONCE_LEN);
        let sealed = keys[0].seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(AAD),
            &mut body,
        );
        if sealed.is_err() {
            return Vec::new();
        }
        out.extend_from_slice(&body);
        out
    }

    /// The packet `sealed` holds, if one of the keys opens it.
    pub fn open_packet(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        let rest = sealed.strip_prefix(&MAGIC)?;
        if rest.len() < NONCE_LEN + 16 {
            return None;
        }
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
        for key in self.keys().iter() {
            let mut buf = body.to_vec();
            if let Ok(plain) = key.open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(AAD),
                &mut buf,
            ) {
                let n = plain.len();
                buf.truncate(n);
                return Some(buf);
            }
        }
        None
    }
}

fn to_keys(keys: Vec<[u8; 32]>) -> Vec<LessSafeKey> {
    keys.iter()
        .filter_map(|k| UnboundKey::new(&CHACHA20_POLY1305, k).ok())
        .map(LessSafeKey::new)
        .collect()
}

impl super::Reload for Keyring {
    fn what(&self) -> String {
        format!("cluster key file {}", self.path.display())
    }

    fn files(&self) -> Vec<PathBuf> {
        vec![self.path.clone()]
    }

    fn reload(&self) -> anyhow::Result<()> {
        let keys = Self::load(&self.path)?;
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_packets_open_under_any_listed_key_only() {
        let (a, b) = (generate().unwrap(), generate().unwrap());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        let old = Keyring::from_text(&a).unwrap();
        let rotating = Keyring::from_text(&format!("# new first\n{b}\n{a}\n")).unwrap();
        let new = Keyring::from_text(&b).unwrap();
        let packet = b"ping from a member".to_vec();
        let sealed = old.seal(&packet);
        assert_eq!(sealed.len(), packet.len() + OVERHEAD);
        assert!(
            !sealed.windows(packet.len()).any(|w| w == packet),
            "encrypted"
        );
        assert_eq!(rotating.open_packet(&sealed), Some(packet.clone()));
        assert_eq!(new.open_packet(&sealed), None, "a node without the key");
        assert_eq!(
            old.open_packet(&rotating.seal(&packet)),
            None,
            "sealed with the new key"
        );
        assert_eq!(
            new.open_packet(&rotating.seal(&packet)),
            Some(packet.clone())
        );
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(old.open_packet(&tampered), None);
        assert_eq!(old.open_packet(&packet), None, "a plain packet");
        assert_eq!(old.open_packet(&sealed[..10]), None);
        assert!(Keyring::from_text("abcd\n").is_err());
        assert!(Keyring::from_text("# nothing\n").is_err());
    }
}
