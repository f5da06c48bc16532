//! The access log (SPEC section 9): one JSON object per line per request, to a file.

use crate::support::{self, Backend, Client, Proxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_writes_one_json_line_with_every_field() {
    let backend = Backend::start("b").await;
    let dir = std::env::temp_dir().join(format!("switchyard-access-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("access.log");
    let _ = std::fs::remove_file(&log);
    let yaml = format!(
        "listeners:\n  - name: test\n    bind: \"127.0.0.1:0\"\naccess_log: \"{}\"\nroutes:\n  - name: api\n    match: {{ path_prefix: \"/api/\" }}\n    pool: p\npools:\n  - name: p\n    upstreams:\n      - {{ addr: \"{}\" }}\n",
        log.display(),
        backend.addr
    );
    let proxy = Proxy::start(&yaml).await;
    let mut client = Client::connect(proxy.addr).await;
    let ok = client.get("Shop.Example", "/api/items?q=1").await;
    assert_eq!(ok.status, 200);
    assert_eq!(client.get("shop.example", "/nowhere").await.status, 404);

    let mut lines = Vec::new();
    support::eventually("two access log lines", || {
        lines = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        lines.len() == 2
    })
    .await;
    let first: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
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
    let second: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(second["status"], 404);
    assert_eq!(
        (second["route"].as_str(), second["pool"].as_str()),
        (Some(""), Some(""))
    );
}
