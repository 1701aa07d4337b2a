//! Sink commits: which log offsets each worker's files have made durable, per endpoint.
//!
//! A worker's commit record `commits/w<N>.json` holds the `frontier` it had reached when
//! it wrote the record and, for endpoints that differ from it, their own offset
//! (`endpoints`): behind the frontier while files are open, ahead of it while a restarted
//! engine replays what was already archived. An endpoint's committed offset is
//! `endpoints[e]`, or `frontier` when absent: every delivery to it of an event of this
//! worker's partition below that offset is in a finalised file.
//!
//! Committing is two-phase, so a crash never leaves a visible file outside a commit:
//! files are finished (footer written, synced) under temporary names, then the record is
//! written listing the renames it implies (`pending`), then the files are renamed.
//! Opening the store completes pending renames and deletes any other temporary file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::secret::write_private;

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("commit store I/O error at {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("commit record {path} is unreadable: {message}")]
    Corrupt { path: String, message: String },
}

fn io(path: &Path, source: std::io::Error) -> CommitError {
    CommitError::Io {
        path: path.display().to_string(),
        source,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerCommit {
    pub workers: usize,
    pub worker: usize,
    pub frontier: u64,
    #[serde(default)]
    pub endpoints: BTreeMap<String, u64>,
    /// Temporary files and their final names, renamed after this record is durable.
    #[serde(default)]
    pub pending: Vec<(PathBuf, PathBuf)>,
}

impl WorkerCommit {
    pub fn committed(&self, endpoint: &str) -> u64 {
        self.endpoints
            .get(endpoint)
            .copied()
            .unwrap_or(self.frontier)
    }

    /// The lowest committed offset over all endpoints: retention may delete below it.
    pub fn floor(&self) -> u64 {
        self.endpoints
            .values()
            .copied()
            .fold(self.frontier, u64::min)
    }
}

/// Where commit records live.
pub struct CommitStore {
    dir: PathBuf,
}

/// Commit records as the previous run left them.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    /// The worker count of the previous run (0 when there was none).
    pub workers: usize,
    pub commits: Vec<WorkerCommit>,
    /// Renames completed and temporary files removed while opening.
    pub completed_renames: usize,
    pub removed_temporaries: usize,
}

impl Recovery {
    /// The committed offset for `endpoint` of the worker that owned `device_hash`.
    pub fn committed(&self, endpoint: &str, device_hash: u64) -> u64 {
        if self.workers == 0 {
            return 0;
        }
        let w = weir_core::feed::partition(device_hash, self.workers);
        self.commits
            .iter()
            .find(|c| c.worker == w)
            .map_or(0, |c| c.committed(endpoint))
    }

    /// Where replay must start for nothing committed to be missed: the lowest floor.
    pub fn floor(&self) -> u64 {
        if self.commits.len() < self.workers {
            return 0;
        }
        self.commits
            .iter()
            .map(WorkerCommit::floor)
            .min()
            .unwrap_or(0)
    }

    /// The highest committed offset of any endpoint in any worker.
    pub fn ceiling(&self) -> u64 {
        self.commits
            .iter()
            .flat_map(|c| c.endpoints.values().copied().chain([c.frontier]))
            .max()
            .unwrap_or(0)
    }

    /// True when every worker committed every endpoint up to `end`.
    pub fn complete_at(&self, end: u64) -> bool {
        self.workers == 0 || (self.commits.len() == self.workers && self.floor() >= end)
    }

    pub fn worker(&self, w: usize) -> Option<&WorkerCommit> {
        self.commits.iter().find(|c| c.worker == w)
    }
}

fn temporaries(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            temporaries(&p, out);
        } else if p.to_string_lossy().ends_with(".inprogress") {
            out.push(p);
        }
    }
}

impl CommitStore {
    /// Opens the store and recovers the previous run's commits: completes pending renames
    /// and deletes temporary files under `archive` that no commit names.
    pub fn open(dir: &Path, archive: &Path) -> Result<(CommitStore, Recovery), CommitError> {
        crate::fsutil::create_dir_durable(dir).map_err(|e| io(dir, e))?;
        let mut rec = Recovery::default();
        for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))?.flatten() {
            let p = entry.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if !(name.starts_with('w') && name.ends_with(".json")) {
                continue;
            }
            let text = std::fs::read_to_string(&p).map_err(|e| io(&p, e))?;
            let c: WorkerCommit =
                serde_json::from_str(&text).map_err(|e| CommitError::Corrupt {
                    path: p.display().to_string(),
                    message: e.to_string(),
                })?;
            for (tmp, done) in &c.pending {
                if tmp.exists() {
                    std::fs::rename(tmp, done).map_err(|e| io(done, e))?;
                    rec.completed_renames += 1;
                }
            }
            rec.workers = rec.workers.max(c.workers);
            rec.commits.push(c);
        }
        let mut tmp = Vec::new();
        temporaries(archive, &mut tmp);
        for t in tmp {
            std::fs::remove_file(&t).map_err(|e| io(&t, e))?;
            rec.removed_temporaries += 1;
        }
        rec.commits.sort_by_key(|c| c.worker);
        Ok((
            CommitStore {
                dir: dir.to_path_buf(),
            },
            rec,
        ))
    }

    /// Durably replaces worker `c.worker`'s record.
    pub fn write(&self, c: &WorkerCommit) -> Result<(), CommitError> {
        let path = self.dir.join(format!("w{}.json", c.worker));
        let text = serde_json::to_vec_pretty(c).map_err(|e| CommitError::Corrupt {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        write_private(&path, &text).map_err(|e| io(&path, e))
    }

    /// Forgets every record: the log was fully committed and the worker count changes.
    pub fn reset(&self) -> Result<(), CommitError> {
        for entry in std::fs::read_dir(&self.dir)
            .map_err(|e| io(&self.dir, e))?
            .flatten()
        {
            let p = entry.path();
            if p.extension().is_some_and(|x| x == "json") {
                std::fs::remove_file(&p).map_err(|e| io(&p, e))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completes_pending_renames_and_removes_strays() {
        let t = tempfile::tempdir().expect("tmp");
        let archive = t.path().join("archive/ep/date=x");
        std::fs::create_dir_all(&archive).expect("dirs");
        let (a_tmp, a_done) = (
            archive.join(".a.parquet.inprogress"),
            archive.join("a.parquet"),
        );
        let stray = archive.join(".b.parquet.inprogress");
        let (store, rec) =
            CommitStore::open(&t.path().join("commits"), &t.path().join("archive")).expect("open");
        assert_eq!(rec.workers, 0);
        std::fs::write(&a_tmp, b"A").expect("a");
        std::fs::write(&stray, b"B").expect("b");
        store
            .write(&WorkerCommit {
                workers: 2,
                worker: 1,
                frontier: 100,
                endpoints: BTreeMap::from([("ep".to_string(), 40)]),
                pending: vec![(a_tmp.clone(), a_done.clone())],
            })
            .expect("write");
        let (_, rec) = CommitStore::open(&t.path().join("commits"), &t.path().join("archive"))
            .expect("reopen");
        assert!(a_done.exists() && !a_tmp.exists() && !stray.exists());
        assert_eq!((rec.completed_renames, rec.removed_temporaries), (1, 1));
        assert_eq!(rec.workers, 2);
        // Worker 0 left no record: nothing can be assumed committed.
        assert_eq!(rec.floor(), 0);
        let h1 = (0..)
            .find(|h| weir_core::feed::partition(*h, 2) == 1)
            .expect("hash");
        assert_eq!(rec.committed("ep", h1), 40);
        assert_eq!(rec.committed("other", h1), 100);
    }
}
