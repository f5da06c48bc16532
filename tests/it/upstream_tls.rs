//! TLS to upstreams: a CA and server certificates generated per test (rcgen), a rustls
//! upstream server that answers with the protocol it negotiated, and pools with `tls` in
//! front of it. A wrong server name or an untrusted certificate is a failed connect: 502.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rcgen14::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::support::{config, get, Proxy};

/// A test certificate authority.
struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

impl Ca {
    fn new() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).unwrap().pem();
        Ca { params, key, pem }
    }

    /// A server certificate for `names`, signed by this CA, with its key.
    fn issue(&self, names: &[&str]) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = CertificateParams::new(names).unwrap();
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (cert.der().clone(), key)
    }

    /// Writes the CA certificate to a fresh file; removed when the guard drops.
    fn write(&self, tag: &str) -> TempFile {
        let path = std::env::temp_dir().join(format!(
            "switchyard-test-ca-{}-{tag}.pem",
            std::process::id()
        ));
        std::fs::write(&path, &self.pem).unwrap();
        TempFile(path)
    }
}

struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A TLS upstream offering ALPN h2 and http/1.1; answers `"<version> <sni>"`.
struct TlsServer {
    addr: SocketAddr,
    handshakes: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsServer {
    async fn start(ca: &Ca, names: &[&str]) -> TlsServer {
        let (cert, key) = ca.issue(names);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap();
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handshakes = Arc::new(AtomicUsize::new(0));
        let count = handshakes.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let count = count.clone();
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    count.fetch_add(1, Ordering::SeqCst);
                    let sni = stream.get_ref().1.server_name().unwrap_or("").to_owned();
                    let service = service_fn(move |req: http::Request<Incoming>| {
                        let text = format!("{:?} {sni}", req.version());
                        async move {
                            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(text))))
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        TlsServer {
            addr,
            handshakes,
            task,
        }
    }
}

fn tls_pool(protocol: &str, upstream: &str, tls: &str) -> String {
    config(&format!(
        "routes:\n  - name: r\n    pool: p\npools:\n  - name: p\n    protocol: {protocol}\n    tls: {tls}\n    upstreams: [{{ addr: \"{upstream}\" }}]\n"
    ))
}

#[tokio::test]
async fn upstream_tls_with_a_test_ca_serves_http1_and_h2_pools() {
    let ca = Ca::new();
    let file = ca.write("ok");
    let server = TlsServer::start(&ca, &["upstream.test"]).await;
    let tls = format!(
        "{{ server_name: upstream.test, ca: \"{}\" }}",
        file.0.display()
    );
    for (protocol, version) in [("http1", "HTTP/1.1"), ("h2", "HTTP/2.0")] {
        let proxy = Proxy::start(&tls_pool(protocol, &server.addr.to_string(), &tls)).await;
        for _ in 0..3 {
            let reply = get(proxy.addr, "/").await;
            assert_eq!(reply.status, 200, "{protocol}: {}", reply.text());
            assert_eq!(reply.text(), format!("{version} upstream.test"));
        }
    }
    // One handshake per pool: the connection is kept alive (HTTP/1.1) or shared (h2).
    assert_eq!(server.handshakes.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn without_server_name_the_upstream_hostname_is_verified() {
    let ca = Ca::new();
    let file = ca.write("hostname");
    let server = TlsServer::start(&ca, &["localhost"]).await;
    let upstream = format!("localhost:{}", server.addr.port());
    let tls = format!("{{ ca: \"{}\" }}", file.0.display());
    let proxy = Proxy::start(&tls_pool("h2", &upstream, &tls)).await;
    let reply = get(proxy.addr, "/").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "HTTP/2.0 localhost");
}

#[tokio::test]
async fn a_wrong_server_name_answers_502() {
    let ca = Ca::new();
    let file = ca.write("wrong-name");
    let server = TlsServer::start(&ca, &["upstream.test"]).await;
    let tls = format!(
        "{{ server_name: other.test, ca: \"{}\" }}",
        file.0.display()
    );
    let proxy = Proxy::start(&tls_pool("http1", &server.addr.to_string(), &tls)).await;
    let reply = get(proxy.addr, "/").await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.text(), "502 could not connect to an upstream\n");
    assert_eq!(server.handshakes.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_certificate_from_an_untrusted_ca_answers_502() {
    let trusted = Ca::new();
    let file = trusted.write("untrusted");
    let server = TlsServer::start(&Ca::new(), &["upstream.test"]).await;
    let tls = format!(
        "{{ server_name: upstream.test, ca: \"{}\" }}",
        file.0.display()
    );
    let proxy = Proxy::start(&tls_pool("h2", &server.addr.to_string(), &tls)).await;
    let reply = get(proxy.addr, "/").await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.text(), "502 could not connect to an upstream\n");
}

#[tokio::test]
async fn a_missing_ca_file_stops_the_start() {
    let missing = std::env::temp_dir().join("switchyard-test-no-such-ca.pem");
    let yaml = tls_pool(
        "http1",
        "127.0.0.1:9",
        &format!("{{ ca: \"{}\" }}", missing.display()),
    );
    let config = switchyard::config::parse(std::path::Path::new("test.yaml"), &yaml).unwrap();
    let error = switchyard::Server::start(config, std::time::Duration::from_secs(1))
        .await
        .unwrap_err();
    let chain = switchyard::error_chain(&error);
    assert!(
        chain.contains("pool \"p\": upstream TLS: cannot read the CA bundle"),
        "{chain}"
    );
}
