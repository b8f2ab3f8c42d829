//! Reading the client's secret files — the advertiser key (`--key`) and the
//! API key (`--api-key-file`) — only when they are safely the user's own.
//!
//! The file is opened with `O_NOFOLLOW` (a symlink as the last path component
//! is refused; directories on the way may be links) and `O_NONBLOCK` (a FIFO
//! cannot hang the open), then judged on the *opened* handle (`fstat`), so
//! nothing can be swapped between the check and the read: it must be a
//! regular file, owned by the effective user running `onboard`, with no
//! permission bit for group or others (`chmod 600`). The same rule holds for
//! both files: an API key readable by others is as leaked as an advertiser
//! key, so group/other *read* is refused too, not only write.

use crate::error::ClientError;
use rustix::fs::{Mode, OFlags};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use zeroize::Zeroizing;

pub use crate::error::{KeyFileProblem, MAX_KEY_FILE_BYTES};

/// What `fstat` says of an opened file, as far as the rule is concerned.
#[derive(Debug, Clone, Copy)]
struct Facts {
    kind: Option<&'static str>,
    owner: u32,
    mode: u32,
    len: u64,
}

impl Facts {
    fn of(meta: &std::fs::Metadata) -> Self {
        let t = meta.file_type();
        let kind = if t.is_file() {
            None
        } else if t.is_dir() {
            Some("directory")
        } else if t.is_fifo() {
            Some("FIFO")
        } else if t.is_socket() {
            Some("socket")
        } else if t.is_block_device() || t.is_char_device() {
            Some("device")
        } else {
            Some("special file")
        };
        Self {
            kind,
            owner: meta.uid(),
            mode: meta.mode() & 0o777,
            len: meta.len(),
        }
    }
}

/// The rule, on facts: regular, ours, `0o077` bits clear, small.
fn judge(facts: Facts, euid: u32) -> Result<(), KeyFileProblem> {
    if let Some(kind) = facts.kind {
        return Err(KeyFileProblem::NotRegular(kind));
    }
    if facts.owner != euid {
        return Err(KeyFileProblem::NotOwned {
            owner: facts.owner,
            euid,
        });
    }
    if facts.mode & 0o077 != 0 {
        return Err(KeyFileProblem::OpenToOthers { mode: facts.mode });
    }
    if facts.len > MAX_KEY_FILE_BYTES {
        return Err(KeyFileProblem::TooLarge);
    }
    Ok(())
}

/// Open `path` without following a final symlink, check the opened file and
/// read it as text.
pub fn read_key_file(path: &Path) -> Result<Zeroizing<String>, ClientError> {
    let refuse = |problem| ClientError::UnsafeKeyFile {
        path: path.to_owned(),
        problem,
    };
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| {
        // Linux answers ELOOP for a final symlink under O_NOFOLLOW (the BSDs EMLINK).
        if errno == rustix::io::Errno::LOOP || errno == rustix::io::Errno::MLINK {
            refuse(KeyFileProblem::Symlink)
        } else {
            ClientError::read(path, std::io::Error::from(errno))
        }
    })?;
    let file = std::fs::File::from(fd);
    let meta = file.metadata().map_err(|e| ClientError::read(path, e))?;
    judge(Facts::of(&meta), rustix::process::geteuid().as_raw()).map_err(refuse)?;
    let mut text = Zeroizing::new(String::new());
    file.take(MAX_KEY_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| ClientError::read(path, e))?;
    if text.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(refuse(KeyFileProblem::TooLarge));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn me() -> u32 {
        rustix::process::geteuid().as_raw()
    }

    fn key_file(dir: &Path, mode: u32) -> std::path::PathBuf {
        let path = dir.join(format!("k{mode:o}"));
        std::fs::write(&path, "secret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    fn problem(path: &Path) -> KeyFileProblem {
        match read_key_file(path) {
            Err(ClientError::UnsafeKeyFile { problem, .. }) => problem,
            other => panic!("{}: {other:?}", path.display()),
        }
    }

    #[test]
    fn a_private_regular_file_of_ours_is_read() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o600, 0o400, 0o700] {
            assert_eq!(
                read_key_file(&key_file(dir.path(), mode)).unwrap().as_str(),
                "secret\n"
            );
        }
    }

    #[test]
    fn any_group_or_other_bit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o644, 0o640, 0o604, 0o620, 0o602, 0o610, 0o601] {
            assert_eq!(
                problem(&key_file(dir.path(), mode)),
                KeyFileProblem::OpenToOthers { mode },
                "{mode:o}"
            );
        }
        let text = read_key_file(&key_file(dir.path(), 0o660))
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("mode 660") && text.contains("chmod 600"),
            "{text}"
        );
    }

    #[test]
    fn symlinks_are_refused_even_to_a_good_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = key_file(dir.path(), 0o600);
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert_eq!(problem(&link), KeyFileProblem::Symlink);
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink(dir.path().join("none"), &dangling).unwrap();
        assert_eq!(problem(&dangling), KeyFileProblem::Symlink);
    }

    #[test]
    fn directories_and_fifos_are_refused_without_hanging() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(problem(dir.path()), KeyFileProblem::NotRegular("directory"));
        let fifo = dir.path().join("fifo");
        rustix::fs::mkfifoat(rustix::fs::CWD, &fifo, Mode::from_raw_mode(0o600)).unwrap();
        assert_eq!(problem(&fifo), KeyFileProblem::NotRegular("FIFO"));
    }

    #[test]
    fn large_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = key_file(dir.path(), 0o600);
        std::fs::write(&path, vec![b'a'; MAX_KEY_FILE_BYTES as usize + 1]).unwrap();
        assert_eq!(problem(&path), KeyFileProblem::TooLarge);
    }

    #[test]
    fn a_file_of_another_user_is_refused() {
        let facts = Facts {
            kind: None,
            owner: me() + 1,
            mode: 0o600,
            len: 10,
        };
        assert_eq!(
            judge(facts, me()),
            Err(KeyFileProblem::NotOwned {
                owner: me() + 1,
                euid: me()
            })
        );
        assert_eq!(
            judge(
                Facts {
                    owner: me(),
                    ..facts
                },
                me()
            ),
            Ok(())
        );
        // Through a real file, where the test may change owners (root).
        if me() == 0 {
            let dir = tempfile::tempdir().unwrap();
            let path = key_file(dir.path(), 0o600);
            std::os::unix::fs::chown(&path, Some(65_534), None).unwrap();
            assert!(matches!(
                problem(&path),
                KeyFileProblem::NotOwned {
                    owner: 65_534,
                    euid: 0
                }
            ));
        }
    }

    #[test]
    fn missing_files_are_named() {
        let e = read_key_file(Path::new("/nonexistent/adv.key")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/adv.key"), "{e}");
    }
}
