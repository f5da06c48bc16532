//! Routing precedence through the proxy (SPEC section 3), independent of file order.

use crate::support::{config, Backend, Client, Proxy};

/// Route name, host pattern and prefix; each route gets its own backend named like the route.
/// Listed least specific first so file order cannot be what makes the tests pass.
const ROUTES: [(&str, Option<&str>, &str); 8] = [
    ("any-root", None, "/"),
    ("any-static", None, "/static/"),
    ("wild-short", Some("*.a.com"), "/"),
    ("wild-long", Some("*.x.a.com"), "/"),
    ("a-api", Some("a.com"), "/api/"),
    ("b-root", Some("b.com"), "/"),
    ("b-deep", Some("b.com"), "/deep/path/"),
    ("wild-b-api", Some("*.b.com"), "/api/"),
];

async fn start() -> (Proxy, Vec<Backend>) {
    let mut backends = Vec::new();
    let mut routes = String::from("routes:\n");
    let mut pools = String::from("pools:\n");
    for (name, host, prefix) in ROUTES {
        let backend = Backend::start(name).await;
        let host = host.map(|h| format!("host: \"{h}\", ")).unwrap_or_default();
        routes.push_str(&format!(
            "  - name: {name}\n    match: {{ {host}path_prefix: \"{prefix}\" }}\n    pool: {name}\n"
        ));
        pools.push_str(&format!(
            "  - name: {name}\n    upstreams:\n      - {{ addr: \"{}\" }}\n",
            backend.addr
        ));
        backends.push(backend);
    }
    (
        Proxy::start(&config(&format!("{routes}{pools}"))).await,
        backends,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_most_specific_route_wins_whatever_the_file_order() {
    let (proxy, _backends) = start().await;
    let mut client = Client::connect(proxy.addr).await;
    let cases = [
        // exact host with its prefix
        ("a.com", "/api/users", "a-api"),
        // host is case-insensitive and its port is ignored
        ("A.Com:8080", "/api/users", "a-api"),
        // a.com has only /api/: other paths fall back to the any-host routes
        ("a.com", "/other", "any-root"),
        ("a.com", "/static/x.css", "any-static"),
        // a wildcard matches one or more labels, never the bare suffix
        ("y.a.com", "/anything", "wild-short"),
        ("deep.y.a.com", "/", "wild-short"),
        // a longer wildcard suffix beats a shorter one
        ("z.x.a.com", "/", "wild-long"),
        ("x.a.com", "/", "wild-short"),
        // exact beats wildcard even with a shorter prefix
        ("b.com", "/api/v1", "b-root"),
        ("q.b.com", "/api/v1", "wild-b-api"),
        ("q.b.com", "/other", "any-root"),
        // the longest matching prefix wins, as a plain string prefix
        ("b.com", "/deep/path/1", "b-deep"),
        ("b.com", "/deep/pathology", "b-root"),
        ("b.com", "/deep/pat", "b-root"),
        // any host last
        ("c.com", "/static/app.js", "any-static"),
        ("c.com", "/", "any-root"),
        ("", "/", "any-root"),
    ];
    for (host, path, want) in cases {
        let reply = client.get(host, path).await;
        assert_eq!(reply.text(), want, "Host {host:?} path {path:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_any_host_route_an_unknown_host_gets_404() {
    let backend = Backend::start("a").await;
    let yaml = config(&format!(
        "routes:\n  - name: a\n    match: {{ host: \"a.com\", path_prefix: \"/api/\" }}\n    pool: p\npools:\n  - name: p\n    upstreams:\n      - {{ addr: \"{}\" }}\n",
        backend.addr
    ));
    let proxy = Proxy::start(&yaml).await;
    let mut client = Client::connect(proxy.addr).await;
    assert_eq!(client.get("a.com", "/api/x").await.status, 200);
    assert_eq!(client.get("a.com", "/other").await.status, 404);
    assert_eq!(client.get("b.com", "/api/x").await.status, 404);
    assert_eq!(client.get("x.a.com", "/api/x").await.status, 404);
}
