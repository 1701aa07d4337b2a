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
