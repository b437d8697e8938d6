//! The pod for real: `portcullis init` sets its netfilter rules in a
//! network namespace of the test's own (as the init container does in a
//! pod), idempotently, and removes exactly them. Needs root and iptables:
//! skipped with the reason otherwise, a failure under
//! PORTCULLIS_REQUIRE_TOOLS=1 (CI installs both).

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::pair::one_response;
use common::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// A network namespace, deleted when dropped.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("pc-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let o = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "ip netns add: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let ns = Netns(name);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn exec(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.exec(args);
        assert!(
            o.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).to_string()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn can_run(test: &str) -> bool {
    have_root(test) && have_tool("iptables", test) && have_tool("ip", test)
}

/// The nat table's rules that are ours, in order.
fn ours(ns: &Netns, tool_save: &str) -> Vec<String> {
    ns.ok(&[tool_save, "-t", "nat"])
        .lines()
        .filter(|l| l.contains("PORTCULLIS"))
        .map(str::to_string)
        .collect()
}

#[test]
fn init_sets_its_rules_once_and_cleanup_removes_only_them() {
    const TEST: &str = "init_sets_its_rules_once_and_cleanup_removes_only_them";
    if !can_run(TEST) {
        return;
    }
    let ns = Netns::new("init");
    // Someone else's rule, which must survive everything below.
    ns.ok(&[
        "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "udp", "--dport", "53", "-j", "RETURN",
    ]);

    // --dry-run prints the commands and changes nothing.
    let dry = ns.ok(&[BIN, "init", "--dry-run", "--ipv6", "off"]);
    assert!(
        dry.contains("iptables -t nat -A PORTCULLIS_INBOUND -p tcp -j REDIRECT --to-ports 15006"),
        "{dry}"
    );
    assert!(ours(&ns, "iptables-save").is_empty());

    ns.ok(&[
        BIN,
        "init",
        "--skip-outbound-cidrs",
        "10.96.0.0/12,fd00::/8",
    ]);
    let first = ours(&ns, "iptables-save");
    ns.ok(&[
        BIN,
        "init",
        "--skip-outbound-cidrs",
        "10.96.0.0/12,fd00::/8",
    ]);
    assert_eq!(
        ours(&ns, "iptables-save"),
        first,
        "a second run changed the rules"
    );
    let jumps = |rules: &[String]| {
        rules
            .iter()
            .filter(|l| l.starts_with("-A PREROUTING") || l.starts_with("-A OUTPUT"))
            .count()
    };
    assert_eq!(jumps(&first), 2, "{first:#?}");
    let text = first.join("\n");
    for want in [
        "-A PORTCULLIS_INBOUND -p tcp -m tcp --dport 15021 -j RETURN",
        "-A PORTCULLIS_INBOUND -p tcp -j REDIRECT --to-ports 15006",
        "-A PORTCULLIS_OUTPUT -p tcp -m owner --uid-owner 2102 -j RETURN",
        "-A PORTCULLIS_OUTPUT -d 10.96.0.0/12 -p tcp -j RETURN",
        "-A PORTCULLIS_OUTPUT -p tcp -j REDIRECT --to-ports 15001",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    if have_tool("ip6tables", TEST) {
        let v6 = ours(&ns, "ip6tables-save").join("\n");
        assert!(
            v6.contains("-A PORTCULLIS_OUTPUT -d fd00::/8 -p tcp -j RETURN"),
            "{v6}"
        );
        assert!(!v6.contains("10.96.0.0"), "{v6}");
    }

    // Without NET_ADMIN (here: another user, no capabilities) the error
    // names the command and what the init container lacks, and exits 1.
    if have_tool("setpriv", TEST) {
        let o = ns.exec(&[
            "setpriv",
            "--reuid",
            "1000",
            "--regid",
            "1000",
            "--clear-groups",
            BIN,
            "init",
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(
            err.contains("iptables -t nat") && err.contains("NET_ADMIN"),
            "{err}"
        );
    }

    ns.ok(&[BIN, "init", "--cleanup"]);
    assert!(ours(&ns, "iptables-save").is_empty());
    if have_tool("ip6tables", TEST) {
        assert!(ours(&ns, "ip6tables-save").is_empty());
    }
    let left = ns.ok(&["iptables-save", "-t", "nat"]);
    assert!(
        left.contains("-A OUTPUT -p udp -m udp --dport 53 -j RETURN"),
        "{left}"
    );
    // Cleaning up twice is fine too.
    ns.ok(&[BIN, "init", "--cleanup"]);
}

const ORDERS: &str = "spiffe://prod.example.org/ns/shop/sa/orders";
const FRONTEND: &str = "spiffe://prod.example.org/ns/web/sa/frontend";

/// An HTTP app on 0.0.0.0:8080 (so on the pod IP, as most apps listen)
/// that answers with the identity header it received.
const APP: &str = r#"
import http.server
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = (self.headers.get("x-portcullis-peer-id") or "no identity").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), H).serve_forever()
"#;

fn run(args: &[&str]) {
    let o = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A pod network: a bridge in a namespace of its own (so nothing in the
/// test's namespace is switched or forwarded), `10.202.<subnet>.0/24`, with
/// a leg for the test itself at `.254` and pods attached by veth pairs.
struct Lan {
    ns: Netns,
    subnet: u8,
    /// The test's leg, removed on drop.
    host_if: String,
}

impl Lan {
    fn new(tag: &str) -> Lan {
        let ns = Netns::new(&format!("{tag}lan"));
        let subnet = (std::process::id() % 200) as u8 + 20 + if tag == "o" { 1 } else { 0 };
        ns.ok(&["ip", "link", "add", "br0", "type", "bridge"]);
        ns.ok(&["ip", "link", "set", "br0", "up"]);
        let host_if = format!("pcl{tag}{}", std::process::id() % 100_000);
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        run(&[
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", "test", "netns", &ns.0,
        ]);
        ns.ok(&["ip", "link", "set", "test", "master", "br0", "up"]);
        run(&[
            "ip",
            "addr",
            "add",
            &format!("10.202.{subnet}.254/24"),
            "dev",
            &host_if,
        ]);
        run(&["ip", "link", "set", &host_if, "up"]);
        Lan {
            ns,
            subnet,
            host_if,
        }
    }

    /// The test's own address on this network.
    fn host(&self) -> std::net::Ipv4Addr {
        std::net::Ipv4Addr::new(10, 202, self.subnet, 254)
    }

    /// A pod at `10.202.<subnet>.<n>`.
    fn pod(&self, tag: &str, n: u8) -> Pod {
        let ns = Netns::new(tag);
        let port = format!("p{tag}");
        self.ns.ok(&[
            "ip", "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns.0,
        ]);
        self.ns
            .ok(&["ip", "link", "set", &port, "master", "br0", "up"]);
        let ip = std::net::Ipv4Addr::new(10, 202, self.subnet, n);
        ns.ok(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        ns.ok(&["ip", "link", "set", "eth0", "up"]);
        Pod { ns, ip }
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
    }
}

/// A pod: a network namespace with one address on a [`Lan`].
struct Pod {
    ns: Netns,
    ip: std::net::Ipv4Addr,
}

impl Pod {
    /// Runs `args` inside the pod in the background, killed on drop.
    fn spawn(&self, args: &[&str]) -> tokio::process::Child {
        tokio::process::Command::new("ip")
            .args(["netns", "exec", &self.ns.0])
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }

    /// Runs a sidecar with `config` inside the pod and waits until its
    /// admin server (at `admin`, on the pod IP) says it is ready.
    async fn run_sidecar(
        &self,
        config: &std::path::Path,
        admin: std::net::SocketAddr,
    ) -> tokio::process::Child {
        let child = self.spawn(&[BIN, "run", "--config", path_str(config)]);
        wait_for(
            Duration::from_secs(20),
            "the pod's sidecar to be ready",
            || async { matches!(http_get(admin, "/ready").await, Ok((200, _))).then_some(()) },
        )
        .await;
        child
    }

    fn addr(&self, port: u16) -> std::net::SocketAddr {
        (self.ip, port).into()
    }
}

/// Pod B: an app on the pod IP (port 8080) and a sidecar serving it as
/// `orders` through inbound capture, set up by `portcullis init`, its
/// policy admitting FRONTEND. The children live as long as this does.
struct OrdersPod {
    pod: Pod,
    policy: std::path::PathBuf,
    allow: String,
    admin: std::net::SocketAddr,
    _children: Vec<tokio::process::Child>,
}

async fn orders_pod(lan: &Lan, pki: &Pki, tag: &str, n: u8) -> OrdersPod {
    let b = lan.pod(tag, n);
    let app = b.spawn(&["python3", "-c", APP]);
    wait_for(Duration::from_secs(20), "the app to listen", || async {
        let o = b.ns.exec(&["ss", "-Hltn", "sport", "= :8080"]);
        (!o.stdout.is_empty()).then_some(())
    })
    .await;
    pki.svid("orders-svid", ORDERS);
    let policy = pki.path(&format!("{tag}-policy.yaml"));
    let allow = format!(
        "default: deny\nservices:\n  orders:\n    rules:\n      - {{ name: frontend, action: allow, from: [\"{FRONTEND}\"] }}\n"
    );
    std::fs::write(&policy, &allow).unwrap();
    let admin = b.addr(15000);
    let config = pki.path(&format!("{tag}.yaml"));
    std::fs::write(
        &config,
        format!(
            "identity:\n  cert: orders-svid.pem\n  key: orders-svid-key.pem\n  trust_bundle: bundle.pem\n\
             policy: {tag}-policy.yaml\n\
             reload:\n  watch: false\n\
             capture:\n  inbound: 0.0.0.0:15006\n\
             inbound:\n  - name: orders\n    port: 8080\n    protocol: http\n\
             admin:\n  listen: {admin}\n  allow_non_loopback: true\n"
        ),
    )
    .unwrap();
    b.ns.ok(&[BIN, "init", "--inbound-only", "--ipv6", "off"]);
    let sidecar = b.run_sidecar(&config, admin).await;
    OrdersPod {
        pod: b,
        policy,
        allow,
        admin,
        _children: vec![app, sidecar],
    }
}

/// Pod B runs an app on its pod IP and a sidecar set up by `portcullis
/// init`; a client sidecar with FRONTEND's SVID (pod A, here in the host's
/// namespace) calls B's IP and port as it would without a mesh. Shown:
/// the call arrives over mTLS with A's SPIFFE ID in the identity header; a
/// plaintext client (pod C) to the same IP and port never reaches the app,
/// nor does a forged identity header; a port no listener serves is
/// refused; and a policy change on B denying A takes effect on A's open
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captured_pod_is_reached_only_over_mtls_with_the_callers_identity() {
    const TEST: &str = "a_captured_pod_is_reached_only_over_mtls_with_the_callers_identity";
    if !can_run(TEST) || !have_tool("python3", TEST) {
        return;
    }
    let pki = Pki::new();
    let lan = Lan::new("i");
    let b = orders_pod(&lan, &pki, "b", 2).await;
    let (policy, allow, admin) = (b.policy.clone(), b.allow.clone(), b.admin);
    let b = &b.pod;

    // Pod A: an ordinary client sidecar whose upstream is B's IP and port.
    pki.svid("frontend-svid", FRONTEND);
    let a = portcullis::sidecar::start(pki.config(
        "a.yaml",
        &format!(
            "identity:\n  cert: frontend-svid.pem\n  key: frontend-svid-key.pem\n  trust_bundle: bundle.pem\n\
             outbound:\n  - name: orders\n    listen: 127.0.0.1:0\n    endpoints: [{}]\n    identity: {ORDERS}\n    protocol: http\n\
             admin:\n  listen: 127.0.0.1:0\n",
            b.addr(8080)
        ),
    ))
    .await
    .unwrap();
    let out = a.outbound_addr("orders").unwrap();
    let (code, body) = wait_for(
        Duration::from_secs(20),
        "A's call to reach B's app",
        || async { http_get(out, "/").await.ok().filter(|(c, _)| *c == 200) },
    )
    .await;
    assert_eq!((code, body.as_str()), (200, FRONTEND));

    // Pod C: plaintext to the app's port, a forged identity header with it.
    let reply = raw(
        b.addr(8080),
        format!("GET / HTTP/1.1\r\nHost: b\r\nx-portcullis-peer-id: {FRONTEND}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert!(
        !reply.contains(FRONTEND) && !reply.starts_with("HTTP/1.1 200"),
        "{reply:?}"
    );
    // A port no listener serves.
    let mut other = TcpStream::connect(b.addr(9090)).await.unwrap();
    let mut buf = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(5), other.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "port 9090 was held"
    );
    // Counted once the handshake has failed, which can be just after the
    // caller saw the connection close.
    wait_for(
        Duration::from_secs(10),
        "the plaintext attempt counted",
        || async {
            let m = http_get(admin, "/metrics").await.ok()?.1;
            (metric(
                &m,
                "portcullis_tls_handshakes_total",
                &[("listener", "orders"), ("result", "not_tls")],
            )
            .unwrap_or(0.0)
                >= 1.0)
                .then_some(())
        },
    )
    .await;
    let metrics = http_get(admin, "/metrics").await.unwrap().1;
    assert_eq!(
        metric(
            &metrics,
            "portcullis_capture_refused_total",
            &[("reason", "unmapped_port")]
        ),
        Some(1.0)
    );

    // A policy change on B denying A: the next request on A's open
    // connection is refused.
    let mut conn = TcpStream::connect(out).await.unwrap();
    let get = b"GET / HTTP/1.1\r\nHost: orders\r\n\r\n";
    assert_eq!(one_response(&mut conn, get).await.0, 200);
    std::fs::write(
        &policy,
        allow.replace(FRONTEND, "spiffe://prod.example.org/ns/web/sa/other"),
    )
    .unwrap();
    let (status, reply) = post_reload(admin).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(one_response(&mut conn, get).await.0, 403);
}

/// Pod A's app calls B's pod IP and port in plaintext, as it would with
/// no mesh; `portcullis init` sends the call to A's sidecar, whose
/// outbound listener claims that destination: B's app gets it over mTLS
/// with A's SPIFFE ID. A destination no listener claims is passed through
/// as plain TCP and counted (`capture.unmatched: passthrough`). The app
/// runs as another user than the sidecar, as in a pod (the sidecar's own
/// traffic is never redirected).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captured_app_calls_out_through_its_sidecar() {
    const TEST: &str = "a_captured_app_calls_out_through_its_sidecar";
    if !can_run(TEST)
        || !have_tool("python3", TEST)
        || !have_tool("curl", TEST)
        || !have_tool("setpriv", TEST)
    {
        return;
    }
    let pki = Pki::new();
    let lan = Lan::new("o");
    let b = orders_pod(&lan, &pki, "ob", 2).await;

    let a = lan.pod("oa", 1);
    pki.svid("frontend-svid", FRONTEND);
    let admin = a.addr(15000);
    let config = pki.path("oa.yaml");
    std::fs::write(
        &config,
        format!(
            "identity:\n  cert: frontend-svid.pem\n  key: frontend-svid-key.pem\n  trust_bundle: bundle.pem\n\
             capture:\n  outbound: 127.0.0.1:15001\n  unmatched: passthrough\n  max_passthrough: 1\n\
             outbound:\n  - name: orders\n    destinations: [\"{}\"]\n    endpoints: [{}]\n    identity: {ORDERS}\n    protocol: http\n\
             admin:\n  listen: {admin}\n  allow_non_loopback: true\n",
            b.pod.addr(8080),
            b.pod.addr(8080)
        ),
    )
    .unwrap();
    // The sidecar runs as root here, so root's traffic is the sidecar's;
    // the app runs as uid 1000.
    a.ns.ok(&[BIN, "init", "--proxy-uid", "0", "--ipv6", "off"]);
    let _sidecar = a.run_sidecar(&config, admin).await;
    let app_get = |url: String| {
        a.ns.exec(&[
            "setpriv",
            "--reuid",
            "1000",
            "--regid",
            "1000",
            "--clear-groups",
            "curl",
            "-s",
            "-m",
            "5",
            &url,
        ])
    };

    let o = app_get(format!("http://{}/", b.pod.addr(8080)));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        FRONTEND,
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // Pod C, with no sidecar (the test's own leg on the pod network),
    // calling B's app in plaintext gets nowhere.
    let reply = raw(
        b.pod.addr(8080),
        b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(!reply.starts_with("HTTP/1.1 200"), "{reply:?}");

    // Unclaimed: plain TCP to the test's own address on the pod network.
    let outside = tokio::net::TcpListener::bind((lan.host(), 0))
        .await
        .unwrap();
    let outside_addr = outside.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = outside.accept().await {
            tokio::spawn(async move {
                let mut b = [0u8; 1024];
                let _ = s.read(&mut b).await;
                let _ = tokio::io::AsyncWriteExt::write_all(
                    &mut s,
                    b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\noutside",
                )
                .await;
            });
        }
    });
    let o = app_get(format!("http://{outside_addr}/"));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "outside");
    let metrics = http_get(admin, "/metrics").await.unwrap().1;
    assert_eq!(
        metric(&metrics, "portcullis_capture_passthrough_total", &[]),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &metrics,
            "portcullis_connections_opened_total",
            &[("direction", "outbound"), ("listener", "orders")]
        ),
        Some(1.0)
    );

    // max_passthrough (1 here): while one passed-through connection is
    // open, the next is refused and counted. The holder retries until its
    // connection is the one let through (the first may still be closing).
    let holds = tokio::net::TcpListener::bind((lan.host(), 0))
        .await
        .unwrap();
    let hold_addr = holds.local_addr().unwrap();
    let held = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let held = held.clone();
        tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((mut s, _)) = holds.accept().await {
                if tokio::io::AsyncWriteExt::write_all(&mut s, b"hi")
                    .await
                    .is_ok()
                {
                    held.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    open.push(s);
                }
            }
        });
    }
    let holder_script = format!(
        "import socket, time\nwhile True:\n    s = socket.create_connection(('{}', {}))\n    if s.recv(2) == b'hi':\n        time.sleep(60)\n    time.sleep(0.1)\n",
        hold_addr.ip(),
        hold_addr.port()
    );
    // The system's python: a per-user install (pyenv under /root) is not
    // readable by the app's user.
    let python = if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let _holder = a.spawn(&[
        "setpriv",
        "--reuid",
        "1000",
        "--regid",
        "1000",
        "--clear-groups",
        python,
        "-c",
        &holder_script,
    ]);
    wait_for(Duration::from_secs(20), "the held passthrough", || async {
        (held.load(std::sync::atomic::Ordering::SeqCst) >= 1).then_some(())
    })
    .await;
    let refused_before = metric(
        &http_get(admin, "/metrics").await.unwrap().1,
        "portcullis_capture_refused_total",
        &[("reason", "max_passthrough")],
    )
    .unwrap_or(0.0);
    let o = app_get(format!("http://{outside_addr}/"));
    assert!(
        o.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let refused_after = metric(
        &http_get(admin, "/metrics").await.unwrap().1,
        "portcullis_capture_refused_total",
        &[("reason", "max_passthrough")],
    )
    .unwrap_or(0.0);
    assert_eq!(refused_after, refused_before + 1.0);

    // Pod C says `unmatched: deny`: its app reaches nothing the table does
    // not name, in plaintext or otherwise.
    let c = lan.pod("oc", 3);
    let admin_c = c.addr(15000);
    let config_c = pki.path("oc.yaml");
    std::fs::write(
        &config_c,
        format!(
            "identity:\n  cert: frontend-svid.pem\n  key: frontend-svid-key.pem\n  trust_bundle: bundle.pem\n\
             capture:\n  outbound: 127.0.0.1:15001\n  unmatched: deny\n\
             admin:\n  listen: {admin_c}\n  allow_non_loopback: true\n"
        ),
    )
    .unwrap();
    c.ns.ok(&[BIN, "init", "--proxy-uid", "0", "--ipv6", "off"]);
    let _sidecar_c = c.run_sidecar(&config_c, admin_c).await;
    let o = c.ns.exec(&[
        "setpriv",
        "--reuid",
        "1000",
        "--regid",
        "1000",
        "--clear-groups",
        "curl",
        "-s",
        "-m",
        "5",
        &format!("http://{outside_addr}/"),
    ]);
    assert!(
        o.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let metrics = http_get(admin_c, "/metrics").await.unwrap().1;
    assert_eq!(
        metric(
            &metrics,
            "portcullis_capture_refused_total",
            &[("direction", "outbound"), ("reason", "unmatched")]
        ),
        Some(1.0)
    );
}
