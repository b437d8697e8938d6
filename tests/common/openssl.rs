//! The real tools: an `openssl ca` directory for a CA, running `openssl`,
//! and `openssl ocsp` as a live responder.

use std::path::Path;
use std::time::Duration;

use portcullis::pki::Ca;
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};

use super::Pki;

/// Writes the CA's certificate and key and a minimal `openssl ca` config
/// (index.txt database) beside them, for `openssl ca` and `openssl ocsp`.
pub fn openssl_ca(pki: &Pki) {
    openssl_ca_in(pki.dir.path(), &pki.ca);
}

/// As [`openssl_ca`], for `ca` in `d` (another CA of a test: an
/// intermediate, an impostor).
pub fn openssl_ca_in(d: &Path, ca: &Ca) {
    std::fs::create_dir_all(d).unwrap();
    std::fs::write(d.join("ca.pem"), ca.cert_pem()).unwrap();
    std::fs::write(d.join("ca-key.pem"), ca.key_pem()).unwrap();
    openssl_ca_config(d);
}

/// The `openssl ca` database and config for the CA whose `ca.pem` and
/// `ca-key.pem` are (or will be) in `d`.
pub fn openssl_ca_config(d: &Path) {
    std::fs::write(d.join("index.txt"), "").unwrap();
    // Our SVIDs share a subject; their identity is the URI SAN.
    std::fs::write(d.join("index.txt.attr"), "unique_subject = no\n").unwrap();
    std::fs::write(d.join("crlnumber"), "01\n").unwrap();
    std::fs::write(
        d.join("ca.cnf"),
        "[ ca ]\ndefault_ca = CA_default\n[ CA_default ]\ndatabase = ./index.txt\ncrlnumber = ./crlnumber\n\
         certificate = ./ca.pem\nprivate_key = ./ca-key.pem\ndefault_md = sha256\ndefault_crl_days = 7\n",
    )
    .unwrap();
}

/// Runs `openssl` in `dir` and insists it succeeds.
pub fn openssl(dir: &Path, args: &[&str]) {
    let o = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Starts `openssl ocsp` on a free port, signing with `signer`/`key`. A
/// port found free can be taken (as another test's source port) before
/// openssl binds it: then it is tried again on another.
pub async fn responder(dir: &Path, signer: &str, key: &str) -> (Child, String) {
    for _ in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if let Some(started) = try_responder_on(dir, signer, key, port).await {
            return started;
        }
    }
    panic!("openssl ocsp would not start listening on any of 5 free ports");
}

/// Starts `openssl ocsp` on `port` (a restart on the same address).
pub async fn responder_on(dir: &Path, signer: &str, key: &str, port: u16) -> (Child, String) {
    try_responder_on(dir, signer, key, port)
        .await
        .expect("openssl ocsp exited before listening")
}

async fn try_responder_on(
    dir: &Path,
    signer: &str,
    key: &str,
    port: u16,
) -> Option<(Child, String)> {
    let mut child = Command::new("openssl")
        .current_dir(dir)
        .args([
            "ocsp",
            "-index",
            "index.txt",
            "-port",
            &port.to_string(),
            "-rsigner",
            signer,
            "-rkey",
            key,
            "-CA",
            "ca.pem",
            "-nmin",
            "5",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Ready once it says so: a probe connection without a request would
    // wedge its single-threaded loop.
    let stderr = child.stderr.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    let listening = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.starts_with("ACCEPT") || line.contains("waiting for OCSP client connections") {
                return true;
            }
        }
        false
    })
    .await
    .expect("openssl ocsp to start listening or exit");
    if !listening {
        return None;
    }
    // Keep draining its stderr so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Some((child, format!("http://127.0.0.1:{port}/")))
}

/// Writes `request` to `req.der`, has `openssl ocsp` answer it once from
/// the CA's index in `d`, signed by the CA, with `extra` arguments, and
/// returns the DER response.
pub fn ocsp_one_shot(d: &Path, request: &[u8], extra: &[&str]) -> Vec<u8> {
    std::fs::write(d.join("req.der"), request).unwrap();
    let mut args = vec![
        "ocsp",
        "-index",
        "index.txt",
        "-CA",
        "ca.pem",
        "-rsigner",
        "ca.pem",
        "-rkey",
        "ca-key.pem",
        "-reqin",
        "req.der",
        "-respout",
        "resp.der",
    ];
    args.extend_from_slice(extra);
    openssl(d, &args);
    std::fs::read(d.join("resp.der")).unwrap()
}
