//! HTTPS to the sync server: mutual TLS with rustls, zlib-compressed JSON requests (Santa
//! sends `Content-Encoding: deflate`, and Moroz decompresses every request body), bounded
//! responses, and bounded retries with exponential backoff and jitter.

use std::{
    fs,
    io::Write,
    path::Path,
    sync::Arc,
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{anyhow, bail, Context, Result};
use flate2::{write::ZlibEncoder, Compression};
use serde::Serialize;
use ureq::{
    tls::{parse_pem, Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig},
    Agent,
};

use super::{config::SyncConfig, protocol::Stage};

/// The largest response body read: 100,000 rules in one page are about 15 MB of JSON.
pub const MAX_RESPONSE_BYTES: u64 = 64 << 20;
/// How long one request may take, connection and body included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// A connection setup to one sync server.
pub struct Client {
    agent: Agent,
    config: SyncConfig,
}

/// Why a request failed, and whether trying again may help.
struct Failure {
    error: anyhow::Error,
    retry: bool,
}

impl Client {
    pub fn new(config: &SyncConfig) -> Result<Self> {
        let roots = certificates(&config.ca_file)?;
        let chain = certificates(&config.client_cert_file)?;
        let key = private_key(&config.client_key_file)?;
        check_key_pair(&chain, &key).with_context(|| {
            format!(
                "{} and {} are not a certificate and its key",
                config.client_cert_file.display(),
                config.client_key_file.display()
            )
        })?;
        let tls = TlsConfig::builder()
            .root_certs(RootCerts::Specific(Arc::new(roots)))
            .client_cert(Some(ClientCert::new_with_certs(&chain, key)))
            .build();
        let agent = Agent::config_builder()
            .tls_config(tls)
            .https_only(true)
            .http_status_as_error(false)
            .timeout_global(Some(REQUEST_TIMEOUT))
            .user_agent(concat!("blocker/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        Ok(Self {
            agent,
            config: config.clone(),
        })
    }

    /// POSTs `message` to `stage` and returns the response body, trying up to the configured
    /// number of times while the failure may pass (no connection, 5xx, 429).
    pub fn post(&self, stage: Stage, message: &impl Serialize) -> Result<Vec<u8>> {
        let url = self.config.stage_url(stage.name());
        let body = compressed(&serde_json::to_vec(message)?)?;
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1.. {
            match self.post_once(&url, &body) {
                Ok(response) => return Ok(response),
                Err(failure) if failure.retry && attempt < self.config.attempts => {
                    log::warn!(
                        "sync {}: {:#}; trying again in {backoff:?}",
                        stage.name(),
                        failure.error
                    );
                    thread::sleep(backoff + jitter(backoff));
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(failure) => {
                    return Err(failure.error.context(format!(
                        "{}: {url} (after {attempt} attempt{})",
                        stage.name(),
                        if attempt == 1 { "" } else { "s" }
                    )))
                }
            }
        }
        unreachable!("the loop returns")
    }

    fn post_once(&self, url: &str, body: &[u8]) -> Result<Vec<u8>, Failure> {
        let mut response = self
            .agent
            .post(url)
            .header("Content-Type", "application/json")
            .header("Content-Encoding", "deflate")
            .send(body)
            .map_err(|error| Failure {
                error: anyhow!(error),
                retry: true,
            })?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(Failure {
                error: anyhow!("the server answered HTTP {status}"),
                retry: status >= 500 || status == 429 || status == 408,
            });
        }
        response
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE_BYTES)
            .read_to_vec()
            .map_err(|error| Failure {
                error: match error {
                    ureq::Error::BodyExceedsLimit(_) => {
                        anyhow!("the response is larger than {MAX_RESPONSE_BYTES} bytes")
                    }
                    other => anyhow!(other),
                },
                retry: false,
            })
    }
}

fn compressed(json: &[u8]) -> Result<Vec<u8>> {
    let mut encoder = ZlibEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(json)?;
    Ok(encoder.finish()?)
}

/// Up to half of `backoff`, so that a fleet that lost its server does not return in step.
fn jitter(backoff: Duration) -> Duration {
    let noise = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.subsec_nanos());
    let half = backoff.as_millis() as u64 / 2;
    Duration::from_millis(u64::from(noise) % (half + 1))
}

fn pem_items(path: &Path) -> Result<Vec<PemItem<'static>>> {
    let pem = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    parse_pem(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: not PEM", path.display()))
}

fn certificates(path: &Path) -> Result<Vec<Certificate<'static>>> {
    let certificates: Vec<_> = pem_items(path)?
        .into_iter()
        .filter_map(|item| match item {
            PemItem::Certificate(certificate) => Some(certificate),
            _ => None,
        })
        .collect();
    if certificates.is_empty() {
        bail!("{}: holds no PEM certificate", path.display());
    }
    Ok(certificates)
}

fn private_key(path: &Path) -> Result<PrivateKey<'static>> {
    pem_items(path)?
        .into_iter()
        .find_map(|item| match item {
            PemItem::PrivateKey(key) => Some(key),
            _ => None,
        })
        .with_context(|| format!("{}: holds no PEM private key", path.display()))
}

/// That `key` is the key of the first certificate of `chain`: ureq takes it on trust (and
/// panics on a mismatch).
fn check_key_pair(chain: &[Certificate<'static>], key: &PrivateKey<'static>) -> Result<()> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = chain
        .iter()
        .map(|certificate| CertificateDer::from(certificate.der().to_vec()))
        .collect();
    let key = PrivateKeyDer::try_from(key.der().to_vec()).map_err(|error| anyhow!(error))?;
    rustls::sign::CertifiedKey::from_der(chain, key, &rustls::crypto::ring::default_provider())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn requests_are_zlib_streams() {
        let body = compressed(br#"{"machine_id":"m"}"#).unwrap();
        let mut plain = String::new();
        flate2::read::ZlibDecoder::new(&body[..])
            .read_to_string(&mut plain)
            .unwrap();
        assert_eq!(plain, r#"{"machine_id":"m"}"#);
    }

    #[test]
    fn jitter_stays_within_half_the_backoff() {
        for _ in 0..100 {
            assert!(jitter(Duration::from_secs(4)) <= Duration::from_secs(2));
        }
    }
}
