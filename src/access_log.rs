//! Access log: one JSON object per line per request (SPEC section 9).
//!
//! The request path never formats or writes: it fills a [`Pending`] entry, and when the
//! response ends the entry goes through a bounded lock-free channel to one writer thread that
//! serialises it and writes it to stdout or a file, flushing whenever the channel runs dry.
//! When the writer falls behind by more than [`DEFAULT_QUEUE`] entries, new entries are
//! dropped and counted rather than slowing traffic down; the count is logged by the writer.

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderValue, Method};
use serde::Serialize;
use tokio::time::Instant;

use crate::config::AccessLog;

/// Entries that may wait for the writer before new ones are dropped.
pub const DEFAULT_QUEUE: usize = 64 * 1024;

/// The sending side of the access log; cheap to share.
#[derive(Debug)]
pub struct Logger {
    tx: SyncSender<Entry>,
    dropped: Arc<AtomicU64>,
}

/// Everything known about a request when its response ends.
#[derive(Debug)]
pub struct Entry {
    /// When the request arrived.
    pub time: SystemTime,
    /// Client IP address.
    pub client: IpAddr,
    /// Request method.
    pub method: Method,
    /// Host as the client sent it.
    pub host: String,
    /// Request path (without query).
    pub path: String,
    /// Status sent to the client.
    pub status: u16,
    /// Response body bytes sent.
    pub bytes: u64,
    /// Time from request head to the end of the response body.
    pub duration_ms: f64,
    /// Matched route, if any.
    pub route: Option<Arc<str>>,
    /// Pool of that route, if any.
    pub pool: Option<Arc<str>>,
    /// Upstream that answered, if any.
    pub upstream: Option<Arc<str>>,
    /// The request's `X-Request-Id`.
    pub request_id: Option<HeaderValue>,
}

/// An entry waiting for its response to end.
#[derive(Debug)]
pub struct Pending {
    logger: Arc<Logger>,
    started: Instant,
    entry: Entry,
}

// === impl Logger ===

impl Logger {
    /// Starts the writer for `target`; `None` when the log is off.
    pub fn start(target: &AccessLog) -> io::Result<Option<Arc<Logger>>> {
        let out: Box<dyn Write + Send> = match target {
            AccessLog::Off => return Ok(None),
            AccessLog::Stdout => Box::new(io::stdout()),
            AccessLog::File(path) => Box::new(open_append(path)?),
        };
        let (tx, rx) = mpsc::sync_channel(DEFAULT_QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let counter = dropped.clone();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_loop(rx, BufWriter::new(out), &counter))?;
        Ok(Some(Arc::new(Logger { tx, dropped })))
    }

    fn send(&self, entry: Entry) {
        match self.tx.try_send(entry) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn open_append(path: &Path) -> io::Result<std::fs::File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn write_loop(rx: Receiver<Entry>, mut out: BufWriter<Box<dyn Write + Send>>, dropped: &AtomicU64) {
    let mut line = Vec::with_capacity(512);
    while let Ok(entry) = rx.recv() {
        let mut next = Some(entry);
        while let Some(entry) = next {
            line.clear();
            if serde_json::to_writer(&mut line, &Line::from(&entry)).is_ok() {
                line.push(b'\n');
                if let Err(error) = out.write_all(&line) {
                    tracing::warn!(%error, "access log write failed");
                }
            }
            next = rx.try_recv().ok();
        }
        if let Err(error) = out.flush() {
            tracing::warn!(%error, "access log flush failed");
        }
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            tracing::warn!(lost, "access log fell behind; entries dropped");
        }
    }
}

/// The JSON shape of one line.
#[derive(Serialize)]
struct Line<'a> {
    time: String,
    client: IpAddr,
    method: &'a str,
    host: &'a str,
    path: &'a str,
    status: u16,
    bytes: u64,
    duration_ms: f64,
    route: &'a str,
    pool: &'a str,
    upstream: &'a str,
    request_id: &'a str,
}

impl<'a> From<&'a Entry> for Line<'a> {
    fn from(e: &'a Entry) -> Line<'a> {
        Line {
            time: humantime::format_rfc3339_millis(e.time).to_string(),
            client: e.client,
            method: e.method.as_str(),
            host: &e.host,
            path: &e.path,
            status: e.status,
            bytes: e.bytes,
            duration_ms: (e.duration_ms * 1000.0).round() / 1000.0,
            route: e.route.as_deref().unwrap_or(""),
            pool: e.pool.as_deref().unwrap_or(""),
            upstream: e.upstream.as_deref().unwrap_or(""),
            request_id: e
                .request_id
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
        }
    }
}

// === impl Pending ===

impl Pending {
    /// Starts an entry for a request that arrived at `started`.
    pub fn new(logger: Arc<Logger>, started: Instant, entry: Entry) -> Pending {
        Pending {
            logger,
            started,
            entry,
        }
    }

    /// Mutable access to the entry while the request is being handled.
    pub fn entry_mut(&mut self) -> &mut Entry {
        &mut self.entry
    }

    /// Completes the entry with the body size and sends it to the writer.
    pub fn write(mut self, bytes: u64) {
        self.entry.bytes = bytes;
        self.entry.duration_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        self.logger.send(self.entry);
    }
}
