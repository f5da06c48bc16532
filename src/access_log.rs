//! Access log: one JSON object per line per request (SPEC section 9).
//!
//! The request path never formats or writes: it fills a [`Pending`] entry, and when the
//! response ends the entry goes through a bounded lock-free channel to one writer thread that
//! serialises it and writes it to stdout or a file, flushing whenever the channel runs dry.
//! When the writer falls behind by more than [`DEFAULT_QUEUE`] entries, new entries are
//! dropped and counted rather than slowing traffic down; the count is logged by the writer.
//! Dropping the last [`Logger`] closes the channel and waits for the writer to drain it, so
//! lines queued before shutdown reach the output. A request whose client went away before
//! the response head is still logged, with status [`STATUS_CLIENT_CLOSED`].

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::SystemTime;

use http::{HeaderValue, Method, Uri};
use serde::Serialize;
use tokio::time::Instant;

use crate::config::AccessLog;

/// Entries that may wait for the writer before new ones are dropped.
pub const DEFAULT_QUEUE: usize = 64 * 1024;

/// Status logged when the client went away before the response head (NGINX's
/// "client closed request"); no HTTP response carries it.
pub const STATUS_CLIENT_CLOSED: u16 = 499;

/// The sending side of the access log; cheap to share.
#[derive(Debug)]
pub struct Logger {
    /// Queue to the writer thread, bounded by [`DEFAULT_QUEUE`]. `None` only while `Drop`
    /// runs: dropping it is what tells the writer to drain the queue and stop.
    tx: Option<SyncSender<Entry>>,
    /// Entries refused because the queue was full; the writer logs and resets it.
    dropped: Arc<AtomicU64>,
    /// The writer thread, joined on drop so no queued line is lost at exit.
    writer: Option<JoinHandle<()>>,
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
    /// Host the client asked for (URI authority, else `Host`), rendered by the writer.
    pub host: Option<HeaderValue>,
    /// The client's request URI; the writer logs its path, without the query.
    pub uri: Uri,
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

/// An entry waiting for its response to end; written on drop if [`Pending::write`] never ran.
#[derive(Debug)]
pub struct Pending {
    logger: Arc<Logger>,
    started: Instant,
    /// `None` once written, so `Drop` knows whether the response ever got that far.
    entry: Option<Entry>,
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
        let writer = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_loop(rx, BufWriter::new(out), &counter))?;
        Ok(Some(Arc::new(Logger {
            tx: Some(tx),
            dropped,
            writer: Some(writer),
        })))
    }

    fn send(&self, entry: Entry) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(entry) {
            // Disconnected: the writer only stops after `Drop` took `tx`, which needs the
            // last `Arc<Logger>`, so no sender can see it while it holds one.
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for Logger {
    fn drop(&mut self) {
        // Closing the channel first lets the writer drain what is queued and return.
        drop(self.tx.take());
        if let Some(writer) = self.writer.take() {
            if writer.join().is_err() {
                tracing::warn!("access log writer panicked; queued lines may be lost");
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
            match serde_json::to_writer(&mut line, &Line::from(&entry)) {
                Ok(()) => {
                    line.push(b'\n');
                    if let Err(error) = out.write_all(&line) {
                        tracing::warn!(%error, "access log write failed");
                    }
                }
                Err(error) => tracing::warn!(%error, "access log entry not serialisable"),
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
            host: e.host.as_ref().and_then(|v| v.to_str().ok()).unwrap_or(""),
            path: e.uri.path(),
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
            entry: Some(entry),
        }
    }

    /// Mutable access to the entry while the request is being handled.
    pub fn entry_mut(&mut self) -> &mut Entry {
        self.entry
            .as_mut()
            .expect("the entry is only taken by `write` and `drop`, which consume `self`")
    }

    /// Completes the entry with the body size and sends it to the writer.
    pub fn write(mut self, bytes: u64) {
        self.send(None, bytes);
    }

    /// Sends the entry once; `status` overrides the one recorded so far.
    fn send(&mut self, status: Option<u16>, bytes: u64) {
        let Some(mut entry) = self.entry.take() else {
            return;
        };
        if let Some(status) = status {
            entry.status = status;
        }
        entry.bytes = bytes;
        entry.duration_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        self.logger.send(entry);
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        // Only reached with the entry still here when the request future was dropped before
        // a response body took it over: the client went away first (hyper drops `handle`).
        self.send(Some(STATUS_CLIENT_CLOSED), 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            time: SystemTime::now(),
            client: IpAddr::from([127, 0, 0, 1]),
            method: Method::GET,
            host: Some(HeaderValue::from_static("a.example")),
            uri: Uri::from_static("/p?q=1"),
            status: 200,
            bytes: 0,
            duration_ms: 0.0,
            route: None,
            pool: None,
            upstream: None,
            request_id: None,
        }
    }

    #[test]
    fn dropping_the_logger_flushes_every_queued_line_and_unwritten_entries_say_499() {
        let path =
            std::env::temp_dir().join(format!("switchyard-access-unit-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let logger = Logger::start(&AccessLog::File(path.clone()))
            .unwrap()
            .expect("a file log is on");
        for _ in 0..1000 {
            Pending::new(logger.clone(), Instant::now(), entry()).write(7);
        }
        drop(Pending::new(logger.clone(), Instant::now(), entry()));
        // The last `Arc` joins the writer, so the file is complete without any waiting.
        drop(logger);
        let text = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 1001);
        assert_eq!(
            (&lines[0]["status"], &lines[0]["bytes"]),
            (&200.into(), &7.into())
        );
        assert_eq!(
            (&lines[0]["host"], &lines[0]["path"]),
            (&"a.example".into(), &"/p".into())
        );
        assert_eq!(
            (&lines[1000]["status"], &lines[1000]["bytes"]),
            (&499.into(), &0.into())
        );
    }
}
