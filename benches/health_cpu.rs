//! CPU cost of active health checks: the release `switchyard` binary with 1,000 upstreams,
//! each checked every second, measured from `/proc/<pid>/stat` (utime + stime).
//!
//! Run: `cargo bench --bench health_cpu` (Linux only). The 1,000 upstreams are tiny raw
//! HTTP/1.1 listeners on 127.0.0.1 ephemeral ports in this process; the proxy runs as a child
//! process with `--workers 1`, so its CPU time is only the checking (no traffic is sent).
//! Prints the proxy's CPU use in percent of one core and the check rate the backends saw.
//! Not part of `cargo test`.

use std::fmt::Write as _;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;

/// Upstreams checked.
const UPSTREAMS: usize = 1_000;
/// How long CPU time is measured.
const WINDOW: Duration = Duration::from_secs(15);

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` and test discovery: nothing to list.
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(run());
}

async fn run() {
    let checks = Arc::new(AtomicUsize::new(0));
    let mut yaml = String::from(
        "listeners:\n  - name: bench\n    bind: \"127.0.0.1:0\"\naccess_log: off\n\
         routes:\n  - name: r\n    pool: p\npools:\n  - name: p\n\
         \x20   health_check: { interval: 1s, timeout: 900ms }\n    upstreams:\n",
    );
    for _ in 0..UPSTREAMS {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let _ = writeln!(yaml, "      - {{ addr: \"{addr}\" }}");
        tokio::spawn(backend(listener, checks.clone()));
    }
    let dir = std::env::temp_dir().join(format!("switchyard-health-cpu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("proxy.yaml");
    std::fs::write(&config, yaml).expect("write config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["run", "--workers", "1", "--log-level", "warn", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .spawn()
        .expect("start switchyard");
    let pid = child.id();

    // Warm up: every upstream checked at least once, then a few seconds of steady state.
    let deadline = Instant::now() + Duration::from_secs(30);
    while checks.load(Ordering::Relaxed) < UPSTREAMS && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    let (cpu0, checks0, t0) = (
        cpu_ticks(pid),
        checks.load(Ordering::Relaxed),
        Instant::now(),
    );
    tokio::time::sleep(WINDOW).await;
    let (cpu1, checks1, elapsed) = (cpu_ticks(pid), checks.load(Ordering::Relaxed), t0.elapsed());
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);

    let ticks_per_sec = 100.0; // USER_HZ on Linux
    let cpu_secs = (cpu1 - cpu0) as f64 / ticks_per_sec;
    let secs = elapsed.as_secs_f64();
    println!(
        "health_cpu: {UPSTREAMS} upstreams, interval 1s: {:.0} checks/s, proxy CPU {:.1}% of one core \
         ({cpu_secs:.2} s CPU over {secs:.1} s)",
        (checks1 - checks0) as f64 / secs,
        100.0 * cpu_secs / secs,
    );
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    // Fields after the `(comm)`, which may contain spaces: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| {
        fields
            .get(n - 3)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(14) + field(15)
}

/// Answers `200 ok` to every request on every connection, counting them.
async fn backend(listener: TcpListener, checks: Arc<AtomicUsize>) {
    while let Ok((mut stream, _)) = listener.accept().await {
        let checks = checks.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let mut pending = Vec::new();
            loop {
                let n = match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                pending.extend_from_slice(&buf[..n]);
                while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                    pending.drain(..end + 4);
                    checks.fetch_add(1, Ordering::Relaxed);
                    let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if stream.write_all(reply).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
}
