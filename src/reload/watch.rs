//! Watching the config file: inotify events in, debounced [`Trigger::Watch`] reloads out.
//!
//! The watcher watches the file's *directory*, not the file, and keeps the events whose name
//! is the file's. Watching the file itself breaks with editors and tools that write a temp
//! file and rename it over the original (vim, `sed -i`): the watch follows the old inode,
//! which is gone. A directory watch sees the rename, a delete followed by a re-create, and
//! in-place writes alike.
//!
//! Only events that end a change are asked of the kernel: closes after writing, attribute
//! changes (`touch`), creates, deletes and renames. Opens, reads and single writes are not:
//! the config's directory is often shared (`/etc`), and every process that opens a file
//! there (the dynamic loader reads `/etc/ld.so.cache` at each program start) or writes to
//! a file there (a log) would otherwise wake the watcher; so would the reload's own read.
//!
//! A config reached through a symlink is followed two ways: the directory of the file the
//! link resolves to is watched too (an edit of the target), and in the config's own
//! directory any create, delete or rename counts (Kubernetes ConfigMap volumes swap a
//! `..data` symlink by rename; the new target is read by the reload). After each change the
//! link is resolved again, so once it points into another directory, edits there are seen.
//!
//! One save is a burst of events (create, modify, close, rename). The task waits for a quiet
//! period of [`DEBOUNCE`] after the last event, at most [`MAX_DELAY`] after the first, and
//! then reloads once. A reload that fails is logged and recorded by the reloader; the
//! watcher keeps watching.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Reloader, Trigger};

/// Quiet period after the last file event before the watcher reloads.
pub const DEBOUNCE: Duration = Duration::from_millis(30);
/// Longest a reload waits after the first event of a burst, however long the burst.
pub const MAX_DELAY: Duration = Duration::from_millis(300);

/// The events a watched directory reports: those that end a change of a file's content or
/// change which file a name refers to. No `OPEN`, `ACCESS` or `CLOSE_NOWRITE`, and no
/// `MODIFY`, which comes with every `write` (a log file beside the config would wake the
/// watcher per line): a writer's changes are seen when it closes the file.
const CHANGES: WatchMask = WatchMask::CLOSE_WRITE
    .union(WatchMask::ATTRIB)
    .union(WatchMask::CREATE)
    .union(WatchMask::DELETE)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::MOVE_SELF);

/// Events on a name in a directory that can re-point a symlink.
const RELINKS: EventMask = EventMask::CREATE
    .union(EventMask::DELETE)
    .union(EventMask::MOVED_FROM)
    .union(EventMask::MOVED_TO);

/// Which events mean the config file may have changed.
#[derive(Debug)]
struct Interest {
    /// The config path's directory and file name.
    dir: WatchDescriptor,
    name: OsString,
    /// The config path is a symlink: any re-linking event in `dir` counts.
    symlinked: bool,
    /// The directory and file name the symlink resolved to last.
    target: Option<(WatchDescriptor, OsString)>,
    /// The config path, resolved again after each change when `symlinked`.
    path: PathBuf,
}

impl Interest {
    fn concerns(&self, wd: &WatchDescriptor, mask: EventMask, name: Option<&OsString>) -> bool {
        if mask.contains(EventMask::Q_OVERFLOW) {
            tracing::warn!("config watcher lost events (queue overflow); reloading to be safe");
            return true;
        }
        // The target may be in `dir` itself (inotify then gives its watch the same id).
        let on_target =
            matches!(&self.target, Some((dir, target)) if wd == dir && name == Some(target));
        on_target
            || (*wd == self.dir
                && (name == Some(&self.name) || (self.symlinked && mask.intersects(RELINKS))))
    }

    /// Resolves the symlink again and watches the directory its target is in now (adding a
    /// watch of a directory already watched gives back the same descriptor). A directory
    /// the link no longer points into keeps its watch until it is removed (Kubernetes
    /// removes the old version's); its events no longer concern the file.
    fn follow_link(&mut self, watches: &mut Watches) {
        if !self.symlinked {
            return;
        }
        self.target = watch_target(&self.path, watches);
    }
}

/// Watches the directory of the file `path` (a symlink) resolves to; that directory's watch
/// and the file's name there, if the link resolves and the directory can be watched.
fn watch_target(path: &Path, watches: &mut Watches) -> Option<(WatchDescriptor, OsString)> {
    let (target_dir, target_name) = std::fs::canonicalize(path).and_then(|t| split(&t)).ok()?;
    // Best effort: the link may point at a directory we cannot watch; the re-linking
    // events in the config's own directory still count.
    match watches.add(&target_dir, CHANGES) {
        Ok(wd) => Some((wd, target_name)),
        Err(error) => {
            tracing::warn!(
                dir = %target_dir.display(), %error,
                "cannot watch the config symlink's target directory"
            );
            None
        }
    }
}

/// Starts watching `path`; reloads through `reloader` until `shutdown` fires.
pub(crate) fn spawn(
    reloader: Reloader,
    path: &Path,
    shutdown: CancellationToken,
) -> io::Result<JoinHandle<()>> {
    let (dir, name) = split(path)?;
    let inotify = Inotify::init()?;
    let mut watches = inotify.watches();
    let symlinked = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    let dir_wd = watches.add(&dir, CHANGES)?;
    let target = symlinked
        .then(|| watch_target(path, &mut watches))
        .flatten();
    let interest = Interest {
        dir: dir_wd,
        name,
        symlinked,
        target,
        path: path.to_owned(),
    };
    let events = inotify.into_event_stream([0u8; 4096])?;
    tracing::info!(dir = %dir.display(), file = %path.display(), "watching the config file");
    Ok(tokio::spawn(run(
        events, watches, interest, reloader, shutdown,
    )))
}

/// A path's directory (`.` for a bare file name) and file name.
fn split(path: &Path) -> io::Result<(PathBuf, OsString)> {
    let name = path.file_name().map(OsString::from).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the config path has no file name",
        )
    })?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    Ok((dir, name))
}

/// Debounces the events that concern the file into reloads.
async fn run(
    mut events: inotify::EventStream<[u8; 4096]>,
    mut watches: Watches,
    mut interest: Interest,
    reloader: Reloader,
    shutdown: CancellationToken,
) {
    // The next event that concerns the file; `false` when the stream has ended.
    let next_change = async |events: &mut inotify::EventStream<[u8; 4096]>, interest: &Interest| {
        while let Some(event) = events.next().await {
            match event {
                Ok(e) if interest.concerns(&e.wd, e.mask, e.name.as_ref()) => return true,
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "config watcher failed; reloads need SIGHUP now");
                    return false;
                }
            }
        }
        false
    };
    loop {
        let changed = tokio::select! {
            changed = next_change(&mut events, &interest) => changed,
            () = shutdown.cancelled() => false,
        };
        if !changed {
            break;
        }
        let deadline = Instant::now() + MAX_DELAY;
        loop {
            let quiet = (Instant::now() + DEBOUNCE).min(deadline);
            tokio::select! {
                changed = next_change(&mut events, &interest) => if !changed { break },
                () = tokio::time::sleep_until(quiet) => break,
                () = shutdown.cancelled() => return,
            }
        }
        interest.follow_link(&mut watches);
        // The reloader logs and records the outcome; nothing more to do with it here.
        let _ = reloader.reload(Trigger::Watch).await;
    }
}
