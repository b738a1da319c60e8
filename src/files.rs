//! Files that hold codes or keys: created owner-only (0600) whatever the umask, and key files trusted
//! only when nobody but this user (or root) could have written them.

use std::fs::File;
use std::io::Read as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

/// The permission bits a file of codes or keys gets: read and write for its owner only.
const OWNER_ONLY: u32 = 0o600;

/// Why a key file is refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Owned by someone else than this user or root: it may have been planted.
    #[error(
        "{path} is owned by uid {owner}, neither this process's user (uid {me}) nor root: someone else \
         may have planted it; remove it, or chown it to this user"
    )]
    ForeignOwner {
        /// The file.
        path: String,
        /// Its owner.
        owner: u32,
        /// This process's effective user.
        me: u32,
    },
    /// Writable by group or others: anyone in those could replace the key.
    #[error("{path} is writable by group or others (mode {mode:04o}); chmod 600 {path}")]
    WritableByOthers {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// It could not be opened or read.
    #[error("cannot read {path}: {reason}")]
    Unreadable {
        /// The file.
        path: String,
        /// The I/O error.
        reason: String,
    },
}

/// Reads a key file, refusing one that another user owns (root excepted: a Kubernetes secret volume
/// is root's) or that group or others may write. The checks are made on the opened file.
pub fn read_key_file(path: &Path) -> Result<String, KeyFileError> {
    let shown = path.display().to_string();
    let unreadable = |e: std::io::Error| KeyFileError::Unreadable {
        path: shown.clone(),
        reason: e.to_string(),
    };
    let mut file = File::open(path).map_err(unreadable)?;
    let meta = file.metadata().map_err(unreadable)?;
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(KeyFileError::ForeignOwner {
            path: shown,
            owner: meta.uid(),
            me,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(KeyFileError::WritableByOthers { path: shown, mode });
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(unreadable)?;
    Ok(text)
}

/// Creates `path` (which must not exist) readable and writable by its owner only, whatever the umask.
pub fn create_private(path: &Path) -> std::io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(OWNER_ONLY)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(OWNER_ONLY))?;
    Ok(file)
}

/// Logs one warning if `path` exists and others than its owner may read it.
pub fn warn_if_shared(path: &Path, what: &str) {
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format_args!("{mode:04o}"),
                "{what} is readable by other users than its owner; chmod 600 it (and its -wal and -shm files)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_file_is_owner_only_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        create_private(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(
            create_private(&path).is_err(),
            "never over an existing file"
        );
    }

    #[test]
    fn a_key_file_others_may_write_is_refused_and_a_private_one_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "k3y").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let refused = read_key_file(&path).unwrap_err();
        assert!(matches!(
            refused,
            KeyFileError::WritableByOthers { mode: 0o666, .. }
        ));
        assert!(refused.to_string().contains("chmod 600"), "{refused}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_key_file(&path).unwrap(), "k3y");
    }
}
