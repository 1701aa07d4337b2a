//! The commit records of format 1 (before virtual partitions), read only to upgrade a data
//! directory. They were kept per worker (`commits/w<N>.json`), for the devices a
//! non-portable hash put on that worker, so they cannot be mapped onto partitions: a
//! directory is upgraded only when they show that everything in the log was archived.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum LegacyError {
    #[error("cannot read the old commit records in {path}: {message}")]
    Read { path: String, message: String },
}

fn read_err(path: &Path, e: impl std::fmt::Display) -> LegacyError {
    LegacyError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

#[derive(Debug, Deserialize)]
struct WorkerCommit {
    workers: usize,
    frontier: u64,
    #[serde(default)]
    endpoints: std::collections::BTreeMap<String, u64>,
    #[serde(default)]
    pending: Vec<(PathBuf, PathBuf)>,
}

/// What the old records say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegacyCommits {
    /// The lowest committed offset over every worker and endpoint; `None` when some
    /// worker left no record (nothing can be assumed archived).
    pub floor: Option<u64>,
}

/// Reads `commits/w*.json` under `dir`, finishing the renames they list (as the old
/// version did at start-up). `None` when there are none.
pub fn read(dir: &Path) -> Result<Option<LegacyCommits>, LegacyError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(None);
    };
    let mut commits = Vec::new();
    for entry in entries.flatten() {
        let p = entry.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !(name.starts_with('w') && name.ends_with(".json")) {
            continue;
        }
        let text = std::fs::read_to_string(&p).map_err(|e| read_err(&p, e))?;
        let c: WorkerCommit = serde_json::from_str(&text).map_err(|e| read_err(&p, e))?;
        for (tmp, done) in &c.pending {
            if tmp.exists() {
                std::fs::rename(tmp, done).map_err(|e| read_err(done, e))?;
            }
        }
        commits.push(c);
    }
    if commits.is_empty() {
        return Ok(None);
    }
    let workers = commits.iter().map(|c| c.workers).max().unwrap_or(0);
    let floor = (commits.len() >= workers).then(|| {
        commits
            .iter()
            .flat_map(|c| c.endpoints.values().copied().chain([c.frontier]))
            .min()
            .unwrap_or(0)
    });
    Ok(Some(LegacyCommits { floor }))
}

/// Removes the old records once the directory is upgraded.
pub fn remove(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_floor_and_finishes_pending_renames() {
        let t = tempfile::tempdir().expect("tmp");
        let dir = t.path().join("commits");
        std::fs::create_dir_all(&dir).expect("dir");
        assert_eq!(read(&dir).expect("read"), None);
        let (tmp, done) = (t.path().join(".a.inprogress"), t.path().join("a.parquet"));
        std::fs::write(&tmp, b"x").expect("tmp");
        std::fs::write(
            dir.join("w0.json"),
            format!(
                r#"{{"workers": 2, "worker": 0, "frontier": 100, "endpoints": {{"archive": 40}}, "pending": [["{}", "{}"]]}}"#,
                tmp.display(),
                done.display()
            ),
        )
        .expect("w0");
        assert_eq!(
            read(&dir).expect("read"),
            Some(LegacyCommits { floor: None }),
            "w1 missing"
        );
        assert!(done.exists() && !tmp.exists());
        std::fs::write(
            dir.join("w1.json"),
            r#"{"workers": 2, "worker": 1, "frontier": 90}"#,
        )
        .expect("w1");
        assert_eq!(
            read(&dir).expect("read"),
            Some(LegacyCommits { floor: Some(40) })
        );
        remove(&dir).expect("remove");
        assert!(!dir.exists());
    }
}
