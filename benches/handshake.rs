//! TLS 1.3 handshakes in memory with the configs the sidecar uses (P-256
//! SVIDs, client certificates required, the SPIFFE-aware verifiers): full
//! and resumed, with the time of each side measured on its own, so the
//! server figure is what an inbound sidecar pays per new connection and
//! the client figure what an outbound one pays.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis::identity::{SpiffeId, TrustDomain};
use portcullis::pki::Ca;
use portcullis::tls::{TlsContext, TrustStore, load_bundle, load_identity};
use rustls::client::Resumption;
use rustls::{ClientConfig, ClientConnection, ConnectionCommon, ServerConfig, ServerConnection};
use rustls_pki_types::ServerName;

const DAY: Duration = Duration::from_secs(86_400);

struct Pair {
    server: Arc<ServerConfig>,
    client_full: Arc<ClientConfig>,
    client_resuming: Arc<ClientConfig>,
}

fn context(ca: &Ca, dir: &std::path::Path, name: &str, id: &SpiffeId) -> TlsContext {
    let issued = ca.issue_svid(id, DAY).expect("svid");
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    std::fs::write(&cert, &issued.cert_pem).expect("write");
    std::fs::write(&key, &issued.key_pem).expect("write");
    let bundle_path = dir.join("bundle.pem");
    std::fs::write(&bundle_path, ca.cert_pem()).expect("write");
    let td = id.trust_domain();
    let bundle = load_bundle(&bundle_path, &td).expect("bundle");
    TlsContext::new(
        load_identity(&cert, &key).expect("identity"),
        TrustStore::new([bundle]),
    )
    .expect("tls context")
}

fn pair() -> Pair {
    let td = TrustDomain::parse("prod.example.org").expect("td");
    let ca = Ca::generate(&td, DAY).expect("ca");
    let dir = tempfile::tempdir().expect("tempdir");
    let server_id = SpiffeId::parse("spiffe://prod.example.org/ns/shop/sa/orders").expect("id");
    let client_id = SpiffeId::parse("spiffe://prod.example.org/ns/web/sa/frontend").expect("id");
    let server = context(&ca, dir.path(), "server", &server_id);
    let client = context(&ca, dir.path(), "client", &client_id);
    let client_resuming = client.outbound(server_id).expect("outbound").config();
    let mut full = (*client_resuming).clone();
    full.resumption = Resumption::disabled();
    Pair {
        server: server.server_config(),
        client_full: Arc::new(full),
        client_resuming,
    }
}

/// Time spent in each side's code for one handshake, plus whether it was
/// resumed.
struct Spent {
    server: Duration,
    client: Duration,
    resumed: bool,
}

/// One handshake, timing each side's work on its own clock. Session
/// tickets are delivered too, as on a real connection.
fn handshake(server_config: &Arc<ServerConfig>, client_config: &Arc<ClientConfig>) -> Spent {
    let mut buf = Vec::with_capacity(8 * 1024);
    let t = Instant::now();
    let mut client = ClientConnection::new(
        client_config.clone(),
        ServerName::try_from("orders.shop.svc").expect("name"),
    )
    .expect("client");
    let mut client_time = t.elapsed();
    let t = Instant::now();
    let mut server = ServerConnection::new(server_config.clone()).expect("server");
    let mut server_time = t.elapsed();
    loop {
        let up = transfer(&mut *client, &mut *server, &mut buf);
        let down = transfer(&mut *server, &mut *client, &mut buf);
        client_time += up.0 + down.1;
        server_time += up.1 + down.0;
        if !up.2 && !down.2 {
            break;
        }
    }
    assert!(!client.is_handshaking() && !server.is_handshaking());
    Spent {
        server: server_time,
        client: client_time,
        resumed: matches!(
            server.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed)
        ),
    }
}

/// Moves what `from` has to send into `to`: the time each side spent,
/// and whether anything moved.
fn transfer<A, B>(
    from: &mut ConnectionCommon<A>,
    to: &mut ConnectionCommon<B>,
    buf: &mut Vec<u8>,
) -> (Duration, Duration, bool) {
    let t = Instant::now();
    buf.clear();
    while from.wants_write() {
        from.write_tls(buf).expect("write");
    }
    let from_time = t.elapsed();
    if buf.is_empty() {
        return (from_time, Duration::ZERO, false);
    }
    let t = Instant::now();
    let mut rd = &buf[..];
    while !rd.is_empty() {
        to.read_tls(&mut rd).expect("read");
        to.process_new_packets().expect("the peer is accepted");
    }
    (from_time, t.elapsed(), true)
}

fn handshakes(c: &mut Criterion) {
    let p = pair();
    // The setup must give what the names say.
    assert!(!handshake(&p.server, &p.client_full).resumed);
    handshake(&p.server, &p.client_resuming);
    assert!(handshake(&p.server, &p.client_resuming).resumed);

    let mut g = c.benchmark_group("tls13_handshake");
    for (kind, client) in [("full", &p.client_full), ("resumed", &p.client_resuming)] {
        g.bench_function(format!("{kind}/server"), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| handshake(&p.server, client).server)
                    .sum()
            })
        });
        g.bench_function(format!("{kind}/client"), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| handshake(&p.server, client).client)
                    .sum()
            })
        });
        g.bench_function(format!("{kind}/both"), |b| {
            b.iter(|| handshake(&p.server, client))
        });
    }
    g.finish();
}

criterion_group!(benches, handshakes);
criterion_main!(benches);
