//! The `portcullis` binary as users run it: `cert` commands, `check` with
//! good and bad configs, `run` with SIGTERM draining an open connection,
//! and `demo --once`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

fn portcullis(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run portcullis")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn free_port() -> u16 {
    // Bind-and-release: the kernel hands out ephemeral ports in random
    // order, so a clash with another test in the window is negligible.
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn cert_commands_make_a_working_pki() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = portcullis(d, &["cert", "ca", "--trust-domain", "prod.example.org"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mode = std::fs::metadata(d.join("ca-key.pem"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "CA key must be 0600");

    // Existing files are not overwritten without --force.
    let o = portcullis(d, &["cert", "ca", "--trust-domain", "prod.example.org"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));

    let o = portcullis(
        d,
        &[
            "cert",
            "issue",
            "--id",
            "spiffe://prod.example.org/ns/pay/sa/payments",
            "--ttl",
            "2h",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let mode = std::fs::metadata(d.join("svid-key.pem"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "SVID key must be 0600");

    // An invalid ID is refused with the rule it breaks.
    let o = portcullis(
        d,
        &[
            "cert",
            "issue",
            "--id",
            "spiffe://prod.example.org/ns//x",
            "--out",
            "bad.pem",
            "--key-out",
            "bad-key.pem",
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("empty segment"), "{}", stderr(&o));
    assert!(!d.join("bad.pem").exists());
    // So is an ID of another trust domain, unless asked for.
    let o = portcullis(
        d,
        &[
            "cert",
            "issue",
            "--id",
            "spiffe://other.org/x",
            "--out",
            "o.pem",
            "--key-out",
            "o-key.pem",
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--allow-foreign-trust-domain"),
        "{}",
        stderr(&o)
    );

    let o = portcullis(d, &["cert", "inspect", "svid.pem"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("spiffe_id:  spiffe://prod.example.org/ns/pay/sa/payments"),
        "{out}"
    );
    assert!(out.contains("valid X.509-SVID leaf"), "{out}");
    assert!(
        out.contains("issuer:") && out.contains("not_after:") && out.contains("serial:"),
        "{out}"
    );
    let serial = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("serial:"))
        .unwrap()
        .trim()
        .to_string();

    // Revoke by certificate file, then by serial: the CRL keeps both.
    let o = portcullis(d, &["cert", "revoke", "--cert", "svid.pem"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = portcullis(
        d,
        &[
            "cert",
            "issue",
            "--id",
            "spiffe://prod.example.org/ns/a/sa/b",
            "--out",
            "b.pem",
            "--key-out",
            "b-key.pem",
        ],
    );
    assert!(o.status.success());
    let b_serial = portcullis::identity::check_leaf(
        &<rustls_pki_types::CertificateDer as rustls_pki_types::pem::PemObject>::from_pem_file(
            d.join("b.pem"),
        )
        .unwrap(),
        None,
    )
    .unwrap()
    .serial;
    let o = portcullis(d, &["cert", "revoke", "--serial", &b_serial]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = portcullis(d, &["cert", "inspect", "ca.crl"]);
    let out = stdout(&o);
    assert!(out.contains("revoked:     2"), "{out}");
    assert!(out.contains(&serial) && out.contains(&b_serial), "{out}");
    assert!(out.contains("number:      2"), "{out}");

    if have_tool("openssl", "cert_commands_make_a_working_pki") {
        // OpenSSL agrees: the SVID chains to the CA and the CRL is signed by it.
        let v = Command::new("openssl")
            .current_dir(d)
            .args(["verify", "-CAfile", "ca.pem", "b.pem"])
            .output()
            .unwrap();
        assert!(v.status.success(), "{}", stdout(&v));
        let c = Command::new("openssl")
            .current_dir(d)
            .args(["crl", "-in", "ca.crl", "-CAfile", "ca.pem", "-noout"])
            .output()
            .unwrap();
        assert!(
            c.status.success() && stderr(&c).contains("verify OK"),
            "{}",
            stderr(&c)
        );
    }
}

fn write_config(dir: &Path, body: &str) -> std::path::PathBuf {
    let p = dir.join("portcullis.yaml");
    std::fs::write(&p, body).unwrap();
    p
}

#[test]
fn check_validates_config_and_files() {
    let pki = Pki::new();
    let d = pki.dir.path();
    pki.svid("svid", "spiffe://prod.example.org/ns/shop/sa/orders");
    let good = "identity:\n  cert: svid.pem\n  key: svid-key.pem\n  trust_bundle: bundle.pem\ninbound:\n  - name: orders\n    listen: 127.0.0.1:15006\n    forward: 127.0.0.1:8080\n";
    write_config(d, good);
    let o = portcullis(d, &["check", "--config", "portcullis.yaml"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("spiffe://prod.example.org/ns/shop/sa/orders"));

    // A YAML mistake: file, line, column and reason.
    write_config(d, &good.replace("    forward:", "    froward:"));
    let o = portcullis(d, &["check", "--config", "portcullis.yaml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("portcullis.yaml:8:5: unknown field `froward`"),
        "{}",
        stderr(&o)
    );

    // A missing key file names the file.
    write_config(d, &good.replace("svid-key.pem", "missing-key.pem"));
    let o = portcullis(d, &["check", "--config", "portcullis.yaml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("missing-key.pem: cannot read"),
        "{}",
        stderr(&o)
    );

    // A key that does not belong to the certificate.
    pki.svid("other", "spiffe://prod.example.org/ns/x/sa/y");
    write_config(d, &good.replace("svid-key.pem", "other-key.pem"));
    let o = portcullis(d, &["check", "--config", "portcullis.yaml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("other-key.pem: private key does not match"),
        "{}",
        stderr(&o)
    );

    // A certificate file that holds no certificate.
    std::fs::write(d.join("junk.pem"), "not a certificate").unwrap();
    write_config(d, &good.replace("cert: svid.pem", "cert: junk.pem"));
    let o = portcullis(d, &["check", "--config", "portcullis.yaml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("junk.pem: no PEM certificate found"),
        "{}",
        stderr(&o)
    );

    // An SVID that does not chain to the bundle.
    let other =
        portcullis::pki::Ca::generate(&portcullis::identity::TrustDomain::parse(TD).unwrap(), DAY)
            .unwrap();
    std::fs::write(d.join("other-bundle.pem"), other.cert_pem()).unwrap();
    write_config(
        d,
        &good.replace("trust_bundle: bundle.pem", "trust_bundle: other-bundle.pem"),
    );
    let o = portcullis(d, &["check", "--config", "portcullis.yaml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("does not verify against the trust bundle"),
        "{}",
        stderr(&o)
    );

    // `run` refuses the same config at start, naming the file.
    let o = portcullis(d, &["run", "--config", "portcullis.yaml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("svid.pem: our SVID does not verify"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn check_wants_exactly_one_identity_source() {
    let pki = Pki::new();
    let d = pki.dir.path();
    pki.svid("svid", "spiffe://prod.example.org/ns/shop/sa/orders");
    let listeners =
        "inbound:\n  - name: orders\n    listen: 127.0.0.1:15006\n    forward: 127.0.0.1:8080\n";
    let files = "  cert: svid.pem\n  key: svid-key.pem\n  trust_bundle: bundle.pem\n";
    let api = "  workload_api:\n    socket: unix:///run/spire/sockets/agent.sock\n";

    write_config(d, &format!("identity:\n{files}{api}{listeners}"));
    let o = portcullis(d, &["check", "--config", "portcullis.yaml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("portcullis.yaml:6:5: identity names both files"),
        "{}",
        stderr(&o)
    );

    write_config(
        d,
        &format!("identity:\n  trust_domain: prod.example.org\n{listeners}"),
    );
    let o = portcullis(d, &["check", "--config", "portcullis.yaml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("identity names no source"),
        "{}",
        stderr(&o)
    );

    // The Workload API alone is fine: check says where identity will come from.
    write_config(d, &format!("identity:\n{api}{listeners}"));
    let o = portcullis(d, &["check", "--config", "portcullis.yaml"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("from the Workload API at unix:///run/spire/sockets/agent.sock"),
        "{}",
        stdout(&o)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_open_connection_finish() {
    let pki = Pki::new();
    let d = pki.dir.path();
    let server_id = "spiffe://prod.example.org/ns/shop/sa/orders";
    pki.svid("svid", server_id);
    pki.svid("peer", "spiffe://prod.example.org/ns/web/sa/frontend");
    let app = echo_app().await;
    let (inbound_port, admin_port) = (free_port(), free_port());
    let cfg = write_config(
        d,
        &format!(
            "identity:\n  cert: svid.pem\n  key: svid-key.pem\n  trust_bundle: bundle.pem\n\
             inbound:\n  - name: orders\n    listen: 127.0.0.1:{inbound_port}\n    forward: {app}\n\
             admin:\n  listen: 127.0.0.1:{admin_port}\ntimeouts:\n  drain: 60s\nlog:\n  format: json\n"
        ),
    );
    let mut child = tokio::process::Command::new(BIN)
        .args(["run", "--config", path_str(&cfg), "--worker-threads", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let inbound: std::net::SocketAddr = format!("127.0.0.1:{inbound_port}").parse().unwrap();
    wait_for(
        Duration::from_secs(20),
        "the sidecar to become ready",
        || async { matches!(http_get(admin, "/ready").await, Ok((200, _))).then_some(()) },
    )
    .await;

    let mut conn = tls_connect(inbound, pki.client_tls("peer", server_id))
        .await
        .unwrap();
    conn.write_all(b"before").await.unwrap();
    let mut buf = [0u8; 6];
    conn.read_exact(&mut buf).await.unwrap();

    let pid = child.id().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );

    // Draining: not ready, not accepting, but the open connection works.
    wait_for(Duration::from_secs(10), "/ready to report 503", || async {
        matches!(http_get(admin, "/ready").await, Ok((503, _))).then_some(())
    })
    .await;
    wait_for(
        Duration::from_secs(10),
        "the inbound port to close",
        || async {
            tokio::net::TcpStream::connect(inbound)
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;
    conn.write_all(b"after!").await.unwrap();
    conn.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"after!");
    assert!(
        child.try_wait().unwrap().is_none(),
        "must wait for the open connection"
    );

    // Closing it lets the process exit, cleanly and long before the drain timeout.
    conn.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = conn.read_to_end(&mut rest).await;
    drop(conn);
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the sidecar must exit once drained")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .await
        .unwrap();
    assert!(logs.contains("\"message\":\"drained; exiting\""), "{logs}");
}

#[test]
fn demo_runs_end_to_end() {
    let o = Command::new(BIN).args(["demo", "--once"]).output().unwrap();
    let out = stdout(&o);
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    assert!(out.contains("1. ok:"), "{out}");
    // HTTP behind the policy: the identity the app received, and a denial.
    assert!(
        out.contains("2. ok:")
            && out.contains("GET /hello from spiffe://demo.example.org/ns/demo/sa/client"),
        "{out}"
    );
    assert!(
        out.contains("decision=\"allow\",rule=\"hello\",service=\"web\"} 1"),
        "{out}"
    );
    assert!(out.contains("3. ok:") && out.contains("403"), "{out}");
    assert!(
        out.contains("decision=\"deny\",rule=\"default\",service=\"web\"} 1"),
        "{out}"
    );
    assert!(
        out.contains("4. ok:") && out.contains("result=\"untrusted_domain\"} 1"),
        "{out}"
    );
    assert!(out.contains("/metrics"), "{out}");
}

#[test]
fn two_services_example_script_works_with_curl() {
    let test = "two_services_example_script_works_with_curl";
    if !have_tool("curl", test) || !have_tool("python3", test) {
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/two-services/run.sh");
    let o = Command::new("bash").arg(script).arg(BIN).output().unwrap();
    let out = stdout(&o);
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    assert!(out.contains("hello from the orders app"), "{out}");
    assert!(out.contains("result=\"success\"} 1"), "{out}");
}

#[test]
fn the_annotated_example_config_is_complete_and_valid() {
    // config/portcullis.yaml with real files beside it passes `check`.
    let pki = Pki::new();
    let d = pki.dir.path();
    pki.svid("svid", "spiffe://prod.example.org/ns/shop/sa/orders");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/portcullis.yaml");
    std::fs::copy(&example, d.join("portcullis.yaml")).unwrap();
    std::fs::copy(example.with_file_name("policy.yaml"), d.join("policy.yaml")).unwrap();
    let o = portcullis(d, &["check", "--config", "portcullis.yaml"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("inbound:    orders 0.0.0.0:15006 -> 127.0.0.1:8080"),
        "{out}"
    );
    assert!(out.contains("outbound:   payments 127.0.0.1:15001 -> [127.0.0.1:16006] as spiffe://prod.example.org/ns/pay/sa/payments"), "{out}");
    assert!(
        out.contains("default deny, 2 service(s), 4 rule(s)"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_policy() {
    let pki = Pki::new();
    let d = pki.dir.path();
    pki.svid("svid", "spiffe://prod.example.org/ns/shop/sa/orders");
    let app = echo_app().await;
    let (inbound_port, admin_port) = (free_port(), free_port());
    std::fs::write(d.join("policy.yaml"), "default: deny\n").unwrap();
    let cfg = write_config(
        d,
        &format!(
            "identity:\n  cert: svid.pem\n  key: svid-key.pem\n  trust_bundle: bundle.pem\n\
             policy: policy.yaml\nreload:\n  watch: false\n  interval: 1h\n\
             inbound:\n  - name: orders\n    listen: 127.0.0.1:{inbound_port}\n    forward: {app}\n\
             admin:\n  listen: 127.0.0.1:{admin_port}\n"
        ),
    );
    let mut child = tokio::process::Command::new(BIN)
        .args(["run", "--config", path_str(&cfg)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    wait_for(
        Duration::from_secs(20),
        "the sidecar to become ready",
        || async { matches!(http_get(admin, "/ready").await, Ok((200, _))).then_some(()) },
    )
    .await;
    std::fs::write(d.join("policy.yaml"), "default: allow\n").unwrap();
    let pid = child.id().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    wait_for(Duration::from_secs(10), "the SIGHUP reload", || async {
        let (_, m) = http_get(admin, "/metrics").await.ok()?;
        (metric(
            &m,
            "portcullis_policy_reloads_total",
            &[("result", "success")],
        ) == Some(1.0))
        .then_some(())
    })
    .await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP must not stop the sidecar"
    );
    let _ = child.kill().await;
}
