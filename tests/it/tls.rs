//! TLS listeners: SNI certificate choice, ALPN, X-Forwarded-Proto, reloads, hostile handshakes.
//!
//! Certificates come from a test CA made with rcgen at run time; the RSA and EC keys in
//! `keys/` exist only because rcgen cannot write PKCS#1 and SEC1 files. Clients are real
//! rustls clients over TCP to the proxy's ephemeral port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use switchyard::snapshot::{BuildError, Snapshot};

use crate::support::{self, Backend, Proxy, Reply, DEADLINE};

/// A test CA and a scratch directory for the PEM files it issues.
struct Pki {
    dir: PathBuf,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

/// One issued certificate: its files and the DER a client should see.
struct Issued {
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
}

impl Pki {
    fn new() -> Pki {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("switchyard-tls-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = params.self_signed(&ca_key).unwrap();
        Pki { dir, ca, ca_key }
    }

    /// A certificate for `names` with a fresh ECDSA P-256 key in a PKCS#8 file.
    fn issue(&self, file: &str, names: &[&str]) -> Issued {
        let key = KeyPair::generate().unwrap();
        self.issue_with(file, names, &key, &key.serialize_pem())
    }

    /// A certificate for `names` on `key`, whose file holds `key_pem`.
    fn issue_with(&self, file: &str, names: &[&str], key: &KeyPair, key_pem: &str) -> Issued {
        let sans = names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let cert = CertificateParams::new(sans)
            .unwrap()
            .signed_by(key, &self.ca, &self.ca_key)
            .unwrap();
        let issued = Issued {
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}-key.pem")),
            der: cert.der().clone(),
        };
        std::fs::write(&issued.cert, cert.pem()).unwrap();
        std::fs::write(&issued.key, key_pem).unwrap();
        issued
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        roots
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client that trusts the test CA and offers `alpn`.
fn verifying_client(pki: &Pki, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(pki.roots())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A client that accepts any certificate (to see what the proxy serves for unknown names).
fn trusting_client() -> Arc<ClientConfig> {
    let provider = provider();
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    Arc::new(config)
}

/// Accepts every certificate but still checks handshake signatures.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Completes a TLS handshake with the proxy; `name` is sent as SNI unless it is an IP.
async fn connect(addr: SocketAddr, config: Arc<ClientConfig>, name: &str) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(name.to_owned()).unwrap();
    tokio::time::timeout(DEADLINE, TlsConnector::from(config).connect(name, tcp))
        .await
        .expect("handshake within the deadline")
        .unwrap()
}

/// The leaf certificate the proxy presented.
fn served(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// Sends one GET over HTTP/1.1 on an established TLS stream.
async fn get_http1(stream: TlsStream<TcpStream>, path: &str) -> Reply {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", "a.test")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = tokio::time::timeout(DEADLINE, sender.send_request(req))
        .await
        .expect("response within the deadline")
        .unwrap();
    support::read(response).await
}

/// A config with one TLS listener serving `pairs`, routing everything to `backend`.
fn tls_config(pairs: &[&Issued], limits: &str, backend: &Backend) -> String {
    let certs: String = pairs
        .iter()
        .map(|p| {
            format!(
                "        - {{ cert: \"{}\", key: \"{}\" }}\n",
                p.cert.display(),
                p.key.display()
            )
        })
        .collect();
    format!(
        "listeners:\n  - name: tls\n    bind: \"127.0.0.1:0\"\n    limits: {{ {limits} }}\n    tls:\n      certificates:\n{certs}access_log: off\nroutes:\n  - name: all\n    match: {{ path_prefix: \"/\" }}\n    pool: p\npools:\n  - name: p\n    upstreams:\n      - {{ addr: \"{}\" }}\n",
        backend.addr
    )
}

fn parse(yaml: &str) -> switchyard::config::Config {
    switchyard::config::parse(Path::new("test.yaml"), yaml).unwrap()
}

fn header_line<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_each_names_certificate_and_the_first_for_unknown_or_missing_names() {
    let pki = Pki::new();
    let a = pki.issue("a", &["a.test"]);
    let b = pki.issue("b", &["b.test", "*.wild.test"]);
    let backend = Backend::start("up").await;
    let proxy = Proxy::start(&tls_config(&[&a, &b], "", &backend)).await;
    let verifying = verifying_client(&pki, &[]);
    for (name, want) in [
        ("a.test", &a),
        ("b.test", &b),
        ("B.Test", &b),
        ("x.wild.test", &b),
    ] {
        let stream = connect(proxy.addr, verifying.clone(), name).await;
        assert!(served(&stream) == want.der, "wrong certificate for {name}");
    }
    // Unknown names, a wildcard's own base name, two labels under a wildcard, and no SNI at
    // all (an IP address is never sent as SNI) all get the first certificate.
    for name in ["unknown.test", "wild.test", "y.x.wild.test", "127.0.0.1"] {
        let stream = connect(proxy.addr, trusting_client(), name).await;
        assert!(served(&stream) == a.der, "{name} did not get the default");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_request_is_proxied_with_x_forwarded_proto_https() {
    let pki = Pki::new();
    let a = pki.issue("a", &["a.test"]);
    let backend = Backend::start("up").await;
    let proxy = Proxy::start(&tls_config(&[&a], "", &backend)).await;
    let stream = connect(proxy.addr, verifying_client(&pki, &[b"http/1.1"]), "a.test").await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let reply = get_http1(stream, "/headers").await;
    assert_eq!(reply.status, 200);
    let seen = reply.text();
    assert_eq!(
        header_line(&seen, "x-forwarded-proto"),
        Some("https"),
        "{seen}"
    );
    assert_eq!(header_line(&seen, "host"), Some("a.test"), "{seen}");
    // A client offering no ALPN at all is served HTTP/1.1 too.
    let stream = connect(proxy.addr, verifying_client(&pki, &[]), "a.test").await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), None);
    assert_eq!(get_http1(stream, "/").await.text(), "up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_negotiates_h2_and_http2_clients_reach_http1_upstreams() {
    let pki = Pki::new();
    let a = pki.issue("a", &["a.test"]);
    let backend = Backend::start("up").await;
    let proxy = Proxy::start(&tls_config(&[&a], "", &backend)).await;
    let client = verifying_client(&pki, &[b"h2", b"http/1.1"]);
    let stream = connect(proxy.addr, client, "a.test").await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut sender = crate::support::h2_client(stream).await;
    // Several concurrent streams on the one connection.
    let mut replies = Vec::new();
    for _ in 0..3 {
        let req = Request::get("https://a.test/headers")
            .body(Full::new(Bytes::new()))
            .unwrap();
        replies.push(sender.send_request(req));
    }
    for reply in replies {
        let response = tokio::time::timeout(DEADLINE, reply)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(response.version(), http::Version::HTTP_2);
        let seen = support::read(response).await.text();
        assert!(seen.starts_with("GET /headers HTTP/1.1"), "{seen}");
        assert_eq!(
            header_line(&seen, "x-forwarded-proto"),
            Some("https"),
            "{seen}"
        );
    }
    assert_eq!(backend.requests(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_with_a_new_certificate_serves_it_to_new_connections_only() {
    let pki = Pki::new();
    let old = pki.issue("old", &["a.test"]);
    let backend = Backend::start("up").await;
    let yaml = tls_config(&[&old], "", &backend);
    let proxy = Proxy::start(&yaml).await;
    let shared = proxy.server.shared();
    let before = connect(proxy.addr, verifying_client(&pki, &[]), "a.test").await;
    assert!(served(&before) == old.der);

    // Same paths, new contents, as a certificate renewal writes them.
    let new = pki.issue("old", &["a.test"]);
    let running = shared.snapshot();
    let next = Snapshot::build(parse(&yaml), Some(&running)).unwrap();
    shared.store(next);

    let after = connect(proxy.addr, verifying_client(&pki, &[]), "a.test").await;
    assert!(
        served(&after) == new.der,
        "a new connection got the old certificate"
    );
    assert_eq!(get_http1(after, "/").await.text(), "up");
    // The connection made before the swap keeps its session and is still served.
    assert_eq!(get_http1(before, "/").await.text(), "up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_certificate_fails_the_build_and_the_old_one_keeps_serving() {
    let pki = Pki::new();
    let good = pki.issue("good", &["a.test"]);
    let other = pki.issue("other", &["b.test"]);
    let backend = Backend::start("up").await;
    let proxy = Proxy::start(&tls_config(&[&good], "", &backend)).await;
    let running = proxy.server.shared().snapshot();
    let garbage = pki.dir.join("garbage.pem");
    std::fs::write(&garbage, "not a pem file\n").unwrap();
    let missing = pki.dir.join("missing.pem");
    let cases = [
        (&garbage, &good.key, &garbage, "no certificate found"),
        (&good.cert, &garbage, &garbage, "no private key found"),
        (&missing, &good.key, &missing, "cannot read the file"),
        (
            &good.cert,
            &other.key,
            &other.key,
            "does not match the certificate",
        ),
    ];
    for (cert, key, at, reason) in cases {
        let pair = Issued {
            cert: cert.clone(),
            key: key.clone(),
            der: good.der.clone(),
        };
        let yaml = tls_config(&[&pair], "", &backend);
        let error = Snapshot::build(parse(&yaml), Some(&running)).unwrap_err();
        assert!(matches!(error, BuildError::Tls { ref path, .. } if path == at));
        let text = switchyard::error_chain(&error);
        assert!(text.starts_with("listener \"tls\": TLS file "), "{text}");
        assert!(text.contains(&at.display().to_string()), "{text}");
        assert!(text.contains(reason), "{text}");
    }
    let stream = connect(proxy.addr, verifying_client(&pki, &[]), "a.test").await;
    assert!(served(&stream) == good.der);
    assert_eq!(get_http1(stream, "/").await.text(), "up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_pkcs1_and_ec_sec1_key_files_are_served() {
    let pki = Pki::new();
    let keys = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/keys");
    let read = |name: &str| std::fs::read_to_string(keys.join(name)).unwrap();
    let rsa =
        KeyPair::from_pem_and_sign_algo(&read("rsa-pkcs8.pem"), &rcgen::PKCS_RSA_SHA256).unwrap();
    let rsa = pki.issue_with("rsa", &["rsa.test"], &rsa, &read("rsa-pkcs1.pem"));
    let ec = KeyPair::from_pem(&read("ec-pkcs8.pem")).unwrap();
    let ec = pki.issue_with("ec", &["ec.test"], &ec, &read("ec-sec1.pem"));
    let backend = Backend::start("up").await;
    let proxy = Proxy::start(&tls_config(&[&rsa, &ec], "", &backend)).await;
    for (name, want) in [("rsa.test", &rsa), ("ec.test", &ec)] {
        let stream = connect(proxy.addr, verifying_client(&pki, &[]), name).await;
        assert!(served(&stream) == want.der, "wrong certificate for {name}");
        assert_eq!(get_http1(stream, "/").await.text(), "up");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_stalled_handshakes_are_cut_off_without_affecting_other_clients() {
    let pki = Pki::new();
    let a = pki.issue("a", &["a.test"]);
    let backend = Backend::start("up").await;
    let limits = "header_timeout: 300ms, idle_timeout: 30s";
    let proxy = Proxy::start(&tls_config(&[&a], limits, &backend)).await;
    // Plaintext HTTP instead of a ClientHello: refused at once.
    let mut garbage = TcpStream::connect(proxy.addr).await.unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    // Silent, and half a ClientHello record: both wait for the handshake timeout.
    let started = tokio::time::Instant::now();
    let mut silent = TcpStream::connect(proxy.addr).await.unwrap();
    let mut partial = TcpStream::connect(proxy.addr).await.unwrap();
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    // Meanwhile other clients, unknown SNI included, are served normally.
    for name in ["a.test", "unknown.test"] {
        let stream = connect(proxy.addr, trusting_client(), name).await;
        assert_eq!(get_http1(stream, "/").await.text(), "up");
    }
    let (_, took) = support::read_until_closed(&mut garbage).await;
    assert!(
        took < Duration::from_millis(250),
        "garbage kept for {took:?}"
    );
    for stream in [&mut silent, &mut partial] {
        let (text, took) = support::read_until_closed(stream).await;
        assert!(text.is_empty(), "{text:?}");
        assert!(
            took < Duration::from_secs(3),
            "stalled handshake kept for {took:?}"
        );
    }
    let stalled = started.elapsed();
    assert!(
        stalled >= Duration::from_millis(250),
        "cut off early: {stalled:?}"
    );
    let stream = connect(proxy.addr, trusting_client(), "a.test").await;
    assert_eq!(get_http1(stream, "/").await.text(), "up");
}
