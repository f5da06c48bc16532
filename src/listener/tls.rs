//! TLS termination on a listener: certificates from PEM files, SNI choice, ALPN.
//!
//! [`TlsSettings::load`] reads every certificate/key pair of a listener's `tls` section and
//! builds one rustls `ServerConfig` (ring provider, TLS 1.2 and 1.3 only, ALPN `h2` then
//! `http/1.1`, no client certificates). It runs when a snapshot is built, so certificates are
//! re-read on every reload and a broken file fails the build with a [`TlsError`] that says
//! which file and what is wrong, while the old snapshot keeps serving.
//!
//! [`SniResolver`] picks the certificate of each handshake from the client's SNI name: exact
//! SAN DNS names first, then wildcard SANs (`*.example.com` covers exactly one more label, as
//! TLS clients check it), then the first certificate of the list as the default (no SNI, an IP
//! address, or an unknown name). When two certificates claim the same name, the earlier one in
//! the list wins. Names compare case-insensitively. The handshake itself runs in the
//! connection's task (`listener::serve_connection`), never in the accept loop.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use x509_parser::extensions::GeneralName;

use crate::config::{CertificatePair, ListenerTls};

/// ALPN protocols offered to clients, most preferred first.
pub const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// What is wrong with one certificate or key file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("cannot read the file")]
    Read(#[source] std::io::Error),
    /// The file is not valid PEM.
    #[error("the file is not valid PEM")]
    Pem(#[source] pem::Error),
    /// The certificate file holds no `CERTIFICATE` block.
    #[error("no certificate found: expected a PEM `BEGIN CERTIFICATE` block")]
    NoCertificate,
    /// The first certificate of the chain is not valid X.509.
    #[error("the first certificate is not a valid X.509 certificate")]
    BadCertificate(#[source] x509_parser::nom::Err<x509_parser::error::X509Error>),
    /// The key file holds no private key.
    #[error(
        "no private key found: expected a PEM `PRIVATE KEY` (PKCS#8), `RSA PRIVATE KEY` or \
         `EC PRIVATE KEY` block (encrypted keys are not supported)"
    )]
    NoKey,
    /// The key is of a type rustls cannot sign with.
    #[error("unsupported private key (supported: RSA, ECDSA P-256/P-384, Ed25519)")]
    UnsupportedKey(#[source] rustls::Error),
    /// The key is not the one of the certificate.
    #[error("the private key does not match the certificate in {cert}")]
    KeyMismatch {
        /// The certificate file it was paired with.
        cert: PathBuf,
    },
    /// rustls refused the server configuration.
    #[error("cannot build the TLS configuration")]
    Config(#[source] rustls::Error),
}

/// A TLS listener's material as of one snapshot: the rustls config connections use.
#[derive(Debug)]
pub struct TlsSettings {
    /// The rustls server config; its resolver picks certificates by SNI.
    pub config: Arc<ServerConfig>,
}

// === impl TlsSettings ===

impl TlsSettings {
    /// Reads every certificate pair of `tls` and builds the server config. On error, returns
    /// which entry and file is at fault, with what is wrong with it.
    pub fn load(tls: &ListenerTls) -> Result<TlsSettings, TlsFault> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut certs = Vec::with_capacity(tls.certificates.len());
        for (entry, pair) in tls.certificates.iter().enumerate() {
            certs.push(load_pair(pair, &provider).map_err(|fault| fault.at(entry))?);
        }
        let first = tls.certificates.first().map(|p| p.cert.clone());
        let fault = |reason| TlsFault {
            entry: None,
            path: first.clone().unwrap_or_default(),
            reason,
        };
        let resolver = SniResolver::new(certs).ok_or_else(|| fault(TlsError::NoCertificate))?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| fault(TlsError::Config(e)))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(resolver));
        config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
        Ok(TlsSettings {
            config: Arc::new(config),
        })
    }

    /// What is wrong with each certificate pair of `tls`, all of them (for `check`).
    pub fn faults(tls: &ListenerTls) -> Vec<TlsFault> {
        let provider = rustls::crypto::ring::default_provider();
        let pairs = tls.certificates.iter().enumerate();
        pairs
            .filter_map(|(entry, pair)| load_pair(pair, &provider).err().map(|f| f.at(entry)))
            .collect()
    }
}

/// A certificate pair's fault: the entry of `certificates` (when one is at fault), the file,
/// and what is wrong with it.
#[derive(Debug)]
pub struct TlsFault {
    /// Index in `certificates`; `None` for a fault of the whole section.
    pub entry: Option<usize>,
    /// The certificate or key file at fault.
    pub path: PathBuf,
    /// What is wrong with it.
    pub reason: TlsError,
}

impl TlsFault {
    fn at(self, entry: usize) -> TlsFault {
        TlsFault {
            entry: Some(entry),
            ..self
        }
    }
}

/// Reads one pair's files and makes its signing key.
fn load_pair(
    pair: &CertificatePair,
    provider: &CryptoProvider,
) -> Result<(CertifiedKey, Vec<String>), TlsFault> {
    let fault = |(path, reason)| TlsFault {
        entry: None,
        path,
        reason,
    };
    let (cert_pem, key_pem) = (
        read(&pair.cert).map_err(fault)?,
        read(&pair.key).map_err(fault)?,
    );
    certified(pair, &cert_pem, &key_pem, provider).map_err(fault)
}

fn read(path: &Path) -> Result<Box<[u8]>, (PathBuf, TlsError)> {
    std::fs::read(path)
        .map(Vec::into_boxed_slice)
        .map_err(|e| (path.to_owned(), TlsError::Read(e)))
}

/// One pair as a signing key with its chain and the SAN DNS names it serves.
fn certified(
    pair: &CertificatePair,
    cert_pem: &[u8],
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> Result<(CertifiedKey, Vec<String>), (PathBuf, TlsError)> {
    let cert_err = |e| (pair.cert.clone(), e);
    let key_err = |e| (pair.key.clone(), e);
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(TlsError::Pem(e)))?;
    let leaf = chain
        .first()
        .ok_or_else(|| cert_err(TlsError::NoCertificate))?;
    let names = dns_names(leaf).map_err(cert_err)?;
    let key = match PrivateKeyDer::from_pem_slice(key_pem) {
        Ok(key) => key,
        Err(pem::Error::NoItemsFound) => return Err(key_err(TlsError::NoKey)),
        Err(e) => return Err(key_err(TlsError::Pem(e))),
    };
    let signer = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| key_err(TlsError::UnsupportedKey(e)))?;
    let certified = CertifiedKey::new(chain, signer);
    match certified.keys_match() {
        // A key type whose public half rustls cannot derive: nothing to compare.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => {
            return Err(key_err(TlsError::KeyMismatch {
                cert: pair.cert.clone(),
            }))
        }
    }
    if names.is_empty() {
        tracing::warn!(cert = %pair.cert.display(), "certificate has no DNS SAN names; it is only served as the default");
    }
    Ok((certified, names))
}

/// The lowercased DNS names of a certificate's subjectAltName extension.
fn dns_names(cert: &CertificateDer<'_>) -> Result<Vec<String>, TlsError> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(cert.as_ref()).map_err(TlsError::BadCertificate)?;
    let Ok(Some(san)) = parsed.subject_alternative_name() else {
        return Ok(Vec::new());
    };
    Ok(san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some(dns.to_ascii_lowercase()),
            _ => None,
        })
        .collect())
}

/// Picks a listener's certificate from the client's SNI name.
#[derive(Debug)]
pub struct SniResolver {
    /// Exact SAN names, lowercased.
    exact: HashMap<Box<str>, Arc<CertifiedKey>>,
    /// Wildcard SANs by the suffix after `*.` (`*.example.com` is stored as `example.com`).
    wildcard: HashMap<Box<str>, Arc<CertifiedKey>>,
    /// The first certificate: no SNI, or a name no certificate claims.
    default: Arc<CertifiedKey>,
}

// === impl SniResolver ===

impl SniResolver {
    /// A resolver over `certs` in config order; `None` when there are none.
    fn new(certs: Vec<(CertifiedKey, Vec<String>)>) -> Option<SniResolver> {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        let mut default = None;
        for (key, names) in certs {
            let key = Arc::new(key);
            default.get_or_insert_with(|| key.clone());
            for name in names {
                let (map, name) = match name.strip_prefix("*.") {
                    Some(suffix) => (&mut wildcard, suffix.to_owned()),
                    None => (&mut exact, name),
                };
                map.entry(name.into_boxed_str())
                    .or_insert_with(|| key.clone());
            }
        }
        Some(SniResolver {
            exact,
            wildcard,
            default: default?,
        })
    }

    /// The certificate for `server_name`, the default when none claims it.
    pub fn pick(&self, server_name: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = server_name else {
            return &self.default;
        };
        // rustls already lowercases SNI; this only allocates for a name that is not.
        let lower;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = name.to_ascii_lowercase();
            lower.as_str()
        } else {
            name
        };
        if let Some(key) = self.exact.get(name) {
            return key;
        }
        name.split_once('.')
            .and_then(|(_, suffix)| self.wildcard.get(suffix))
            .unwrap_or(&self.default)
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(client_hello.server_name()).clone())
    }
}
