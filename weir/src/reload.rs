//! Hot reload of the rules directory: a changed set takes effect atomically; a broken one
//! is reported and the running set stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use weir_engine::RulesHandle;

#[derive(Debug, Default)]
pub struct ReloadStatus {
    pub reloads: AtomicU64,
    pub failures: AtomicU64,
}

/// Names, sizes and modification times of the rules files: cheap to compute, and it
/// changes whenever a file is added, removed or saved.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.path().extension().is_some_and(|x| x == "toml") && e.file_name() != "Cargo.toml"
        })
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some((e.path(), m.len(), m.modified().ok()))
        })
        .collect();
    v.sort();
    v
}

pub fn describe(set: &weir_rules::RuleSet) -> String {
    format!(
        "{} endpoint(s), {} route(s), fallback to {} endpoint(s), from {} file(s); version {}",
        set.endpoints.len(),
        set.routes.len(),
        set.fallback.len(),
        set.files.len(),
        set.version
    )
}

/// Polls `dir` every `every` and swaps in the new rule set when files change.
pub async fn watch_rules(
    dir: PathBuf,
    hostname: String,
    rules: RulesHandle,
    status: Arc<ReloadStatus>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last = fingerprint(&dir);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let now = fingerprint(&dir);
        if now == last {
            continue;
        }
        last = now;
        let (d, h) = (dir.clone(), hostname.clone());
        let loaded = tokio::task::spawn_blocking(move || {
            weir_rules::load_dir(&d, &h, crate::sinks::catalog())
        })
        .await;
        match loaded {
            Ok(Ok(set)) => {
                tracing::info!(rules = %describe(&set), "rules reloaded");
                rules.store(Arc::new(set));
                status.reloads.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(diags)) => {
                status.failures.fetch_add(1, Ordering::Relaxed);
                for d in &diags {
                    tracing::error!("{}", d.render(false));
                }
                tracing::error!(
                    errors = diags.len(),
                    "rules NOT reloaded; the previous rules stay in effect"
                );
            }
            Err(e) => tracing::error!(error = %e, "rules reload task failed"),
        }
    }
}
