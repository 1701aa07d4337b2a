//! Committing an endpoint's files, recording the commit, and what happens when either
//! fails.
//!
//! Committing is two-phase, so a crash never leaves a visible file outside a commit: files
//! are finished (footer written, synced) under temporary names, then the commit store
//! records the new offsets together with the renames they imply (an intent), then the
//! files are renamed and their directory synced. At start-up, intents are finished and any
//! other temporary file is deleted (`factory.rs`).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use weir_core::{EndpointState as Health, SinkError};

use super::factory::{KIND, encode_renames};
use super::file::io;
use super::sink::ParquetSink;
use crate::commit::Update;
use crate::fsutil;

pub(super) fn remove_quietly(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::debug!(error = %e, file = %path.display(), "cannot remove an uncommitted file; it is removed at the next start");
    }
}

impl ParquetSink {
    /// Commits `name`'s open files: every delivery to it below `hi` is in them.
    pub(super) fn commit_endpoint(&mut self, name: &str, hi: u64) -> Result<(), SinkError> {
        let parts = self.partitions.clone();
        let Some(state) = self.endpoints.get_mut(name) else {
            return Ok(());
        };
        if state.files.is_empty() {
            state.raise(&parts, |_| hi);
            return Ok(());
        }
        let lo = state.committed_min;
        let Some(spec) = state.spec.clone() else {
            return Ok(());
        };
        let files = std::mem::take(&mut state.files);
        let rows = std::mem::take(&mut state.rows);
        state.opened = None;
        let before = state.committed.clone();
        let mut renames = Vec::new();
        let mut failure = None;
        let (worker, workers) = (self.worker, self.workers);
        for (_, f) in files {
            let tmp = f.tmp.clone();
            match failure {
                None => match f.finish(&spec, worker, workers, lo, hi) {
                    Ok(pair) => renames.push(pair),
                    Err(e) => {
                        remove_quietly(&tmp);
                        failure = Some(e);
                    }
                },
                Some(_) => remove_quietly(&tmp),
            }
        }
        if let Some(e) = failure {
            renames.iter().for_each(|(tmp, _)| remove_quietly(tmp));
            return Err(e);
        }
        if let Some(s) = self.endpoints.get_mut(name) {
            s.raise(&parts, |_| hi);
        }
        if let Err(e) = self.write_record(renames.clone()) {
            if let Some(s) = self.endpoints.get_mut(name) {
                s.committed = before;
                s.recount(&parts);
            }
            renames.iter().for_each(|(tmp, _)| remove_quietly(tmp));
            return Err(e);
        }
        // The record is the commit point: from here the files are part of the archive
        // even if renaming them has to wait for a later record or the next start.
        self.finish_renames();
        if let Some(s) = self.endpoints.get_mut(name) {
            s.recovery.prove();
        }
        self.metrics
            .rows_committed
            .fetch_add(rows as u64, Ordering::Relaxed);
        self.metrics
            .files_committed
            .fetch_add(renames.len() as u64, Ordering::Relaxed);
        if let Ok(mut by) = self.metrics.rows_by_endpoint.lock() {
            *by.entry(name.to_string()).or_default() += rows as u64;
        }
        self.publish(name);
        tracing::debug!(
            endpoint = name,
            lo,
            hi,
            rows,
            files = renames.len(),
            "committed parquet files"
        );
        Ok(())
    }

    /// Renames committed files and syncs their directories; an intent whose renames are
    /// all done is cleared with the next record, one that is not stays for the next try
    /// (after the next commit) or the next start.
    pub(super) fn finish_renames(&mut self) {
        let mut left = Vec::new();
        for (intent, pairs) in std::mem::take(&mut self.renames) {
            let mut ok = true;
            let mut dirs: Vec<PathBuf> = Vec::new();
            for (tmp, done) in &pairs {
                if tmp.exists()
                    && let Err(e) = std::fs::rename(tmp, done)
                {
                    tracing::warn!(error = %e, file = %done.display(), "renaming a committed file failed; retried after the next commit and at start-up");
                    ok = false;
                    continue;
                }
                if let Some(d) = done.parent()
                    && !dirs.iter().any(|x| x == d)
                {
                    dirs.push(d.to_path_buf());
                }
            }
            for d in dirs {
                if let Err(e) = fsutil::sync_dir(&d) {
                    tracing::warn!(error = %e, dir = %d.display(), "syncing a directory after renames failed; retried after the next commit");
                    ok = false;
                }
            }
            if ok {
                self.done_intents.push(intent);
            } else {
                left.push((intent, pairs));
            }
        }
        self.renames = left;
    }

    /// Marks `name` failed at its last commit: drops its open files and, until its retry,
    /// its deliveries. Returns the error for the caller to pass on.
    pub(super) fn fail(&mut self, name: &str, e: SinkError) -> SinkError {
        let Some(s) = self.endpoints.get_mut(name) else {
            return e;
        };
        for f in std::mem::take(&mut s.files).into_values() {
            remove_quietly(&f.tmp);
        }
        s.rows = 0;
        s.opened = None;
        s.last_offset = None;
        s.recovery.fail(e.to_string());
        let attempts = s.recovery.attempts();
        let wait = weir_core::recovery::backoff(attempts);
        tracing::debug!(endpoint = name, worker = self.worker, attempts, error = %e, retry_in = ?wait, "endpoint write failed");
        self.publish(name);
        e
    }

    /// Tells the health board about `name`; logs when that changes the endpoint's state.
    pub(super) fn publish(&self, name: &str) {
        let Some(s) = self.endpoints.get(name) else {
            return;
        };
        let health = s.health();
        let error = health.last_error.clone().unwrap_or_default();
        let Some((before, after)) = self.health.report(self.worker, name, health) else {
            return;
        };
        match after {
            Health::Unhealthy => tracing::error!(
                endpoint = name,
                error = %error,
                "endpoint is unhealthy: its messages stay in the ingest log and it is retried with backoff (at most every 30 s)"
            ),
            Health::Degraded => tracing::warn!(
                endpoint = name,
                "endpoint is writing again and catching up on what it missed"
            ),
            Health::Healthy => tracing::info!(
                endpoint = name,
                was = before.as_str(),
                "endpoint is healthy again"
            ),
        }
    }

    /// Records this worker's state in the commit store: the frontier of each of its
    /// partitions, and the offsets of every endpoint that differs from it; with `renames`,
    /// the intent to make those committed files visible.
    pub(super) fn write_record(
        &mut self,
        renames: Vec<(PathBuf, PathBuf)>,
    ) -> Result<(), SinkError> {
        let f = self.frontier;
        let parts = self.partitions.clone();
        let mut frontiers = self.frontiers.clone();
        for &p in &parts {
            let slot = &mut frontiers[usize::from(p)];
            *slot = (*slot).max(f);
        }
        // A live endpoint with nothing open has committed everything it was sent.
        for s in self.endpoints.values_mut() {
            if s.is_live() && s.files.is_empty() {
                s.raise(&parts, |p| frontiers[usize::from(p)]);
            }
        }
        let own: Vec<(&str, Vec<u64>)> = self
            .endpoints
            .iter()
            .filter(|(_, s)| {
                !s.files.is_empty()
                    || !s.is_live()
                    || parts
                        .iter()
                        .any(|&p| s.committed[usize::from(p)] != frontiers[usize::from(p)])
            })
            .map(|(n, s)| {
                (
                    n.as_str(),
                    parts.iter().map(|&p| s.committed[usize::from(p)]).collect(),
                )
            })
            .collect();
        let floor = parts
            .iter()
            .map(|&p| {
                own.iter()
                    .map(|(_, v)| v.iter().copied().min().unwrap_or(u64::MAX))
                    .chain([frontiers[usize::from(p)]])
                    .min()
                    .unwrap_or(0)
            })
            .min()
            .unwrap_or(0);
        let update = Update {
            sink: KIND,
            partitions: &parts,
            frontier: parts.iter().map(|&p| frontiers[usize::from(p)]).collect(),
            endpoints: own,
            intents: if renames.is_empty() {
                Vec::new()
            } else {
                vec![encode_renames(&renames)]
            },
            done: self.done_intents.clone(),
        };
        let written = self.store.write(&update);
        drop(update);
        let ids = match written {
            Ok(ids) => ids,
            Err(e) => {
                if !self.record_failing {
                    self.record_failing = true;
                    tracing::error!(worker = self.worker, error = %e, "cannot write the archive's commit record; nothing is committed (the ingest log keeps the data) until it can be");
                }
                return Err(io(
                    Path::new("commits"),
                    std::io::Error::other(e.to_string()),
                ));
            }
        };
        if self.record_failing {
            self.record_failing = false;
            tracing::info!(
                worker = self.worker,
                "the archive's commit record is written again"
            );
        }
        self.done_intents.clear();
        if let Some(id) = ids.first() {
            self.renames.push((*id, renames));
        }
        self.frontiers = frontiers;
        self.recorded = f;
        self.durable_floor = floor;
        self.last_record = Instant::now();
        self.written = false;
        let start = parts
            .iter()
            .map(|&p| self.frontiers[usize::from(p)])
            .min()
            .unwrap_or(f);
        self.health.frontier(self.worker, start);
        let names: Vec<String> = self.endpoints.keys().cloned().collect();
        names.iter().for_each(|n| self.publish(n));
        Ok(())
    }

    /// Commits endpoints whose files are due: each up to what it has completely written.
    pub(super) fn commit_due(&mut self, all: bool) -> Result<(), SinkError> {
        let max_age = self.config.max_age;
        let frontier = self.frontier;
        let due: Vec<(String, u64)> = self
            .endpoints
            .iter()
            .filter(|(_, s)| !s.files.is_empty())
            .filter(|(_, s)| all || s.opened.is_some_and(|t| t.elapsed() >= max_age))
            .filter_map(|(n, s)| {
                let hi = s.recovery.complete_below(frontier)?;
                s.last_offset
                    .is_none_or(|o| o < hi)
                    .then(|| (n.clone(), hi))
            })
            .collect();
        let mut first_err = None;
        for (name, hi) in due {
            if let Err(e) = self.commit_endpoint(&name, hi) {
                first_err.get_or_insert(self.fail(&name, e));
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}
