//! Errors found while building the running config (a hostname that does not resolve, a
//! missing certificate or CA bundle, an access log directory that does not exist) name
//! `FILE:LINE:COL` of the value at fault: from `check` and `run` through the real binary, and
//! from a reload through the admin API. Hostnames use the reserved `.invalid` TLD (RFC 6761),
//! which resolvers answer NXDOMAIN without asking the network.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use switchyard::{Server, ServerOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::TempDir;
use crate::support::{self, Backend, DEADLINE};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// A config with one plaintext listener `a`, `extra` right after it (more listeners), `top`
/// (top-level keys) and pool `p` with `pool` (pool keys, then `upstreams:` entries).
fn yaml(extra: &str, top: &str, pool: &str) -> String {
    format!(
        "listeners:\n  - name: a\n    bind: \"127.0.0.1:0\"\n{extra}{top}routes:\n  - name: r\n    match: {{ path_prefix: \"/\" }}\n    pool: p\npools:\n  - name: p\n{pool}"
    )
}

/// `switchyard check --config PATH`.
fn check(path: &Path) -> Output {
    Command::new(BIN)
        .args(["check", "--config"])
        .arg(path)
        .output()
        .unwrap()
}

/// `switchyard run --config PATH`, which must exit on its own within [`DEADLINE`].
fn run(path: &Path) -> Output {
    let mut child = Command::new(BIN)
        .args(["run", "--no-watch", "--config"])
        .arg(path)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::SystemTime::now() + DEADLINE;
    while child.try_wait().unwrap().is_none() {
        if std::time::SystemTime::now() > deadline {
            child.kill().unwrap();
            panic!(
                "run did not refuse the config: {:?}",
                child.wait_with_output()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Both commands exit 1 and print `want` (a `FILE:LINE:COL: message` start) on stderr.
fn assert_refused(path: &Path, want: &str) {
    for (command, out) in [("check", check(path)), ("run", run(path))] {
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{command}: {err}");
        let line = err.lines().find(|l| l.contains(want));
        assert!(
            line.is_some_and(|l| l.starts_with(want)),
            "{command}: {err}"
        );
    }
}

fn write(dir: &TempDir, text: &str) -> PathBuf {
    let path = dir.join("proxy.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn an_unresolvable_hostname_is_reported_at_its_addr() {
    let dir = TempDir::new("build-resolve");
    let pool = "    upstreams:\n      - { addr: \"127.0.0.1:9\" }\n      - { addr: \"nope.invalid:80\" }\n";
    let path = write(&dir, &yaml("", "access_log: off\n", pool));
    let want = format!(
        "{}:13:17: pool \"p\": cannot resolve upstream \"nope.invalid:80\"",
        path.display()
    );
    assert_refused(&path, &want);
}

#[test]
fn a_missing_certificate_is_reported_at_its_cert_key() {
    let dir = TempDir::new("build-cert");
    let tls = "  - name: tls\n    bind: \"127.0.0.1:0\"\n    tls:\n      certificates:\n        - cert: missing.pem\n          key: missing-key.pem\n";
    let pool = "    upstreams:\n      - { addr: \"127.0.0.1:9\" }\n";
    let path = write(&dir, &yaml(tls, "access_log: off\n", pool));
    let want = format!(
        "{}:8:17: listener \"tls\": TLS file {}: cannot read the file",
        path.display(),
        dir.join("missing.pem").display()
    );
    assert_refused(&path, &want);

    // A readable certificate file (any file: it is read before it is parsed) and a missing
    // key: the key is at fault.
    let text = yaml(tls, "access_log: off\n", pool).replace("missing.pem", "proxy.yaml");
    let path = write(&dir, &text);
    let want = format!(
        "{}:9:16: listener \"tls\": TLS file {}: cannot read the file",
        path.display(),
        dir.join("missing-key.pem").display()
    );
    assert_refused(&path, &want);
}

#[test]
fn a_file_in_two_certificate_entries_is_reported_at_the_entry_at_fault() {
    // Audit 3 F2 and F3: errors were placed by file name, at the first entry naming the
    // file, and `check` listed only a listener's first bad entry.
    let dir = TempDir::new("build-cert-entries");
    let key = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/keys/ec-pkcs8.pem");
    std::fs::copy(key, dir.join("k.pem")).unwrap();
    let tls = "  - name: tls\n    bind: \"127.0.0.1:0\"\n    tls:\n      certificates:\n        - cert: missing.pem\n          key: k.pem\n        - cert: k.pem\n          key: k.pem\n";
    let pool = "    upstreams:\n      - { addr: \"127.0.0.1:9\" }\n";
    let path = write(&dir, &yaml(tls, "access_log: off\n", pool));
    let (missing, key) = (dir.join("missing.pem"), dir.join("k.pem"));
    let first = format!(
        "{}:8:17: listener \"tls\": TLS file {}: cannot read the file",
        path.display(),
        missing.display()
    );
    let second = format!(
        "{}:10:17: listener \"tls\": TLS file {}: no certificate found",
        path.display(),
        key.display()
    );
    let out = check(&path);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    for want in [&first, &second] {
        assert!(
            err.lines().any(|l| l.starts_with(want.as_str())),
            "{want}\n{err}"
        );
    }
    // `run` stops at the first.
    let err = stderr(&run(&path));
    assert!(err.lines().any(|l| l.starts_with(first.as_str())), "{err}");
}

#[test]
fn a_missing_ca_bundle_is_reported_at_its_ca_key() {
    let dir = TempDir::new("build-ca");
    let pool = "    tls: { server_name: up.test, ca: no-such-ca.pem }\n    upstreams:\n      - { addr: \"127.0.0.1:9\" }\n";
    let path = write(&dir, &yaml("", "access_log: off\n", pool));
    let want = format!(
        "{}:11:38: pool \"p\": upstream TLS: cannot read the CA bundle",
        path.display()
    );
    assert_refused(&path, &want);
}

#[test]
fn check_reports_every_build_error_in_file_order() {
    let dir = TempDir::new("build-all");
    let tls = "  - name: tls\n    bind: \"127.0.0.1:0\"\n    tls:\n      certificates:\n        - { cert: missing.pem, key: missing-key.pem }\n";
    let pool =
        "    tls: { ca: no-such-ca.pem }\n    upstreams:\n      - { addr: \"nope.invalid:80\" }\n";
    let path = write(
        &dir,
        &yaml(tls, "access_log: no-such-dir/access.log\n", pool),
    );
    let out = check(&path);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    let at: Vec<&str> = err.lines().filter_map(|l| l.split(": ").next()).collect();
    let file = path.display().to_string();
    let want = ["8:19", "9:13", "16:16", "18:17"].map(|pos| format!("{file}:{pos}"));
    assert_eq!(at, want, "{err}");
    assert!(
        err.contains("cannot open the access log: directory"),
        "{err}"
    );
}

#[test]
fn check_leaves_a_new_access_log_file_uncreated() {
    let dir = TempDir::new("build-log");
    let pool = "    upstreams:\n      - { addr: \"127.0.0.1:9\" }\n";
    let path = write(&dir, &yaml("", "access_log: access.log\n", pool));
    let out = check(&path);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!dir.join("access.log").exists());
}

/// Sends one admin request; returns the response body.
async fn admin(addr: SocketAddr, method: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let text = String::from_utf8_lossy(&answer);
    text.split_once("\r\n\r\n").unwrap().1.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_to_an_unresolvable_hostname_keeps_the_old_config_and_a_positioned_error() {
    let backend = Backend::start("old").await;
    let dir = TempDir::new("build-reload");
    let top = "admin:\n  bind: \"127.0.0.1:0\"\naccess_log: off\n";
    let upstream = |addr: &str| format!("    upstreams:\n      - {{ addr: \"{addr}\" }}\n");
    let path = write(&dir, &yaml("", top, &upstream(&backend.addr.to_string())));
    let config = switchyard::config::load(&path).unwrap();
    let options = ServerOptions {
        config_path: Some(path.clone()),
        drain: Duration::from_secs(5),
        watch: false,
    };
    let server = Server::start_with(config, options).await.unwrap();
    let api = server.admin_addr().unwrap();
    let proxy = server.listener_addr("a").unwrap();

    std::fs::write(&path, yaml("", top, &upstream("nope.invalid:80"))).unwrap();
    admin(api, "POST", "/reload").await;
    let body: serde_json::Value =
        serde_json::from_str(&admin(api, "GET", "/config").await).unwrap();
    let reload = &body["last_reload"];
    assert_eq!(reload["ok"], false, "{body}");
    let error = reload["error"].as_str().unwrap();
    let want = format!(
        "{}:14:17: pool \"p\": cannot resolve upstream \"nope.invalid:80\"",
        path.display()
    );
    assert!(error.starts_with(&want), "{error}");
    assert_eq!(body["generation"], 1, "{body}");
    assert_eq!(support::get(proxy, "/").await.text(), "old");
    server.shutdown().await;
}
