//! File-system steps that durability and privacy depend on: directories whose creation
//! survives a power loss, and files only the hub's user can read.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Directories the hub creates: owner only.
pub const DIR_MODE: u32 = 0o700;
/// Files holding keys or device data: owner only.
pub const FILE_MODE: u32 = 0o600;

/// Makes `dir`'s entries (new files, renames, removals) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and any missing parents (mode 0700), and syncs each parent that gained an
/// entry, so a file synced inside it cannot vanish with its directory after a power loss.
pub fn create_dir_durable(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(d) = cur {
        if d.as_os_str().is_empty() || d.is_dir() {
            break;
        }
        missing.push(d);
        cur = d.parent();
    }
    for d in missing.into_iter().rev() {
        match DirBuilder::new().mode(DIR_MODE).create(d) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && d.is_dir() => continue,
            Err(e) => return Err(e),
        }
        if let Some(parent) = d.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

/// Creates (or truncates) `path` readable and writable by the owner only.
pub fn create_private(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)
}

/// Makes an existing file owner-only (files made by earlier versions, or by a library that
/// does not take a mode). A missing file is fine.
pub fn restrict(path: &Path) -> io::Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if m.permissions().mode() & 0o077 != 0 => {
            let mode = if m.is_dir() { DIR_MODE } else { FILE_MODE };
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Prepares a database file that a library will open: created empty and owner-only when
/// missing (the library then initialises it), made owner-only when it exists.
pub fn private_db_file(path: &Path) -> io::Result<()> {
    if path.exists() {
        return restrict(path);
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_private_directories_and_files() {
        let t = tempfile::tempdir().expect("tmp");
        let deep = t.path().join("a/b/c");
        create_dir_durable(&deep).expect("dirs");
        for d in ["a", "a/b", "a/b/c"] {
            let mode = std::fs::metadata(t.path().join(d))
                .expect("dir")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, DIR_MODE, "{d}");
        }
        create_dir_durable(&deep).expect("idempotent");
        let f = deep.join("f");
        create_private(&f).expect("file");
        assert_eq!(
            std::fs::metadata(&f).expect("f").permissions().mode() & 0o777,
            FILE_MODE
        );
        std::fs::write(t.path().join("open"), b"x").expect("write");
        std::fs::set_permissions(
            t.path().join("open"),
            std::fs::Permissions::from_mode(0o644),
        )
        .expect("chmod");
        restrict(&t.path().join("open")).expect("restrict");
        assert_eq!(
            std::fs::metadata(t.path().join("open"))
                .expect("f")
                .permissions()
                .mode()
                & 0o777,
            FILE_MODE
        );
        restrict(&t.path().join("missing")).expect("a missing file is fine");
        let blocked = t.path().join("file-not-dir");
        std::fs::write(&blocked, b"x").expect("write");
        assert!(create_dir_durable(&blocked.join("sub")).is_err());
    }
}
