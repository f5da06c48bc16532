//! Access log: one JSON object per line per request (SPEC section 9).
//!
//! The request path never formats or writes: it fills a [`Pending`] entry, and when the
//! response ends the entry goes onto a lock-free queue and the request moves on. It wakes
//! nobody: one writer thread wakes every [`FLUSH_INTERVAL`], or as soon as [`WAKE_AT`] entries
//! are waiting, drains the queue, formats the lines into one buffer and writes it with as few
//! `write` calls as the buffer allows (NGINX's `access_log ... buffer= flush=`). A line
//! therefore reaches the output at most about [`FLUSH_INTERVAL`] after its response ended.
//! When the writer falls behind by more than [`DEFAULT_QUEUE`] entries, new entries are
//! dropped and counted rather than slowing traffic down; the count is logged by the writer.
//! The queue allocates as it fills and frees as it drains, so an idle log holds no memory.
//! Dropping the last [`Logger`] closes the queue and waits for the writer to drain it, so
//! lines queued before shutdown reach the output. A request whose client went away before
//! the response head is still logged, with status [`STATUS_CLIENT_CLOSED`].

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Method;
use tokio::time::Instant;

use crate::config::AccessLog;

/// Entries that may wait for the writer before new ones are dropped.
pub const DEFAULT_QUEUE: usize = 16 * 1024;

/// Longest time a finished request's line waits before the writer wakes for it.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// Waiting entries that wake the writer before [`FLUSH_INTERVAL`] is up.
pub const WAKE_AT: usize = 512;

/// Formatted bytes the writer gathers before one `write`.
const BUFFER: usize = 64 * 1024;

/// Status logged when the client went away before the response head (NGINX's
/// "client closed request"); no HTTP response carries it.
pub const STATUS_CLIENT_CLOSED: u16 = 499;

/// The sending side of the access log; cheap to share.
#[derive(Debug)]
pub struct Logger {
    /// Queue to the writer thread. `None` only while `Drop` runs: dropping it is what tells
    /// the writer to drain the queue and stop.
    tx: Option<Sender<Entry>>,
    /// Counters shared with the writer.
    counts: Arc<Counts>,
    /// The writer thread: unparked when [`WAKE_AT`] entries wait, joined on drop so no
    /// queued line is lost at exit.
    writer: Option<JoinHandle<()>>,
    /// The file written to, when the log is a file: its path and the identity of the file
    /// opened there (see [`Logger::is_current`]).
    file: Option<(std::path::PathBuf, FileId)>,
}

/// Which file a path named when it was opened: device and inode numbers.
type FileId = (u64, u64);

/// The identity of the file behind `metadata`.
#[cfg(unix)]
fn file_id(metadata: &std::fs::Metadata) -> FileId {
    use std::os::unix::fs::MetadataExt as _;
    (metadata.dev(), metadata.ino())
}

/// Elsewhere a file cannot be told from its successor: it always counts as current.
#[cfg(not(unix))]
fn file_id(_: &std::fs::Metadata) -> FileId {
    (0, 0)
}

/// What the request path and the writer both count.
#[derive(Debug, Default)]
struct Counts {
    /// Entries sent and not yet taken by the writer; bounds the queue at [`DEFAULT_QUEUE`].
    queued: AtomicUsize,
    /// Entries refused because the queue was full; the writer logs and resets it.
    dropped: AtomicU64,
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
    /// Host, path and request id, copied out of the request.
    pub text: RequestText,
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
}

/// The host the client asked for, the request path (without the query) and the request's
/// `X-Request-Id`, back to back in one small allocation. A copy, not clones of the request's
/// header values and URI: those share the connection's read buffer, and holding them until
/// the writer runs would keep that buffer alive and make hyper allocate a new one (8 KiB)
/// for the next request on the connection.
#[derive(Debug, Default, Clone)]
pub struct RequestText {
    text: String,
    host_end: usize,
    path_end: usize,
}

/// An entry waiting for its response to end; written on drop if [`Pending::write`] never ran.
#[derive(Debug)]
pub struct Pending {
    logger: Arc<Logger>,
    started: Instant,
    /// `None` once written, so `Drop` knows whether the response ever got that far. Boxed:
    /// a pending entry rides in every response body, which is moved several times per
    /// request, and with the log off the `None` is then 8 bytes instead of the entry's size.
    entry: Option<Box<Entry>>,
}

// === impl Logger ===

impl Logger {
    /// Starts the writer for `target`; `None` when the log is off.
    pub fn start(target: &AccessLog) -> io::Result<Option<Arc<Logger>>> {
        let mut file = None;
        let out: Box<dyn Write + Send> = match target {
            AccessLog::Off => return Ok(None),
            AccessLog::Stdout => Box::new(io::stdout()),
            AccessLog::File(path) => {
                let opened = open_append(path)?;
                file = Some((path.clone(), file_id(&opened.metadata()?)));
                Box::new(opened)
            }
        };
        let (tx, rx) = mpsc::channel();
        let counts = Arc::new(Counts::default());
        let shared = counts.clone();
        let writer = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_loop(rx, out, &shared))?;
        Ok(Some(Arc::new(Logger {
            tx: Some(tx),
            counts,
            writer: Some(writer),
            file,
        })))
    }

    /// Whether its file is still the one its path names: false once the file was renamed
    /// or removed (log rotation), so that a reload opens the path again, as NGINX reopens
    /// its logs on SIGHUP. Standard output is always current.
    pub fn is_current(&self) -> bool {
        let Some((path, id)) = &self.file else {
            return true;
        };
        std::fs::metadata(path).is_ok_and(|now| file_id(&now) == *id)
    }

    fn send(&self, entry: Entry) {
        let Some(tx) = &self.tx else { return };
        let waiting = self.counts.queued.fetch_add(1, Ordering::Relaxed);
        if waiting >= DEFAULT_QUEUE {
            self.counts.queued.fetch_sub(1, Ordering::Relaxed);
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // An error means the writer is gone, which only happens after `Drop` took `tx`,
        // which needs the last `Arc<Logger>`: no sender can see it while it holds one.
        let _ = tx.send(entry);
        if waiting + 1 == WAKE_AT {
            if let Some(writer) = &self.writer {
                writer.thread().unpark();
            }
        }
    }
}

impl Drop for Logger {
    fn drop(&mut self) {
        // Closing the queue first lets the writer drain what is queued and return.
        drop(self.tx.take());
        if let Some(writer) = self.writer.take() {
            writer.thread().unpark();
            if writer.join().is_err() {
                tracing::warn!("access log writer panicked; queued lines may be lost");
            }
        }
    }
}

fn open_append(path: &Path) -> io::Result<std::fs::File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// The writer thread: sleeps, drains, formats, writes; returns once the queue is closed
/// and empty.
fn write_loop(rx: Receiver<Entry>, mut out: Box<dyn Write + Send>, counts: &Counts) {
    let mut buf = Vec::with_capacity(BUFFER + 1024);
    let mut clock = SecondCache::default();
    loop {
        std::thread::park_timeout(FLUSH_INTERVAL);
        let mut taken = 0;
        let open = loop {
            match rx.try_recv() {
                Ok(entry) => {
                    format_line(&mut buf, &entry, &mut clock);
                    taken += 1;
                    if buf.len() >= BUFFER {
                        counts.queued.fetch_sub(taken, Ordering::Relaxed);
                        taken = 0;
                        write_out(&mut out, &mut buf);
                    }
                }
                Err(TryRecvError::Empty) => break true,
                Err(TryRecvError::Disconnected) => break false,
            }
        };
        counts.queued.fetch_sub(taken, Ordering::Relaxed);
        write_out(&mut out, &mut buf);
        if let Err(error) = out.flush() {
            tracing::warn!(%error, "access log flush failed");
        }
        let lost = counts.dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            tracing::warn!(lost, "access log fell behind; entries dropped");
        }
        if !open {
            return;
        }
    }
}

/// Writes and empties `buf`.
fn write_out(out: &mut dyn Write, buf: &mut Vec<u8>) {
    if buf.is_empty() {
        return;
    }
    if let Err(error) = out.write_all(buf) {
        tracing::warn!(%error, "access log write failed");
    }
    buf.clear();
}

/// Appends the JSON line of `e` to `buf`, with the fields in SPEC order.
fn format_line(buf: &mut Vec<u8>, e: &Entry, clock: &mut SecondCache) {
    buf.extend_from_slice(b"{\"time\":\"");
    clock.push_rfc3339_millis(buf, e.time);
    buf.extend_from_slice(b"\",\"client\":\"");
    let _ = write!(Bytes(buf), "{}", e.client);
    buf.extend_from_slice(b"\",\"method\":");
    push_json_str(buf, e.method.as_str());
    buf.extend_from_slice(b",\"host\":");
    push_json_str(buf, e.text.host());
    buf.extend_from_slice(b",\"path\":");
    push_json_str(buf, e.text.path());
    let _ = write!(
        Bytes(buf),
        ",\"status\":{},\"bytes\":{},\"duration_ms\":{}",
        e.status,
        e.bytes,
        (e.duration_ms * 1000.0).round() / 1000.0
    );
    buf.extend_from_slice(b",\"route\":");
    push_json_str(buf, e.route.as_deref().unwrap_or(""));
    buf.extend_from_slice(b",\"pool\":");
    push_json_str(buf, e.pool.as_deref().unwrap_or(""));
    buf.extend_from_slice(b",\"upstream\":");
    push_json_str(buf, e.upstream.as_deref().unwrap_or(""));
    buf.extend_from_slice(b",\"request_id\":");
    push_json_str(buf, e.text.request_id());
    buf.extend_from_slice(b"}\n");
}

// === impl RequestText ===

impl RequestText {
    /// Copies the three texts; `path` is the URI's path, without the query.
    pub fn new(host: &str, path: &str, request_id: &str) -> RequestText {
        let mut text = String::with_capacity(host.len() + path.len() + request_id.len());
        text.push_str(host);
        text.push_str(path);
        text.push_str(request_id);
        RequestText {
            text,
            host_end: host.len(),
            path_end: host.len() + path.len(),
        }
    }

    /// The host the client asked for; empty when unknown or not visible ASCII.
    pub fn host(&self) -> &str {
        &self.text[..self.host_end]
    }

    /// The request path, without the query.
    pub fn path(&self) -> &str {
        &self.text[self.host_end..self.path_end]
    }

    /// The request's `X-Request-Id`; empty when not visible ASCII.
    pub fn request_id(&self) -> &str {
        &self.text[self.path_end..]
    }
}

/// Appends `s` as a JSON string: quotes, `\"`, `\\` and control characters escaped.
fn push_json_str(buf: &mut Vec<u8>, s: &str) {
    buf.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b != b'"' && b != b'\\' && b >= 0x20 {
            continue;
        }
        buf.extend_from_slice(&bytes[start..i]);
        match b {
            b'"' => buf.extend_from_slice(b"\\\""),
            b'\\' => buf.extend_from_slice(b"\\\\"),
            _ => {
                let _ = write!(Bytes(buf), "\\u{b:04x}");
            }
        }
        start = i + 1;
    }
    buf.extend_from_slice(&bytes[start..]);
    buf.push(b'"');
}

/// `fmt::Write` into a byte buffer, for numbers and addresses.
struct Bytes<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Bytes<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// The RFC 3339 text of the current second, formatted once per second rather than per line.
#[derive(Default)]
struct SecondCache {
    /// Seconds since the epoch of `prefix`.
    secs: Option<u64>,
    /// `YYYY-MM-DDTHH:MM:SS`.
    prefix: String,
}

impl SecondCache {
    /// Appends `time` as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC).
    fn push_rfc3339_millis(&mut self, buf: &mut Vec<u8>, time: SystemTime) {
        let Ok(since) = time.duration_since(UNIX_EPOCH) else {
            let text = humantime::format_rfc3339_millis(time).to_string();
            buf.extend_from_slice(text.as_bytes());
            return;
        };
        let secs = since.as_secs();
        if self.secs != Some(secs) {
            self.prefix.clear();
            let whole = UNIX_EPOCH + Duration::from_secs(secs);
            let _ = write!(self.prefix, "{}", humantime::format_rfc3339_seconds(whole));
            self.prefix.pop(); // the trailing `Z`
            self.secs = Some(secs);
        }
        buf.extend_from_slice(self.prefix.as_bytes());
        let _ = write!(Bytes(buf), ".{:03}Z", since.subsec_millis());
    }
}

// === impl Pending ===

impl Pending {
    /// Starts an entry for a request that arrived at `started`.
    pub fn new(logger: Arc<Logger>, started: Instant, entry: Entry) -> Pending {
        Pending {
            logger,
            started,
            entry: Some(Box::new(entry)),
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
        self.logger.send(*entry);
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
            text: RequestText::new("a.example", "/p", ""),
            status: 200,
            bytes: 0,
            duration_ms: 0.0,
            route: None,
            pool: None,
            upstream: None,
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

    #[test]
    fn lines_are_valid_json_with_escapes_and_the_same_time_text_as_humantime() {
        let mut clock = SecondCache::default();
        let mut buf = Vec::new();
        let mut e = entry();
        e.text = RequestText::new("", "/a%22b", "id\\\"x\tq");
        e.route = Some("r\u{1}\"ü".into());
        e.duration_ms = 1.23456;
        for offset_ms in [0, 999, 1000, 61_001] {
            e.time = UNIX_EPOCH + Duration::from_millis(1_764_000_000_123 + offset_ms);
            format_line(&mut buf, &e, &mut clock);
        }
        let text = String::from_utf8(buf).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 4);
        for (line, offset_ms) in lines.iter().zip([0, 999, 1000, 61_001]) {
            let time = UNIX_EPOCH + Duration::from_millis(1_764_000_000_123 + offset_ms);
            let expected = humantime::format_rfc3339_millis(time).to_string();
            assert_eq!(line["time"], expected.as_str());
        }
        assert_eq!(lines[0]["request_id"], "id\\\"x\tq");
        assert_eq!(lines[0]["route"], "r\u{1}\"ü");
        assert_eq!(lines[0]["path"], "/a%22b");
        assert_eq!(lines[0]["duration_ms"], 1.235);
        assert_eq!(lines[0]["client"], "127.0.0.1");
    }

    #[test]
    fn a_line_reaches_the_file_within_the_flush_interval_without_any_wake_up() {
        let path = std::env::temp_dir().join(format!(
            "switchyard-access-interval-{}.log",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        let logger = Logger::start(&AccessLog::File(path.clone()))
            .unwrap()
            .expect("a file log is on");
        Pending::new(logger.clone(), Instant::now(), entry()).write(3);
        // One entry is far below `WAKE_AT`: only the writer's own timer brings it out.
        let deadline = std::time::Duration::from_secs(5);
        let start = std::time::SystemTime::now();
        let mut text = String::new();
        while text.lines().count() < 1 {
            assert!(
                start.elapsed().unwrap_or_default() < deadline,
                "no line after {deadline:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
            text = std::fs::read_to_string(&path).unwrap_or_default();
        }
        drop(logger);
        let _ = std::fs::remove_file(&path);
        let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(line["bytes"], 3);
    }
}
