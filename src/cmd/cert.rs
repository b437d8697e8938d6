//! `portcullis cert …`: the dev PKI on the command line. Files are written
//! atomically (temporary file, then rename, so a watching sidecar never
//! reads half a file), private keys with mode 0600, and nothing existing is
//! overwritten without `--force`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::{PemObject, SectionKind};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::args::CertCommand;
use crate::clock::fmt_time;
use crate::identity::{SpiffeId, TrustDomain, check_parsed_leaf, serial_hex, spiffe_id_of};
use crate::pki::{Ca, LeafSpec, RevokedEntry, read_crl};

/// An error for the user: what failed and why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CertCmdError(String);

fn err(msg: impl Into<String>) -> CertCmdError {
    CertCmdError(msg.into())
}

fn read_text(path: &Path) -> Result<String, CertCmdError> {
    std::fs::read_to_string(path).map_err(|e| err(format!("{}: cannot read: {e}", path.display())))
}

/// Writes `contents` to `path` via a temporary file and a rename.
fn write_file(path: &Path, contents: &[u8], mode: u32, force: bool) -> Result<(), CertCmdError> {
    if !force && path.exists() {
        return Err(err(format!(
            "{}: already exists (use --force to overwrite)",
            path.display()
        )));
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .map_err(|e| err(format!("{}: cannot create: {e}", dir.display())))?;
    let name = path
        .file_name()
        .ok_or_else(|| err(format!("{}: not a file name", path.display())))?;
    let tmp: PathBuf = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(format!("{}: cannot write: {e}", path.display()))
    })
}

fn load_ca(ca: &Path, ca_key: &Path) -> Result<Ca, CertCmdError> {
    let cert = read_text(ca)?;
    let key = read_text(ca_key)?;
    Ca::from_pem(&cert, &key)
        .map_err(|e| err(format!("{} / {}: {e}", ca.display(), ca_key.display())))
}

/// Runs one `cert` subcommand, returning what to print.
pub fn run(cmd: CertCommand) -> Result<String, CertCmdError> {
    match cmd {
        CertCommand::Ca {
            trust_domain,
            out,
            key_out,
            validity,
            force,
        } => {
            let td = TrustDomain::parse(&trust_domain)
                .map_err(|e| err(format!("invalid trust domain {trust_domain:?}: {e}")))?;
            let ca = Ca::generate(&td, validity.0).map_err(|e| err(e.to_string()))?;
            write_file(&key_out, ca.key_pem().as_bytes(), 0o600, force)?;
            write_file(&out, ca.cert_pem().as_bytes(), 0o644, force)?;
            Ok(format!(
                "CA for trust domain {td} written to {} (key: {}, mode 0600), valid for {validity}\n",
                out.display(),
                key_out.display()
            ))
        }
        CertCommand::Issue {
            ca,
            ca_key,
            id,
            ttl,
            out,
            key_out,
            dns_names,
            allow_foreign_trust_domain,
            force,
        } => {
            let spiffe_id =
                SpiffeId::parse(&id).map_err(|e| err(format!("invalid SPIFFE ID {id:?}: {e}")))?;
            let authority = load_ca(&ca, &ca_key)?;
            if let Some(td) = authority.trust_domain()
                && td.as_str() != spiffe_id.trust_domain_name()
                && !allow_foreign_trust_domain
            {
                return Err(err(format!(
                    "{spiffe_id} is in trust domain {:?} but the CA {} is for {:?} \
                     (use --allow-foreign-trust-domain to issue it anyway)",
                    spiffe_id.trust_domain_name(),
                    ca.display(),
                    td.as_str()
                )));
            }
            if let Some(bad) = dns_names.iter().find(|n| !valid_dns_name(n)) {
                return Err(err(format!("invalid DNS name {bad:?} for --dns")));
            }
            let mut spec = LeafSpec::svid(&spiffe_id, ttl.0);
            spec.dns_names = dns_names;
            let issued = authority.issue(&spec).map_err(|e| err(e.to_string()))?;
            write_file(&key_out, issued.key_pem.as_bytes(), 0o600, force)?;
            write_file(&out, issued.cert_pem.as_bytes(), 0o644, force)?;
            Ok(format!(
                "SVID for {spiffe_id} (serial {}) written to {} (key: {}, mode 0600), valid for {ttl}\n",
                issued.serial,
                out.display(),
                key_out.display()
            ))
        }
        CertCommand::Revoke {
            ca,
            ca_key,
            crl,
            serial,
            cert,
            next_update,
        } => {
            let serial = match (serial, cert) {
                (Some(s), _) => normalize_serial(&s)?,
                (None, Some(path)) => leaf_serial(&path)?,
                (None, None) => return Err(err("give --serial or --cert")),
            };
            let authority = load_ca(&ca, &ca_key)?;
            let (mut entries, number) = match std::fs::read(&crl) {
                Ok(bytes) => {
                    read_crl(&bytes).map_err(|e| err(format!("{}: {e}", crl.display())))?
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Vec::new(), 0),
                Err(e) => return Err(err(format!("{}: cannot read: {e}", crl.display()))),
            };
            let already = entries.iter().any(|e| e.serial == serial);
            if !already {
                entries.push(RevokedEntry {
                    serial: serial.clone(),
                    revoked_at: OffsetDateTime::now_utc(),
                });
            }
            let pem = authority
                .crl(&entries, number + 1, next_update.0)
                .map_err(|e| err(e.to_string()))?;
            write_file(&crl, pem.as_bytes(), 0o644, true)?;
            Ok(format!(
                "{} serial {serial}; CRL {} now lists {} serial(s), CRL number {}\n",
                if already {
                    "already revoked:"
                } else {
                    "revoked"
                },
                crl.display(),
                entries.len(),
                number + 1
            ))
        }
        CertCommand::Inspect { files } => {
            let mut out = String::new();
            for f in files {
                inspect(&f, &mut out)?;
            }
            Ok(out)
        }
    }
}

fn normalize_serial(s: &str) -> Result<String, CertCmdError> {
    let cleaned: String = s
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_lowercase();
    let cleaned = cleaned.trim_start_matches("0x");
    let bytes = hex::decode(if cleaned.len() % 2 == 1 {
        format!("0{cleaned}")
    } else {
        cleaned.to_string()
    })
    .map_err(|_| err(format!("serial {s:?} is not hexadecimal")))?;
    Ok(serial_hex(&bytes))
}

fn leaf_serial(path: &Path) -> Result<String, CertCmdError> {
    let text = read_text(path)?;
    let der = CertificateDer::from_pem_slice(text.as_bytes())
        .map_err(|e| err(format!("{}: no PEM certificate: {e}", path.display())))?;
    let (_, c) = X509Certificate::from_der(&der)
        .map_err(|e| err(format!("{}: cannot parse certificate: {e}", path.display())))?;
    Ok(serial_hex(c.raw_serial()))
}

fn inspect(path: &Path, out: &mut String) -> Result<(), CertCmdError> {
    let bytes =
        std::fs::read(path).map_err(|e| err(format!("{}: cannot read: {e}", path.display())))?;
    let mut found = 0;
    for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(&bytes) {
        let (kind, der) = item.map_err(|e| err(format!("{}: invalid PEM: {e}", path.display())))?;
        found += 1;
        match kind {
            SectionKind::Certificate => inspect_cert(path, found, &der, out)?,
            SectionKind::Crl => inspect_crl(path, &der, out)?,
            SectionKind::PrivateKey | SectionKind::EcPrivateKey | SectionKind::RsaPrivateKey => {
                let _ = writeln!(out, "{}: private key (not shown)", path.display());
            }
            other => {
                let _ = writeln!(out, "{}: {other:?} section (not inspected)", path.display());
            }
        }
    }
    if found == 0 {
        // DER files: try a certificate, then a CRL.
        if X509Certificate::from_der(&bytes).is_ok() {
            inspect_cert(path, 1, &bytes, out)?;
        } else {
            inspect_crl(path, &bytes, out)?;
        }
    }
    Ok(())
}

fn inspect_cert(path: &Path, n: usize, der: &[u8], out: &mut String) -> Result<(), CertCmdError> {
    let (_, c) = X509Certificate::from_der(der).map_err(|e| {
        err(format!(
            "{}: certificate {n} cannot be parsed: {e}",
            path.display()
        ))
    })?;
    let id = match spiffe_id_of(&c) {
        Ok(id) => id.to_string(),
        Err(e) => format!("none ({e})"),
    };
    let svid = if c.is_ca() {
        "no (CA certificate)".to_string()
    } else {
        match check_parsed_leaf(&c, None) {
            Ok(_) => "valid X.509-SVID leaf".to_string(),
            Err(e) => format!("not a valid SVID: {e}"),
        }
    };
    let not_after = c.validity().not_after.timestamp();
    let left = not_after - crate::clock::unix_now();
    let status = if left < 0 {
        "EXPIRED".to_string()
    } else {
        format!("expires in {}", human_secs(left))
    };
    use sha2::Digest;
    let _ = writeln!(out, "{}: certificate {n}", path.display());
    let _ = writeln!(out, "  spiffe_id:  {id}");
    let _ = writeln!(out, "  serial:     {}", serial_hex(c.raw_serial()));
    let _ = writeln!(out, "  subject:    {}", c.subject());
    let _ = writeln!(out, "  issuer:     {}", c.issuer());
    let _ = writeln!(
        out,
        "  not_before: {}",
        fmt_time(c.validity().not_before.timestamp())
    );
    let _ = writeln!(out, "  not_after:  {} ({status})", fmt_time(not_after));
    let _ = writeln!(out, "  ca:         {}", c.is_ca());
    let _ = writeln!(out, "  svid:       {svid}");
    let _ = writeln!(
        out,
        "  sha256:     {}",
        hex::encode(sha2::Sha256::digest(der))
    );
    Ok(())
}

fn inspect_crl(path: &Path, der: &[u8], out: &mut String) -> Result<(), CertCmdError> {
    let (_, crl) =
        x509_parser::revocation_list::CertificateRevocationList::from_der(der).map_err(|e| {
            err(format!(
                "{}: neither a certificate nor a CRL: {e}",
                path.display()
            ))
        })?;
    let _ = writeln!(out, "{}: CRL", path.display());
    let _ = writeln!(out, "  issuer:      {}", crl.issuer());
    let _ = writeln!(
        out,
        "  this_update: {}",
        fmt_time(crl.last_update().timestamp())
    );
    match crl.next_update() {
        Some(t) => {
            let _ = writeln!(out, "  next_update: {}", fmt_time(t.timestamp()));
        }
        None => {
            let _ = writeln!(out, "  next_update: none");
        }
    }
    if let Some(n) = crl.crl_number() {
        let _ = writeln!(out, "  number:      {n}");
    }
    let revoked: Vec<_> = crl.iter_revoked_certificates().collect();
    let _ = writeln!(out, "  revoked:     {}", revoked.len());
    for r in revoked {
        let _ = writeln!(
            out,
            "    {} at {}",
            serial_hex(r.raw_serial()),
            fmt_time(r.revocation_date.timestamp())
        );
    }
    Ok(())
}

fn human_secs(s: i64) -> String {
    let (d, h, m) = (s / 86400, (s % 86400) / 3600, (s % 3600) / 60);
    if d > 0 {
        format!("{d}d{h}h")
    } else if h > 0 {
        format!("{h}h{m}m")
    } else {
        format!("{m}m{}s", s % 60)
    }
}

/// A host name for a SAN: dot-separated labels of letters, digits and
/// hyphens (not at either end of a label), optionally a leading `*.`.
fn valid_dns_name(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_normalize() {
        assert_eq!(normalize_serial("0A:BC").unwrap(), "0abc");
        assert_eq!(normalize_serial("0x00ff").unwrap(), "ff");
        assert_eq!(normalize_serial("abc").unwrap(), "0abc");
        assert!(normalize_serial("xyz").is_err());
    }

    #[test]
    fn dns_names_checked() {
        for ok in ["in.bench", "a-b.example.org", "*.svc.cluster.local", "x"] {
            assert!(valid_dns_name(ok), "{ok}");
        }
        for bad in [
            "", "-a.org", "a..org", "a_b.org", "a.org.", "sp ace", "*.", "ä.org",
        ] {
            assert!(!valid_dns_name(bad), "{bad}");
        }
    }

    #[test]
    fn issue_with_dns_names_is_still_an_svid() {
        use clap::Parser;
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
        let cmd = |args: &[&str]| {
            let cli = crate::cmd::args::Cli::try_parse_from(args).unwrap();
            match cli.command {
                crate::cmd::args::Command::Cert(c) => run(c),
                _ => unreachable!(),
            }
        };
        let (ca, ca_key, out, key) = (p("ca.pem"), p("ca-key.pem"), p("svid.pem"), p("key.pem"));
        let base = ["portcullis", "cert"];
        cmd(&[
            &base[..],
            &[
                "ca",
                "--trust-domain",
                "example.org",
                "--out",
                &ca,
                "--key-out",
                &ca_key,
            ],
        ]
        .concat())
        .unwrap();
        let issue = |dns: &str| {
            cmd(&[
                &base[..],
                &[
                    "issue",
                    "--ca",
                    &ca,
                    "--ca-key",
                    &ca_key,
                    "--id",
                    "spiffe://example.org/in",
                ],
                &["--out", &out, "--key-out", &key, "--force", "--dns", dns],
            ]
            .concat())
        };
        let e = issue("bad_name").unwrap_err().to_string();
        assert!(e.contains("invalid DNS name \"bad_name\""), "{e}");
        issue("in.bench").unwrap();
        let identity = crate::tls::load_identity(Path::new(&out), Path::new(&key))
            .expect("still a valid SVID");
        assert_eq!(identity.leaf.id.to_string(), "spiffe://example.org/in");
        let pem = std::fs::read(&out).unwrap();
        let der = CertificateDer::from_pem_slice(&pem).unwrap();
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert!(format!("{:?}", san.value.general_names).contains("DNSName(\"in.bench\")"));
    }
}
