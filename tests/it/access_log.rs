//! The access log (SPEC section 9): one JSON object per line per request, to a file.

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use std::path::PathBuf;

use crate::support::TempDir;
use crate::support::{self, Backend, Client, Proxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_writes_one_json_line_with_every_field() {
    let backend = Backend::start("b").await;
    let (proxy, log) = proxy_logging("fields", "api", "/api/", &backend).await;
    let mut client = Client::connect(proxy.addr).await;
    let ok = client.get("Shop.Example", "/api/items?q=1").await;
    assert_eq!(ok.status, 200);
    assert_eq!(client.get("shop.example", "/nowhere").await.status, 404);

    let lines = log_lines(&log, 2).await;
    let first = &lines[0];
    for field in [
        "time",
        "client",
        "method",
        "host",
        "path",
        "status",
        "bytes",
        "duration_ms",
        "route",
        "pool",
        "upstream",
        "request_id",
    ] {
        assert!(first.get(field).is_some(), "{field} missing in {first}");
    }
    assert_eq!(first["client"], "127.0.0.1");
    assert_eq!(first["method"], "GET");
    assert_eq!(first["host"], "Shop.Example");
    assert_eq!(first["path"], "/api/items");
    assert_eq!(first["status"], 200);
    assert_eq!(first["bytes"], 1);
    assert_eq!(first["route"], "api");
    assert_eq!(first["pool"], "p");
    assert_eq!(first["upstream"], backend.addr.to_string());
    assert_eq!(first["request_id"], ok.header("x-request-id"));
    assert!(first["time"].as_str().unwrap().ends_with('Z'));
    let second = &lines[1];
    assert_eq!(second["status"], 404);
    assert_eq!(
        (second["route"].as_str(), second["pool"].as_str()),
        (Some(""), Some(""))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_before_the_response_head_is_logged_as_499() {
    let backend = Backend::start("b").await;
    let (proxy, log) = proxy_logging("499", "all", "/", &backend).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET /slow/2000 HTTP/1.1\r\nHost: gone.example\r\n\r\n")
        .await
        .unwrap();
    support::eventually("the request to reach the backend", || {
        backend.requests() == 1
    })
    .await;
    drop(stream);

    let entry = &log_lines(&log, 1).await[0];
    assert_eq!(entry["status"], 499, "{entry}");
    assert_eq!(entry["bytes"], 0);
    assert_eq!(entry["host"], "gone.example");
    assert_eq!(entry["path"], "/slow/2000");
    assert_eq!(entry["route"], "all");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_no_upstream_answered_is_logged_with_the_upstream_it_tried() {
    let backend = Backend::start("b").await;
    let (proxy, log) = proxy_logging("tried", "all", "/", &backend).await;
    backend.stop();
    support::eventually("the backend to refuse", || {
        std::net::TcpStream::connect(backend.addr).is_err()
    })
    .await;
    let mut client = Client::connect(proxy.addr).await;
    assert_eq!(client.get("a", "/").await.status, 502);
    let lines = log_lines(&log, 1).await;
    assert_eq!(lines[0]["status"], 502);
    assert_eq!(lines[0]["upstream"], backend.addr.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_route_timeout_ends_is_logged_with_its_upstream() {
    let slow = Backend::start("slow").await;
    let (proxy, log) = proxy_logging_with("late", "all", "/", &slow, "    timeout: 200ms\n").await;
    let mut client = Client::connect(proxy.addr).await;
    assert_eq!(client.get("a", "/slow/3000").await.status, 504);
    let lines = log_lines(&log, 1).await;
    assert_eq!(lines[0]["status"], 504);
    assert_eq!(lines[0]["upstream"], slow.addr.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_are_logged_with_all_their_bytes() {
    let backend = Backend::start("b").await;
    let (proxy, log) = proxy_logging("large", "all", "/", &backend).await;
    let mut client = Client::connect(proxy.addr).await;
    // Bodies of known length, larger than one read of the upstream's socket.
    for size in [1_048_576, 65_536, 3] {
        let reply = client.get("a", &format!("/sized/{size}")).await;
        assert_eq!(reply.body.len(), size);
    }
    let lines = log_lines(&log, 3).await;
    let bytes: Vec<_> = lines.iter().map(|l| l["bytes"].as_u64()).collect();
    assert_eq!(bytes, [Some(1_048_576), Some(65_536), Some(3)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_refused_with_400_and_431_are_logged_too() {
    let backend = Backend::start("b").await;
    let (proxy, log) = proxy_logging("refused", "all", "/", &backend).await;
    let huge = format!(
        "GET /big?q=1 HTTP/1.1\r\nHost: a\r\nx-fill: {}\r\n\r\n",
        "x".repeat(70 * 1024)
    );
    let heads = [
        b"GET /bad?x HTTP/1.1\r\nHost: a\r\nbad name: x\r\n\r\n".to_vec(),
        huge.into_bytes(),
        b"\x01\x02 garbage\r\n\r\n".to_vec(),
        // Refused after its fields were read, with another request behind it.
        b"POST /first HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 40\r\n\r\nGET /second HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
    ];
    let mut ids = Vec::new();
    for head in heads {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        // The proxy may answer and close before it has read a large head whole.
        let _ = stream.write_all(&head).await;
        let (answer, _) = support::read_until_closed(&mut stream).await;
        let id = answer
            .lines()
            .find_map(|l| l.strip_prefix("x-request-id: "))
            .unwrap_or_else(|| panic!("no request id in {answer}"))
            .to_owned();
        ids.push(id);
    }
    let lines = log_lines(&log, 4).await;
    let seen: Vec<_> = lines
        .iter()
        .map(|l| {
            (
                l["status"].as_u64().unwrap(),
                l["method"].as_str().unwrap().to_owned(),
                l["path"].as_str().unwrap().to_owned(),
                l["route"].as_str().unwrap().to_owned(),
                l["request_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected = [
        (400, "GET", "/bad"),
        (431, "GET", "/big"),
        (400, "-", "-"),
        (400, "POST", "/first"),
    ];
    for ((got, want), id) in seen.iter().zip(expected).zip(&ids) {
        assert_eq!(
            (
                got.0,
                got.1.as_str(),
                got.2.as_str(),
                got.3.as_str(),
                &got.4
            ),
            (want.0, want.1, want.2, "", id)
        );
    }
    assert!(lines.iter().all(|l| l["bytes"].as_u64() > Some(0)));
    assert_eq!(backend.requests(), 0);
}

/// A proxy whose access log goes to a fresh file; one route `route` with `prefix` to `backend`.
async fn proxy_logging(
    test: &str,
    route: &str,
    prefix: &str,
    backend: &Backend,
) -> (Proxy, AccessLog) {
    proxy_logging_with(test, route, prefix, backend, "").await
}

/// As [`proxy_logging`], with `extra` lines in the route.
async fn proxy_logging_with(
    test: &str,
    route: &str,
    prefix: &str,
    backend: &Backend,
    extra: &str,
) -> (Proxy, AccessLog) {
    let dir = TempDir::new(&format!("access-{test}"));
    let log = dir.join("access.log");
    let yaml = format!(
        "listeners:\n  - name: test\n    bind: \"127.0.0.1:0\"\naccess_log: \"{}\"\nroutes:\n  - name: {route}\n    match: {{ path_prefix: \"{prefix}\" }}\n    pool: p\n{extra}pools:\n  - name: p\n    upstreams:\n      - {{ addr: \"{}\" }}\n",
        log.display(),
        backend.addr
    );
    (
        Proxy::start(&yaml).await,
        AccessLog {
            path: log,
            _dir: dir,
        },
    )
}

/// An access log file; its directory is removed when this drops.
struct AccessLog {
    path: PathBuf,
    _dir: TempDir,
}

/// Waits until the log holds `n` lines and returns them parsed.
async fn log_lines(log: &AccessLog, n: usize) -> Vec<serde_json::Value> {
    let mut lines = Vec::new();
    support::eventually("access log lines", || {
        lines = std::fs::read_to_string(&log.path)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        lines.len() >= n
    })
    .await;
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
