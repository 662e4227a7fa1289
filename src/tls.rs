//! HTTPS and WSS on the signaling port (`[tls]`, `--tls-cert`/`--tls-key`,
//! `--tls-self-signed`): a certificate from PEM files, or one made here for a LAN, where a
//! browser gives the camera only to a secure page and a classroom has no proxy in front.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsSection;

/// A server's TLS settings, ready for the listener.
pub struct Tls {
    pub config: Arc<rustls::ServerConfig>,
    /// SHA-256 of the certificate, colon-separated hex (as browsers show it).
    pub fingerprint: String,
    /// Where the certificate came from, for the start-up message.
    pub source: Source,
}

impl Tls {
    /// One line for the start-up message: whose certificate, and its fingerprint.
    pub fn describe(&self) -> String {
        match &self.source {
            Source::Files(path) => format!(
                "HTTPS and WSS with the certificate in {} (a kept self-signed one keeps the names it \
                 was made for: delete it and its key to have one made for this machine now); SHA-256 {}",
                path.display(),
                self.fingerprint
            ),
            Source::MadeNow { names, saved } => format!(
                "HTTPS and WSS with a self-signed certificate for {} ({}). Browsers warn once: \
                 proceed if the certificate's SHA-256 is {}",
                names.join(", "),
                match saved {
                    Some(path) => format!("kept in {} for the next start", path.display()),
                    None => "a new one at every start".to_string(),
                },
                self.fingerprint
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `cert` and `key` as given.
    Files(PathBuf),
    /// Made at this start: kept in memory only, or written to `cert` and `key`.
    MadeNow { names: Vec<String>, saved: Option<PathBuf> },
}

/// The TLS settings `section` asks for, or none (plain HTTP). `names` are the host names
/// and addresses a certificate made here must cover.
pub fn prepare(section: &TlsSection, names: &[String]) -> anyhow::Result<Option<Tls>> {
    let (cert, key) = match (&section.cert, &section.key) {
        (Some(c), Some(k)) => (Some(c.as_path()), Some(k.as_path())),
        (None, None) => (None, None),
        _ => bail!("tls: give both a certificate (--tls-cert) and its key (--tls-key), or neither"),
    };
    let (chain, private, source) = match (cert, key, section.self_signed) {
        (None, _, false) => return Ok(None),
        (Some(cert), Some(key), false) => {
            let (chain, private) = read_pair(cert, key)?;
            (chain, private, Source::Files(cert.to_path_buf()))
        }
        (Some(cert), Some(key), true) => match (cert.exists(), key.exists()) {
            (true, true) => {
                let (chain, private) = read_pair(cert, key)?;
                (chain, private, Source::Files(cert.to_path_buf()))
            }
            (false, false) => {
                let made = make(names)?;
                write_pair(cert, key, &made)?;
                let (chain, private) = read_pair(cert, key)?;
                (chain, private, Source::MadeNow { names: names.to_vec(), saved: Some(cert.to_path_buf()) })
            }
            _ => bail!(
                "tls: of {} and {} only one exists; remove it to have a new pair made, or give both",
                cert.display(),
                key.display()
            ),
        },
        (None, _, true) => {
            let made = make(names)?;
            let chain = vec![made.cert.der().clone()];
            let private = PrivateKeyDer::try_from(made.signing_key.serialize_der())
                .map_err(|e| anyhow::anyhow!("tls: the key made here: {e}"))?;
            (chain, private, Source::MadeNow { names: names.to_vec(), saved: None })
        }
        (Some(_), None, _) => unreachable!("cert and key are checked together above"),
    };
    let fingerprint = fingerprint(&chain[0]);
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("tls: protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .context("tls: the certificate and key do not go together")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Tls { config: Arc::new(config), fingerprint, source }))
}

fn read_pair(
    cert: &Path,
    key: &Path,
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("tls: reading the certificate {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("tls: parsing the certificate {}", cert.display()))?;
    if chain.is_empty() {
        bail!("tls: no certificate (-----BEGIN CERTIFICATE-----) in {}", cert.display());
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("tls: reading a private key (PEM) from {}", key.display()))?;
    Ok((chain, private))
}

fn make(names: &[String]) -> anyhow::Result<rcgen::CertifiedKey<rcgen::KeyPair>> {
    rcgen::generate_simple_self_signed(names.to_vec()).context("tls: making a self-signed certificate")
}

/// Write a made pair, each file new (a file that appeared meanwhile, say from a second
/// server starting at once, is an error, never overwritten), the key first and readable by
/// its owner only; on any failure neither file is left behind.
fn write_pair(cert: &Path, key: &Path, made: &rcgen::CertifiedKey<rcgen::KeyPair>) -> anyhow::Result<()> {
    fn write_new(path: &Path, mode: u32, text: &str) -> anyhow::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .with_context(|| format!("tls: creating {}", path.display()))?;
        let written = file.write_all(text.as_bytes()).and_then(|()| file.sync_all());
        if let Err(e) = written {
            let _ = std::fs::remove_file(path);
            return Err(e).with_context(|| format!("tls: writing {}", path.display()));
        }
        Ok(())
    }
    write_new(key, 0o600, &made.signing_key.serialize_pem())?;
    if let Err(e) = write_new(cert, 0o644, &made.cert.pem()) {
        let _ = std::fs::remove_file(key);
        return Err(e);
    }
    Ok(())
}

/// SHA-256 of a certificate as `AB:CD:…`.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    // The SHA-256 of rustls's own provider, reached through a suite that hashes with it.
    let suite = rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256;
    let sha256 = suite.tls13().expect("a TLS 1.3 suite").common.hash_provider;
    let digest = sha256.hash(cert.as_ref());
    digest.as_ref().iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

/// The names a certificate made for this server covers: loopback, the machine's host
/// name (and its `.local` mDNS name), the address signaling listens on, the addresses
/// announced for media and, when it listens on every address, each of the machine's own.
pub fn local_names(http: IpAddr, public_ips: &[IpAddr]) -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    if let Some(host) = host_name() {
        // The mDNS name is the first label's (`pc.example.com` answers as `pc.local`).
        let label = host.split('.').next().unwrap_or(&host);
        names.push(format!("{label}.local"));
        names.push(host);
    }
    let mut addresses: Vec<IpAddr> = public_ips.to_vec();
    if http.is_unspecified() {
        addresses.extend(interface_addresses());
    } else {
        addresses.push(http);
    }
    for a in addresses {
        names.push(a.to_string());
    }
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

fn host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it
    // when the name fits, and the last byte stays 0 otherwise.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|b| *b == 0)?;
    let name = std::str::from_utf8(&buf[..end]).ok()?.trim().to_string();
    // A name a certificate can carry (no spaces, not an address).
    (!name.is_empty()
        && name.parse::<IpAddr>().is_err()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'))
    .then_some(name)
}

/// The machine's own unicast addresses (loopback and link-local left out).
pub fn interface_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list freed by freeifaddrs below; each
    // entry's address pointer is null or points at a sockaddr of the family it names.
    unsafe {
        if libc::getifaddrs(&mut list) != 0 {
            return out;
        }
        let mut at = list;
        while !at.is_null() {
            let addr = (*at).ifa_addr;
            if !addr.is_null() {
                match i32::from((*addr).sa_family) {
                    libc::AF_INET => {
                        let v4 = &*(addr as *const libc::sockaddr_in);
                        out.push(IpAddr::from(u32::from_be(v4.sin_addr.s_addr).to_be_bytes()));
                    }
                    libc::AF_INET6 => {
                        let v6 = &*(addr as *const libc::sockaddr_in6);
                        out.push(IpAddr::from(v6.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
            at = (*at).ifa_next;
        }
        libc::freeifaddrs(list);
    }
    out.retain(|a| {
        !a.is_loopback()
            && !a.is_unspecified()
            && match a {
                IpAddr::V4(v4) => !v4.is_link_local(),
                IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
            }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(cert: Option<&Path>, key: Option<&Path>, self_signed: bool) -> TlsSection {
        TlsSection { cert: cert.map(Path::to_path_buf), key: key.map(Path::to_path_buf), self_signed }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("huiyi-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn no_settings_is_plain_http_and_a_lone_file_is_an_error() {
        assert!(prepare(&section(None, None, false), &[]).expect("fine").is_none());
        let err = prepare(&section(Some(Path::new("/x.pem")), None, false), &[]).err().expect("refused");
        assert!(err.to_string().contains("both"), "{err}");
        let err = prepare(
            &section(
                Some(Path::new("/nonexistent/cert.pem")),
                Some(Path::new("/nonexistent/key.pem")),
                false,
            ),
            &[],
        )
        .err()
        .expect("refused");
        assert!(format!("{err:#}").contains("/nonexistent/cert.pem"), "{err:#}");
    }

    #[test]
    fn a_self_signed_pair_is_made_once_kept_and_loaded_again() {
        let dir = temp_dir("kept");
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let first = prepare(&section(Some(&cert), Some(&key), true), &names).expect("made").expect("tls");
        assert!(matches!(first.source, Source::MadeNow { saved: Some(_), .. }));
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).expect("key").permissions());
        assert_eq!(mode & 0o077, 0, "the key is the owner's only");
        let again = prepare(&section(Some(&cert), Some(&key), true), &names).expect("loaded").expect("tls");
        assert_eq!(again.source, Source::Files(cert.clone()));
        assert_eq!(again.fingerprint, first.fingerprint, "the same certificate, not a new one");
        let plain = prepare(&section(Some(&cert), Some(&key), false), &names).expect("loaded").expect("tls");
        assert_eq!(plain.fingerprint, first.fingerprint);
        assert_eq!(first.fingerprint.len(), 32 * 3 - 1, "{}", first.fingerprint);
        std::fs::remove_file(&key).expect("rm");
        let err = prepare(&section(Some(&cert), Some(&key), true), &names).err().expect("half a pair");
        assert!(err.to_string().contains("only one exists"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused() {
        let dir = temp_dir("mismatch");
        let names = vec!["localhost".to_string()];
        let (a_cert, a_key) = (dir.join("a.pem"), dir.join("a.key"));
        let (b_cert, b_key) = (dir.join("b.pem"), dir.join("b.key"));
        prepare(&section(Some(&a_cert), Some(&a_key), true), &names).expect("a");
        prepare(&section(Some(&b_cert), Some(&b_key), true), &names).expect("b");
        let err = prepare(&section(Some(&a_cert), Some(&b_key), false), &names).err().expect("mismatch");
        assert!(format!("{err:#}").contains("do not go together"), "{err:#}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn made_certificates_cover_loopback_and_the_listening_address() {
        let names = local_names("192.0.2.7".parse().unwrap(), &["198.51.100.1".parse().unwrap()]);
        for want in ["localhost", "127.0.0.1", "192.0.2.7", "198.51.100.1"] {
            assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
        }
        let everywhere = local_names("0.0.0.0".parse().unwrap(), &[]);
        assert!(!everywhere.iter().any(|n| n == "0.0.0.0"), "{everywhere:?}");
    }
}
