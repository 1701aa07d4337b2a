//! `[cluster]`: reading the hosts file that makes this process one of several (decision 037).

use std::path::Path;

use anyhow::{Context, bail};
use serde::Deserialize;
use weir_engine::cluster::ClusterConfig;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    hosts: String,
    process: usize,
}

/// The cluster this process belongs to, from `[cluster]` and `--process`/`--hosts`;
/// `None` when no hosts file is named.
pub fn load(
    section: &ClusterSection,
    process: Option<usize>,
    hosts: Option<&Path>,
) -> anyhow::Result<Option<ClusterConfig>> {
    let path = match hosts {
        Some(p) => p.to_path_buf(),
        None if section.hosts.is_empty() => {
            if process.is_some() {
                bail!("--process needs a hosts file: --hosts FILE or `cluster.hosts`");
            }
            return Ok(None);
        }
        None => section.hosts.clone().into(),
    };
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "`cluster.hosts`: cannot read {} (one host:port a line, in process order)",
            path.display()
        )
    })?;
    let hosts =
        parse_hosts(&text).with_context(|| format!("`cluster.hosts`: in {}", path.display()))?;
    let process = process.unwrap_or(section.process);
    if process >= hosts.len() {
        bail!(
            "`cluster.process` = {process}, but {} names {} process(es): the index counts from 0",
            path.display(),
            hosts.len()
        );
    }
    Ok(Some(ClusterConfig { process, hosts }))
}

/// One `host:port` a line; blank lines and `#` comments are skipped.
fn parse_hosts(text: &str) -> anyhow::Result<Vec<String>> {
    let mut hosts = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let ok = line
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !ok {
            bail!("line {}: {line:?} is not host:port", n + 1);
        }
        if hosts.iter().any(|h| h == line) {
            bail!("line {}: {line} is named twice", n + 1);
        }
        hosts.push(line.to_string());
    }
    if hosts.is_empty() {
        bail!("no host:port lines");
    }
    Ok(hosts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_files_are_read_and_mistakes_named() {
        let h = parse_hosts("# three on loopback\n127.0.0.1:7100\n\n127.0.0.1:7101 # b\n")
            .expect("valid");
        assert_eq!(h, vec!["127.0.0.1:7100", "127.0.0.1:7101"]);
        let e = parse_hosts("127.0.0.1:7100\nlocalhost\n").expect_err("no port");
        assert!(e.to_string().contains("line 2"), "{e}");
        assert!(parse_hosts("a:1\na:1\n").is_err(), "duplicates");
        assert!(parse_hosts("# nothing\n").is_err());
        assert!(parse_hosts("a:0\n").is_err());
    }

    #[test]
    fn the_process_index_must_name_a_line() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("hosts");
        std::fs::write(&file, "127.0.0.1:7100\n127.0.0.1:7101\n").expect("write");
        let section = ClusterSection {
            hosts: String::new(),
            process: 0,
        };
        assert!(load(&section, None, None).expect("alone").is_none());
        let c = load(&section, Some(1), Some(&file))
            .expect("valid")
            .expect("cluster");
        assert_eq!((c.process, c.processes()), (1, 2));
        let e = load(&section, Some(2), Some(&file)).expect_err("out of range");
        assert!(e.to_string().contains("cluster.process"), "{e}");
        assert!(
            load(&section, Some(0), None).is_err(),
            "--process without hosts"
        );
    }
}

/// What a data directory last ran as: which process of how many, with how many workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shape {
    process: usize,
    processes: usize,
    workers: usize,
}

impl Shape {
    fn text(&self) -> String {
        format!(
            "process={} processes={} workers={}\n",
            self.process, self.processes, self.workers
        )
    }

    fn parse(text: &str) -> Option<Shape> {
        let field = |name: &str| -> Option<usize> {
            text.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))?
                .parse()
                .ok()
        };
        Some(Shape {
            process: field("process")?,
            processes: field("processes")?,
            workers: field("workers")?,
        })
    }
}

const SHAPE_FILE: &str = "cluster-shape";

/// Refuses to start a data directory in another cluster shape than it ran in. Partitions
/// would move between processes, and each process keeps the commit points of the
/// partitions it owned: a new owner would archive again what the old one had committed.
/// Alone, the worker count may change (one commit store holds every partition).
pub fn check_shape(
    data_dir: &Path,
    cluster: Option<&ClusterConfig>,
    workers: usize,
) -> anyhow::Result<()> {
    let now = Shape {
        process: cluster.map_or(0, |c| c.process),
        processes: cluster.map_or(1, ClusterConfig::processes),
        workers,
    };
    let path = data_dir.join(SHAPE_FILE);
    let before = match std::fs::read_to_string(&path) {
        Ok(text) => Shape::parse(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let ran_before = data_dir.join("commits.redb").exists();
    let refuse = match before {
        Some(b) => b != now && (b.processes > 1 || now.processes > 1),
        None => ran_before && now.processes > 1,
    };
    if refuse {
        let was = before.map_or("alone, by an older Weir".to_string(), |b| {
            format!(
                "as process {} of {} with {} worker(s) each",
                b.process, b.processes, b.workers
            )
        });
        bail!(
            "{} ran {was}; a cluster's shape cannot change yet (decision 037): start it as before \
             (the same hosts file, --process and --workers), or give this process an empty data directory",
            data_dir.display()
        );
    }
    if before != Some(now) {
        // Private like everything in the data directory.
        weir_storage::secret::write_private(&path, now.text().as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod shape_tests {
    use super::*;

    fn cluster(process: usize, n: usize) -> ClusterConfig {
        ClusterConfig {
            process,
            hosts: (0..n).map(|i| format!("127.0.0.1:{}", 7000 + i)).collect(),
        }
    }

    #[test]
    fn a_cluster_keeps_its_shape_and_a_lone_process_may_change_workers() {
        let dir = tempfile::tempdir().expect("tmp");
        check_shape(dir.path(), None, 2).expect("first start");
        std::fs::write(dir.path().join("commits.redb"), b"").expect("ran");
        check_shape(dir.path(), None, 4).expect("alone, workers may change");
        let e = check_shape(dir.path(), Some(&cluster(0, 2)), 4).expect_err("alone to cluster");
        assert!(e.to_string().contains("cannot change"), "{e}");

        let dir = tempfile::tempdir().expect("tmp");
        check_shape(dir.path(), Some(&cluster(1, 3)), 2).expect("first start");
        std::fs::write(dir.path().join("commits.redb"), b"").expect("ran");
        check_shape(dir.path(), Some(&cluster(1, 3)), 2).expect("same shape");
        assert!(
            check_shape(dir.path(), Some(&cluster(1, 4)), 2).is_err(),
            "more processes"
        );
        assert!(
            check_shape(dir.path(), Some(&cluster(1, 3)), 1).is_err(),
            "fewer workers"
        );
        assert!(
            check_shape(dir.path(), Some(&cluster(2, 3)), 2).is_err(),
            "another index"
        );
        assert!(
            check_shape(dir.path(), None, 2).is_err(),
            "cluster to alone"
        );
    }
}
