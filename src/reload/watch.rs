//! Watching the config file: `notify` events in, debounced [`Trigger::Watch`] reloads out.
//!
//! The watcher watches the file's *directory*, not the file, and keeps the events whose path
//! has the file's name. Watching the file itself breaks with editors and tools that write a
//! temp file and rename it over the original (vim, `sed -i`, Kubernetes-style atomic writes):
//! the watch follows the old inode, which is gone. A directory watch sees the rename, a
//! delete followed by a re-create, and in-place writes alike.
//!
//! One save is a burst of events (create, modify, close, rename). The task waits for a quiet
//! period of [`DEBOUNCE`] after the last event, at most [`MAX_DELAY`] after the first, and
//! then reloads once. Open and read events are ignored (the reload's own read would trigger
//! another). A reload that fails is logged and recorded by the reloader; the watcher keeps
//! watching.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Reloader, Trigger};

/// Quiet period after the last file event before the watcher reloads.
pub const DEBOUNCE: Duration = Duration::from_millis(30);
/// Longest a reload waits after the first event of a burst, however long the burst.
pub const MAX_DELAY: Duration = Duration::from_millis(300);

/// Starts watching `path`; reloads through `reloader` until `shutdown` fires.
pub(crate) fn spawn(
    reloader: Reloader,
    path: &Path,
    shutdown: CancellationToken,
) -> notify::Result<JoinHandle<()>> {
    let Some(name) = path.file_name().map(OsString::from) else {
        return Err(notify::Error::generic("the config path has no file name"));
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<Event>| {
        let relevant = match event {
            Ok(event) => {
                concerns_file(&event.kind)
                    && event.paths.iter().any(|p| p.file_name() == Some(&name))
            }
            // The kernel dropped events (queue overflow): reload to be safe.
            Err(error) => {
                tracing::warn!(%error, "config watcher error; reloading to be safe");
                true
            }
        };
        // A send fails only once the watch task is gone, at shutdown.
        if relevant {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    tracing::info!(dir = %dir.display(), file = %path.display(), "watching the config file");
    Ok(tokio::spawn(run(watcher, rx, reloader, shutdown)))
}

/// Whether an event kind may mean the file's content changed.
fn concerns_file(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Debounces events into reloads; owns the watcher so it lives as long as the task.
async fn run(
    watcher: RecommendedWatcher,
    mut events: mpsc::UnboundedReceiver<()>,
    reloader: Reloader,
    shutdown: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            event = events.recv() => event,
            () = shutdown.cancelled() => None,
        };
        if first.is_none() {
            break;
        }
        let deadline = Instant::now() + MAX_DELAY;
        loop {
            let quiet = (Instant::now() + DEBOUNCE).min(deadline);
            tokio::select! {
                event = events.recv() => if event.is_none() { break },
                () = tokio::time::sleep_until(quiet) => break,
                () = shutdown.cancelled() => return,
            }
        }
        // The reloader logs and records the outcome; nothing more to do with it here.
        let _ = reloader.reload(Trigger::Watch).await;
    }
    drop(watcher);
}
