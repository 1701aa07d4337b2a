//! The open-file limit, raised as far as this process may: every connection (the hub's,
//! or a simulator's) is a file descriptor.

/// Raises the hard `RLIMIT_NOFILE` to the kernel's `fs.nr_open` where that is allowed
/// (root, `CAP_SYS_RESOURCE`), then the soft limit to the hard one; returns the soft limit.
pub fn raise() -> std::io::Result<u64> {
    if let Some(ceiling) = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
    {
        // Refused without the privilege: the hard limit stays as it is.
        let _ = rlimit::Resource::NOFILE.set(ceiling, ceiling);
    }
    rlimit::increase_nofile_limit(u64::MAX)
}
