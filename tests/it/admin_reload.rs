//! The admin section across reloads: `admin.token` follows the running config at once, and a
//! reload that would move (add, remove, rebind) the admin API fails and keeps the old config.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use switchyard::reload::{ReloadError, Trigger};
use switchyard::{Server, ServerOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::Backend;
use crate::support::TempDir;

/// Where a refused `admin` change is reported in [`config`]'s file: the new `admin.bind`, or
/// the file's start when the section is gone.
fn position(admin: &str) -> &'static str {
    match admin {
        "" => "1:1",
        _ => "5:9",
    }
}

fn config(backend: SocketAddr, admin: &str) -> String {
    format!(
        "listeners:\n  - name: test\n    bind: \"127.0.0.1:0\"\n{admin}access_log: off\nroutes:\n  - name: r\n    match: {{ path_prefix: \"/\" }}\n    pool: p\npools:\n  - name: p\n    upstreams:\n      - {{ addr: \"{backend}\" }}\n"
    )
}

async fn start(path: &Path) -> Server {
    let config = switchyard::config::load(path).unwrap_or_else(|e| panic!("invalid:\n{e}"));
    let options = ServerOptions {
        config_path: Some(path.to_owned()),
        drain: Duration::from_secs(5),
        watch: false,
    };
    Server::start_with(config, options).await.unwrap()
}

/// Sends one admin request; returns the status code.
async fn admin_status(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> u16 {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let text = String::from_utf8_lossy(&answer);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_token_set_by_reload_is_enforced_at_once() {
    let backend = Backend::start("b").await;
    let dir = TempDir::new("admin-token");
    let path = dir.join("proxy.yaml");
    let admin = "admin:\n  bind: \"127.0.0.1:0\"\n";
    std::fs::write(&path, config(backend.addr, admin)).unwrap();
    let server = start(&path).await;
    let api = server.admin_addr().expect("admin is configured");
    assert_eq!(admin_status(api, "POST", "/reload", None).await, 200);

    let with_token = "admin:\n  bind: \"127.0.0.1:0\"\n  token: s3cret\n";
    std::fs::write(&path, config(backend.addr, with_token)).unwrap();
    server.reloader().reload(Trigger::Signal).await.unwrap();
    assert_eq!(admin_status(api, "POST", "/reload", None).await, 401);
    assert_eq!(
        admin_status(api, "POST", "/reload", Some("wrong")).await,
        401
    );
    assert_eq!(
        admin_status(api, "POST", "/reload", Some("s3cret")).await,
        200
    );

    let changed = "admin:\n  bind: \"127.0.0.1:0\"\n  token: n3w\n";
    std::fs::write(&path, config(backend.addr, changed)).unwrap();
    server.reloader().reload(Trigger::Signal).await.unwrap();
    assert_eq!(
        admin_status(api, "POST", "/reload", Some("s3cret")).await,
        401
    );
    assert_eq!(admin_status(api, "POST", "/reload", Some("n3w")).await, 200);
    server.shutdown().await;
}

#[tokio::test]
async fn a_reload_that_moves_the_admin_api_fails_and_keeps_the_old_config() {
    let backend = Backend::start("b").await;
    let dir = TempDir::new("admin-bind");
    let path = dir.join("proxy.yaml");
    std::fs::write(
        &path,
        config(backend.addr, "admin:\n  bind: \"127.0.0.1:0\"\n"),
    )
    .unwrap();
    let server = start(&path).await;
    let generation = server.shared().snapshot().generation;
    for admin in ["", "admin:\n  bind: \"127.0.0.2:0\"\n"] {
        std::fs::write(&path, config(backend.addr, admin)).unwrap();
        let result = server.reloader().reload(Trigger::Signal).await;
        assert!(
            matches!(result, Err(ReloadError::AdminBind(_))),
            "{admin:?}: {result:?}"
        );
        let status = server.reloader().status();
        assert!(!status.ok);
        // Positioned: at the new `admin.bind`, or at the file's start when it is gone.
        let (error, at) = (status.error.unwrap_or_default(), position(admin));
        assert!(error.contains("admin.bind cannot change"), "{error}");
        assert!(error.contains(&format!("proxy.yaml:{at}: ")), "{error}");
        assert_eq!(server.shared().snapshot().generation, generation);
    }
    server.shutdown().await;
}
