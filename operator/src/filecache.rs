//! What a spawn reads from disk on every request, kept per process: the
//! template's text and whether a --kernel file was readable. The resident
//! spawner (crate::serve) serves many spawns; under TCG each syscall of a
//! PV dom0 goes through Xen, so re-reading the same files costs each
//! request ms. A cached entry is used only while one `stat` of the file
//! gives the same stamp (device, inode, length, mtime and ctime: an edit
//! in place changes ctime even when it keeps the length and resets the
//! mtime, a replacement by rename changes the inode); otherwise it is read
//! and checked again. The CLI, one spawn per process, gains nothing and
//! loses one stat. File times tick with the kernel's coarse clock (a few
//! ms): a rewrite in place that keeps the length within that tick of the
//! read that filled the entry would go unseen, which is why this is for
//! files an operator edits by hand, not for the records spawns write.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// What one `stat` says of a file: equal stamps, the same contents.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    let m = std::fs::metadata(path)?;
    Ok(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

/// Entries a cache holds at most: --kernel may name a new file each
/// request; past this the cache starts again, empty.
const MAX_ENTRIES: usize = 64;

static TEXTS: Mutex<Option<HashMap<PathBuf, (Stamp, String)>>> = Mutex::new(None);
static READABLE: Mutex<Option<HashMap<PathBuf, Stamp>>> = Mutex::new(None);

/// `path`'s text (as std::fs::read_to_string), from the cache while its
/// stamp is unchanged.
pub fn read_text(path: &Path) -> std::io::Result<String> {
    let before = stamp(path)?;
    let mut cache = TEXTS.lock().unwrap_or_else(|p| p.into_inner());
    let map = cache.get_or_insert_with(HashMap::new);
    if let Some((s, text)) = map.get(path) {
        if *s == before {
            return Ok(text.clone());
        }
    }
    let text = std::fs::read_to_string(path)?;
    // Kept only if nothing changed while it was read.
    if stamp(path).ok() == Some(before) {
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        map.insert(path.to_path_buf(), (before, text.clone()));
    } else {
        map.remove(path);
    }
    Ok(text)
}

/// Whether `path` is a file this process can open for reading; a yes is
/// remembered while its stamp is unchanged (a chmod changes the ctime).
pub fn readable_file(path: &Path) -> bool {
    let Ok(now) = stamp(path) else {
        return false;
    };
    let mut cache = READABLE.lock().unwrap_or_else(|p| p.into_inner());
    let map = cache.get_or_insert_with(HashMap::new);
    if map.get(path) == Some(&now) {
        return true;
    }
    let ok = path.is_file() && std::fs::File::open(path).is_ok();
    if ok {
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        map.insert(path.to_path_buf(), now);
    } else {
        map.remove(path);
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mp-fc-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_changed_template_is_read_again_even_with_its_length_and_mtime_kept() {
        let d = dir("text");
        let p = d.join("template.cfg");
        std::fs::write(&p, "name = \"@NAME@\"\n").unwrap();
        assert_eq!(read_text(&p).unwrap(), "name = \"@NAME@\"\n");
        // Unchanged: the same text (served from the cache).
        assert_eq!(read_text(&p).unwrap(), "name = \"@NAME@\"\n");
        // Rewritten in place, same length, its mtime set back: the ctime
        // still moves.
        let mtime = std::fs::metadata(&p).unwrap().modified().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&p, "name = \"@MAME@\"\n").unwrap();
        let f = std::fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(mtime).unwrap();
        drop(f);
        assert_eq!(read_text(&p).unwrap(), "name = \"@MAME@\"\n");
        // Replaced by a rename (a new inode), with an older mtime.
        let tmp = d.join("new");
        std::fs::write(&tmp, "other\n").unwrap();
        let f = std::fs::File::options().write(true).open(&tmp).unwrap();
        f.set_modified(SystemTime::UNIX_EPOCH).unwrap();
        drop(f);
        std::fs::rename(&tmp, &p).unwrap();
        assert_eq!(read_text(&p).unwrap(), "other\n");
        // Gone: the error, not the cached text.
        std::fs::remove_file(&p).unwrap();
        assert!(read_text(&p).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_kernel_made_unreadable_or_removed_is_noticed() {
        use std::os::unix::fs::PermissionsExt;
        let d = dir("kernel");
        let p = d.join("kernel");
        std::fs::write(&p, "ELF").unwrap();
        assert!(readable_file(&p));
        assert!(readable_file(&p));
        assert!(!readable_file(&d), "a directory is not a kernel file");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o000)).unwrap();
        // Root opens it anyway; anyone else may not. Either way the answer
        // is the open's, not the cache's.
        let can = std::fs::File::open(&p).is_ok();
        assert_eq!(readable_file(&p), can);
        std::fs::remove_file(&p).unwrap();
        assert!(!readable_file(&p));
        let _ = std::fs::remove_dir_all(&d);
    }
}
