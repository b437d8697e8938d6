//! Soak: steady load through sidecar processes at L4 and L7 while
//! everything that changes in production changes at once: SVIDs rotate
//! every couple of seconds, the CA rotates with an overlap, the policy
//! flips between two versions that both admit the load's client, the CRL
//! is replaced, and one of the two upstream sidecars goes away (SIGTERM,
//! drained) and comes back. Shown: no failed request; the sidecars' open
//! file descriptors and live tasks return to their baseline once the load
//! stops and RSS stays within a bound of it; no ERROR lines in their logs.
//!
//! Short mode (the suite): `PORTCULLIS_SOAK_SECS`, 30 s by default. Long
//! mode: `PORTCULLIS_SOAK_SECS=1800 cargo test --release --test soak --
//! --nocapture` (figures in the README).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use portcullis::identity::TrustDomain;
use portcullis::pki::{Ca, RevokedEntry};
use tokio::process::{Child, Command};

const SERVER_ID: &str = "spiffe://prod.example.org/ns/shop/sa/orders";
const CLIENT_ID: &str = "spiffe://prod.example.org/ns/web/sa/frontend";

fn soak_secs() -> u64 {
    std::env::var("PORTCULLIS_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30)
}

/// Writes `content` to `path` at once (as issuers and Kubernetes do).
fn put(path: &Path, content: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A sidecar process and what the soak watches of it.
struct Proc {
    name: &'static str,
    config: PathBuf,
    log: PathBuf,
    admin: SocketAddr,
    child: Option<Child>,
}

impl Proc {
    async fn start(name: &'static str, dir: &Path, yaml: String, admin: SocketAddr) -> Proc {
        let config = dir.join(format!("{name}.yaml"));
        std::fs::write(&config, yaml).unwrap();
        let mut p = Proc {
            name,
            config,
            log: dir.join(format!("{name}.log")),
            admin,
            child: None,
        };
        p.spawn().await;
        p
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["run", "--config"])
            .arg(&self.config)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let admin = self.admin;
        wait_for(Duration::from_secs(30), "a sidecar ready", || async move {
            (http_get(admin, "/ready").await.ok()?.0 == 200).then_some(())
        })
        .await;
    }

    /// SIGTERM, and wait for the drain to end.
    async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = c.id().unwrap().to_string();
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status();
            let _ = tokio::time::timeout(Duration::from_secs(20), c.wait()).await;
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().and_then(|c| c.id()).unwrap()
    }

    fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }

    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    async fn tasks(&self) -> f64 {
        let m = http_get(self.admin, "/metrics").await.unwrap().1;
        metric(&m, "portcullis_runtime_alive_tasks", &[]).unwrap()
    }

    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let m = http_get(self.admin, "/metrics").await.unwrap().1;
        metric(&m, name, labels).unwrap_or(0.0)
    }

    fn error_lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(" ERROR "))
            .map(str::to_string)
            .collect()
    }
}

/// The identity files, written by "the issuer" (this test).
struct Issuer {
    dir: PathBuf,
    td: TrustDomain,
    crl_number: u64,
}

impl Issuer {
    fn svids(&self, ca: &Ca) {
        for (name, who) in [("server", SERVER_ID), ("client", CLIENT_ID)] {
            let issued = ca.issue_svid(&id(who), DAY).unwrap();
            // Key first, then the certificate: each sidecar may see the
            // new key with the old certificate for a moment (pending).
            put(
                &self.dir.join(format!("{name}-key.pem")),
                issued.key_pem.as_bytes(),
            );
            put(
                &self.dir.join(format!("{name}.pem")),
                issued.cert_pem.as_bytes(),
            );
        }
    }

    fn bundle(&self, cas: &[&Ca]) {
        let pem: String = cas.iter().map(|c| c.cert_pem()).collect();
        put(&self.dir.join("bundle.pem"), pem.as_bytes());
    }

    /// New CRLs from each CA in `cas`, one number up, each revoking a
    /// certificate nobody uses, in the one CRL file (during a CA rotation
    /// it carries both CAs' lists, as an operator's must).
    fn crl(&mut self, cas: &[&Ca]) {
        self.crl_number += 1;
        let mut pem = String::new();
        for ca in cas {
            let gone = ca
                .issue_svid(&id("spiffe://prod.example.org/ns/old/sa/gone"), DAY)
                .unwrap();
            let entry = RevokedEntry {
                serial: gone.serial,
                revoked_at: time::OffsetDateTime::now_utc() - Duration::from_secs(60),
            };
            pem.push_str(
                &ca.crl(&[entry], self.crl_number, Duration::from_secs(3600))
                    .unwrap(),
            );
        }
        put(&self.dir.join("ca.crl"), pem.as_bytes());
    }
}

fn policy(version: u32) -> String {
    // Two versions that both admit the load's client, by different rules.
    match version % 2 {
        0 => format!(
            "default: deny\nservices:\n  web:\n    rules:\n      - name: frontend\n        action: allow\n        from: [\"{CLIENT_ID}\"]\n  echo:\n    rules:\n      - name: frontend\n        action: allow\n        from: [\"{CLIENT_ID}\"]\n"
        ),
        _ => "default: deny\nservices:\n  web:\n    rules:\n      - name: web-ns\n        action: allow\n        from: [\"spiffe://prod.example.org/ns/web/**\"]\n      - name: no-admin\n        action: deny\n        from: [\"spiffe://prod.example.org\"]\n        paths: [\"/admin/*\"]\n  echo:\n    rules:\n      - name: web-ns\n        action: allow\n        from: [\"spiffe://prod.example.org/ns/web/**\"]\n".to_string(),
    }
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
}

/// Load until `stop`: L7 requests (a new client connection each, pooled
/// upstream) and L4 echoes (a new connection each).
fn load(
    web: SocketAddr,
    echo: SocketAddr,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    errors: Arc<std::sync::Mutex<Vec<String>>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut workers = Vec::new();
    for w in 0..4 {
        let (stop, tally, errors) = (stop.clone(), tally.clone(), errors.clone());
        workers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let result = if w % 2 == 0 {
                    match http_get(web, &format!("/soak/{w}/{i}")).await {
                        Ok((200, _)) => Ok(()),
                        Ok((s, body)) => Err(format!("L7: {s} {body}")),
                        Err(e) => Err(format!("L7: {e}")),
                    }
                } else {
                    let data = format!("soak {w} {i}").repeat(20);
                    match round_trip(echo, data.as_bytes()).await {
                        Ok(back) if back == data.as_bytes() => Ok(()),
                        Ok(back) => Err(format!("L4: {} of {} bytes back", back.len(), data.len())),
                        Err(e) => Err(format!("L4: {e}")),
                    }
                };
                match result {
                    Ok(()) => tally.ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        let mut errs = errors.lock().unwrap();
                        if errs.len() < 1000 {
                            errs.push(e);
                        }
                        tally.failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    workers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soak_under_rotation_policy_and_endpoint_churn_loses_nothing_and_leaks_nothing() {
    let secs = soak_secs();
    let mut dir = tempfile::tempdir().unwrap();
    // PORTCULLIS_SOAK_KEEP=1 keeps the sidecars' files and logs to look at.
    if std::env::var("PORTCULLIS_SOAK_KEEP").is_ok() {
        dir.disable_cleanup(true);
        eprintln!("soak files kept in {}", dir.path().display());
    }
    let d = dir.path();
    let td = TrustDomain::parse(TD).unwrap();
    let ca1 = Ca::generate(&td, DAY).unwrap();
    let ca2 = Ca::generate(&td, DAY).unwrap();
    let mut issuer = Issuer {
        dir: d.to_path_buf(),
        td: td.clone(),
        crl_number: 0,
    };
    let _ = &issuer.td;
    issuer.bundle(&[&ca1]);
    issuer.svids(&ca1);
    issuer.crl(&[&ca1]);
    put(&d.join("policy.yaml"), policy(0).as_bytes());

    let (app, _) = http_app().await;
    let echo = echo_app().await;
    let common = "reload:\n  watch: true\n  debounce: 200ms\n  interval: 1h\nrevocation:\n  crls: [ca.crl]\ntimeouts:\n  drain: 5s\nlog:\n  level: warn\n";
    let server_yaml = |web: SocketAddr, echo_in: SocketAddr, admin: SocketAddr| {
        format!(
            "identity:\n  cert: server.pem\n  key: server-key.pem\n  trust_bundle: bundle.pem\npolicy: policy.yaml\n\
             inbound:\n  - name: web\n    listen: {web}\n    forward: {app}\n    protocol: http\n\
             \x20 - name: echo\n    listen: {echo_in}\n    forward: {echo}\n    protocol: tcp\n\
             admin:\n  listen: {admin}\n{common}"
        )
    };
    let (a_web, a_echo, a_admin) = (free_addr(), free_addr(), free_addr());
    let (b_web, b_echo, b_admin) = (free_addr(), free_addr(), free_addr());
    let mut a = Proc::start("server-a", d, server_yaml(a_web, a_echo, a_admin), a_admin).await;
    let mut b = Proc::start("server-b", d, server_yaml(b_web, b_echo, b_admin), b_admin).await;
    let (c_web, c_echo, c_admin) = (free_addr(), free_addr(), free_addr());
    let mut c = Proc::start(
        "client",
        d,
        format!(
            "identity:\n  cert: client.pem\n  key: client-key.pem\n  trust_bundle: bundle.pem\n\
             outbound:\n  - name: web\n    listen: {c_web}\n    endpoints: [{a_web}, {b_web}]\n    identity: {SERVER_ID}\n    protocol: http\n\
             \x20 - name: echo\n    listen: {c_echo}\n    endpoints: [{a_echo}, {b_echo}]\n    identity: {SERVER_ID}\n    protocol: tcp\n\
             admin:\n  listen: {c_admin}\n{common}"
        ),
        c_admin,
    )
    .await;

    // Warm up, then take the baseline with no load running.
    let (stop, tally, errors) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(Tally::default()),
        Arc::new(std::sync::Mutex::new(Vec::new())),
    );
    for _ in 0..20 {
        assert_eq!(http_get(c_web, "/warm").await.unwrap().0, 200);
        assert!(round_trip(c_echo, b"warm").await.is_ok());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline: Vec<(usize, f64, u64)> = {
        let mut v = Vec::new();
        for p in [&a, &c] {
            v.push((p.fds(), p.tasks().await, p.rss_kib()));
        }
        v
    };

    let workers = load(c_web, c_echo, stop.clone(), tally.clone(), errors.clone());
    let started = Instant::now();
    let total = Duration::from_secs(secs);
    let mut tick = 0u32;
    let mut ca_phase = 0; // 0: CA1; 1: both trusted; 2: SVIDs from CA2; 3: CA2 only
    let (mut rotations, mut flips, mut crls, mut restarts) = (0, 0, 0, 0);
    while started.elapsed() < total {
        tokio::time::sleep(Duration::from_secs(2)).await;
        tick += 1;
        let progress = started.elapsed().as_secs_f64() / total.as_secs_f64();
        // The CA rotation, in its order: trust both (and carry both CAs'
        // CRLs), reissue, drop the old (its CRL first, then the CA).
        let issuing = if ca_phase >= 2 { &ca2 } else { &ca1 };
        let trusted: Vec<&Ca> = match ca_phase {
            0 => vec![&ca1],
            1 | 2 => vec![&ca1, &ca2],
            _ => vec![&ca2],
        };
        if ca_phase == 0 && progress > 0.3 {
            issuer.bundle(&[&ca1, &ca2]);
            issuer.crl(&[&ca1, &ca2]);
            crls += 1;
            ca_phase = 1;
        } else if ca_phase == 1 {
            ca_phase = 2;
            issuer.svids(&ca2);
            rotations += 1;
        } else if ca_phase == 2 && progress > 0.6 {
            issuer.crl(&[&ca2]);
            crls += 1;
            // Let every sidecar take the CRL before the CA leaves.
            tokio::time::sleep(Duration::from_millis(600)).await;
            issuer.bundle(&[&ca2]);
            ca_phase = 3;
        } else {
            issuer.svids(issuing);
            rotations += 1;
            issuer.crl(&trusted);
            crls += 1;
        }
        put(&d.join("policy.yaml"), policy(tick).as_bytes());
        flips += 1;
        // Every third tick, server B goes away (drained) and comes back.
        if tick.is_multiple_of(3) {
            b.stop().await;
            b.spawn().await;
            restarts += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let (ok, failed) = (
        tally.ok.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
    );
    eprintln!(
        "soak {secs} s: {ok} requests ok, {failed} failed; {rotations} SVID rotations, a CA rotation, {flips} policy flips, {crls} CRLs, {restarts} upstream restarts"
    );
    let errs = errors.lock().unwrap().clone();
    assert!(ok > 100, "too little load went through: {ok}");
    assert!(ca_phase == 3, "the CA rotation did not finish in {secs} s");

    // Every reload in the churn was applied (none refused), and the
    // sidecars took the last CA's SVIDs.
    for p in [&a, &c] {
        assert_eq!(
            p.metric(
                "portcullis_cert_reloads_total",
                &[("kind", "identity"), ("result", "error")]
            )
            .await,
            0.0,
            "{}: an identity reload was refused",
            p.name
        );
        assert_eq!(
            p.metric(
                "portcullis_cert_reloads_total",
                &[("kind", "bundle"), ("result", "error")]
            )
            .await,
            0.0,
            "{}: a bundle reload was refused",
            p.name
        );
    }
    assert_eq!(
        a.metric("portcullis_policy_reloads_total", &[("result", "error")])
            .await,
        0.0
    );

    // Back to baseline: descriptors and tasks once the pooled upstream
    // connections are all there is; RSS within a bound of it.
    for (p, (fds0, tasks0, rss0)) in [&a, &c].into_iter().zip(baseline) {
        let what = format!(
            "{}: fds and tasks back to baseline ({fds0}, {tasks0})",
            p.name
        );
        let settle = wait_for(Duration::from_secs(20), &what, || async {
            let (fds, tasks) = (p.fds(), p.tasks().await);
            (fds <= fds0 + 4 && tasks <= tasks0 + 4.0).then_some((fds, tasks))
        })
        .await;
        let rss = p.rss_kib();
        eprintln!(
            "{}: fds {fds0} -> {}, tasks {tasks0} -> {}, RSS {rss0} -> {rss} KiB",
            p.name, settle.0, settle.1
        );
        assert!(
            rss < rss0 + 16 * 1024,
            "{}: RSS grew from {rss0} to {rss} KiB",
            p.name
        );
    }
    for p in [&a, &b, &c] {
        let lines = p.error_lines();
        assert!(
            lines.is_empty(),
            "{}: ERROR lines: {:?}",
            p.name,
            &lines[..lines.len().min(5)]
        );
    }
    for p in [&mut a, &mut b, &mut c] {
        p.stop().await;
    }
    // Last, so a long run that lost a request still reports the rest.
    assert_eq!(
        failed,
        0,
        "failed requests: {:?}",
        &errs[..errs.len().min(10)]
    );
}
