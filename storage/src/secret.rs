//! Random keys and owner-only files for secrets.

use std::io::Write;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// A fresh symmetric key: 32 random bytes, base64, as IoT Hub generates them.
pub fn generate_key() -> std::io::Result<String> {
    let mut buf = [0u8; 32];
    getrandom::fill(&mut buf).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(STANDARD.encode(buf))
}

/// `n` random bytes as lower-case hex.
pub fn random_hex(n: usize) -> std::io::Result<String> {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes `contents` to `path` readable and writable by the owner only (0600), replacing
/// any existing file atomically and durably (the directory is synced after the rename).
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = crate::fsutil::create_private(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) => crate::fsutil::sync_dir(dir),
        None => crate::fsutil::sync_dir(Path::new(".")),
    }
}

/// True when a base64 key decodes to 16..=64 bytes, IoT Hub's accepted key lengths.
pub fn valid_key(key: &str) -> bool {
    STANDARD
        .decode(key)
        .is_ok_and(|k| (16..=64).contains(&k.len()))
}
