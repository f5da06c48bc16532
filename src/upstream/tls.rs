//! TLS to upstreams: one rustls client config per pool, built when the snapshot is built.
//!
//! A pool with `tls` verifies every upstream's certificate against its `ca` bundle (PEM), or
//! Mozilla's roots from `webpki-roots` when `ca` is absent, and sends `server_name` as SNI.
//! ALPN offers exactly the pool's protocol (`h2` or `http/1.1`), so an upstream that cannot
//! speak it fails the handshake instead of being misread. Reading and parsing the CA file
//! happens once, in [`UpstreamTls::build`], off the request path; a connection only clones
//! two `Arc`s. Whether the TLS handshake counts as part of connecting (it does: a failed one
//! is retried on another upstream) is `client`'s business.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::config::{PoolConfig, Protocol};

/// ALPN id of HTTP/2.
const ALPN_H2: &[u8] = b"h2";
/// ALPN id of HTTP/1.1.
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Why a pool's upstream TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA bundle could not be read.
    #[error("cannot read the CA bundle {path:?}")]
    ReadCa {
        /// The file, as resolved against the config file's directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The CA bundle holds no usable certificate.
    #[error("CA bundle {path:?} holds no usable PEM certificate")]
    BadCa {
        /// The file, as resolved against the config file's directory.
        path: PathBuf,
    },
    /// `server_name` is neither a DNS name nor an IP address.
    #[error("server_name {0:?} is not a valid DNS name or IP address")]
    ServerName(String),
    /// rustls refused the configuration.
    #[error("cannot build the TLS client configuration")]
    Config(#[source] rustls::Error),
}

/// A pool's upstream TLS: the verified client config and the name to verify.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    config: Arc<ClientConfig>,
    /// `server_name` from the config, or the pool's one upstream hostname.
    server_name: Option<ServerName<'static>>,
    /// The protocol ALPN must agree on.
    alpn: &'static [u8],
}

// === impl UpstreamTls ===

impl UpstreamTls {
    /// The TLS settings of the pool `cfg` describes; `None` when it speaks plaintext.
    pub fn build(cfg: &PoolConfig) -> Result<Option<UpstreamTls>, TlsError> {
        let Some(tls) = &cfg.tls else {
            return Ok(None);
        };
        let mut roots = RootCertStore::empty();
        match &tls.ca {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|source| TlsError::ReadCa {
                    path: path.clone(),
                    source,
                })?;
                for cert in CertificateDer::pem_slice_iter(&pem).flatten() {
                    // A certificate rustls cannot parse as a trust anchor is skipped, as
                    // OpenSSL skips it in a bundle; an empty result is an error below.
                    let _ = roots.add(cert);
                }
                if roots.is_empty() {
                    return Err(TlsError::BadCa { path: path.clone() });
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let alpn = match cfg.protocol {
            Protocol::H2 => ALPN_H2,
            Protocol::Http1 => ALPN_HTTP1,
        };
        config.alpn_protocols = vec![alpn.to_vec()];
        let server_name = match &tls.server_name {
            Some(name) => Some(
                ServerName::try_from(name.clone())
                    .map_err(|_| TlsError::ServerName(name.clone()))?,
            ),
            None => only_hostname(cfg),
        };
        Ok(Some(UpstreamTls {
            config: Arc::new(config),
            server_name,
            alpn,
        }))
    }

    /// Runs the TLS handshake on `stream` to the upstream at `ip`.
    pub(crate) async fn connect(
        &self,
        ip: IpAddr,
        stream: TcpStream,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let name = self
            .server_name
            .clone()
            .unwrap_or(ServerName::IpAddress(ip.into()));
        let connector = TlsConnector::from(self.config.clone());
        let stream = connector.connect(name, stream).await?;
        // An upstream that ignores ALPN is taken at its word for the pool's protocol; one
        // that picked something else would be misread, so that is a failed handshake.
        match stream.get_ref().1.alpn_protocol() {
            Some(agreed) if agreed != self.alpn => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "upstream chose another ALPN protocol",
            )),
            _ => Ok(stream),
        }
    }
}

/// The default name to verify when `server_name` is absent: the hostname upstreams are
/// listed under, when the pool names exactly one; otherwise each upstream's IP address.
fn only_hostname(cfg: &PoolConfig) -> Option<ServerName<'static>> {
    let mut hosts = cfg.upstreams.iter().filter_map(|u| {
        let (host, _) = u.addr.rsplit_once(':')?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        host.parse::<IpAddr>().is_err().then_some(host)
    });
    let first = hosts.next()?;
    if hosts.any(|h| !h.eq_ignore_ascii_case(first)) {
        return None;
    }
    ServerName::try_from(first.to_owned()).ok()
}
