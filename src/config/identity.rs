//! `identity`: where our SVID, its key and the trust bundles come from
//! (files, or the SPIFFE Workload API: exactly one of the two), and the
//! bundles of federated trust domains (files, or a SPIFFE bundle endpoint).

use std::ops::Bound;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

use super::check::{Check, ConfigError};
use super::duration::ConfigDuration;
use super::yaml::Pairs;
use crate::identity::{SpiffeId, TrustDomain};

/// The environment variable SPIFFE workloads find the Workload API by.
pub const SPIFFE_ENDPOINT_SOCKET: &str = "SPIFFE_ENDPOINT_SOCKET";

#[derive(Debug, Clone, serde::Serialize)]
pub struct IdentityConfig {
    /// Files, or the Workload API.
    #[serde(flatten)]
    pub source: IdentitySource,
    /// The trust domain the bundle is for; defaults to our own SVID's.
    pub trust_domain: Option<TrustDomain>,
    /// Federation: the bundles of other trust domains. A peer is verified
    /// only against the bundle of its own trust domain.
    pub trust_bundles: Vec<(TrustDomain, FederatedBundle)>,
    /// Warn when our leaf has less than this share of its lifetime left.
    pub expiry_warning_fraction: f64,
    /// How long a new certificate may wait for its matching key (issuers
    /// write the two files at different moments) before it is an error.
    pub key_pair_grace: ConfigDuration,
}

/// Where our SVID, key and own trust bundle come from.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(untagged)]
pub enum IdentitySource {
    Files(IdentityFiles),
    WorkloadApi { workload_api: WorkloadApiConfig },
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct IdentityFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub trust_bundle: PathBuf,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct WorkloadApiConfig {
    /// `unix:///path` or `tcp://ip:port`, from the config or
    /// `SPIFFE_ENDPOINT_SOCKET`.
    pub socket: String,
    /// Which SVID to use when several are served; the first otherwise.
    pub hint: Option<String>,
    /// The first wait between reconnects; doubles up to `backoff_max`.
    pub backoff: ConfigDuration,
    pub backoff_max: ConfigDuration,
}

/// The bundle of a federated trust domain.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(untagged)]
pub enum FederatedBundle {
    /// A PEM or SPIFFE bundle file, reloaded like the others.
    File(PathBuf),
    /// Fetched from the domain's bundle endpoint.
    Endpoint(BundleEndpoint),
}

/// How a bundle endpoint proves who it is (SPIFFE Federation, 5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointProfile {
    /// A Web PKI server certificate for the URL's host.
    HttpsWeb,
    /// An X.509-SVID with `endpoint_spiffe_id`, verified against the bundle
    /// we hold for that ID's trust domain.
    HttpsSpiffe,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BundleEndpoint {
    pub url: String,
    pub profile: EndpointProfile,
    /// `https_spiffe`: the SPIFFE ID the endpoint's SVID must carry.
    pub endpoint_spiffe_id: Option<SpiffeId>,
    /// The bundle to trust until the first fetch (required for
    /// `https_spiffe`, whose endpoint is authenticated by it).
    pub bundle: Option<PathBuf>,
    /// `https_web`: the CA certificates the server is verified against
    /// instead of the system's.
    pub ca: Option<PathBuf>,
    /// How often to fetch when the bundle carries no `spiffe_refresh_hint`.
    pub refresh: ConfigDuration,
}

impl IdentityConfig {
    /// The identity files, when identity comes from files.
    pub fn files_source(&self) -> Option<&IdentityFiles> {
        match &self.source {
            IdentitySource::Files(f) => Some(f),
            IdentitySource::WorkloadApi { .. } => None,
        }
    }

    /// The Workload API settings, when identity comes from there.
    pub fn workload_api(&self) -> Option<&WorkloadApiConfig> {
        match &self.source {
            IdentitySource::WorkloadApi { workload_api } => Some(workload_api),
            IdentitySource::Files(_) => None,
        }
    }

    /// Every file the identity and trust are made of, for watching.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        if let Some(f) = self.files_source() {
            files.extend([f.cert.clone(), f.key.clone(), f.trust_bundle.clone()]);
        }
        for (_, b) in &self.trust_bundles {
            match b {
                FederatedBundle::File(p) => files.push(p.clone()),
                FederatedBundle::Endpoint(e) => files.extend(e.bundle.iter().cloned()),
            }
        }
        files
    }

    /// The bundle endpoints to fetch from.
    pub fn endpoints(&self) -> impl Iterator<Item = (&TrustDomain, &BundleEndpoint)> {
        self.trust_bundles.iter().filter_map(|(td, b)| match b {
            FederatedBundle::Endpoint(e) => Some((td, e)),
            FederatedBundle::File(_) => None,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIdentity {
    cert: Option<Spanned<PathBuf>>,
    key: Option<Spanned<PathBuf>>,
    trust_bundle: Option<Spanned<PathBuf>>,
    workload_api: Option<Spanned<RawWorkloadApi>>,
    trust_domain: Option<TrustDomain>,
    #[serde(default)]
    trust_bundles: Pairs<TrustDomain, Spanned<RawFederated>>,
    expiry_warning_fraction: Option<Spanned<f64>>,
    key_pair_grace: Option<ConfigDuration>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawWorkloadApi {
    socket: Option<Spanned<String>>,
    hint: Option<String>,
    backoff: Option<Spanned<ConfigDuration>>,
    backoff_max: Option<Spanned<ConfigDuration>>,
}

/// A federated bundle as written: a path, or an endpoint mapping.
enum RawFederated {
    File(PathBuf),
    Endpoint(RawEndpoint),
}

impl<'de> Deserialize<'de> for RawFederated {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawFederated;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a bundle file path, or a mapping with `endpoint` and `profile`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawFederated::File(PathBuf::from(v)))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                RawEndpoint::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawFederated::Endpoint)
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    endpoint: String,
    profile: EndpointProfile,
    endpoint_spiffe_id: Option<SpiffeId>,
    bundle: Option<PathBuf>,
    ca: Option<PathBuf>,
    refresh: Option<ConfigDuration>,
}

fn spanned_at<T>(value: T, at: Location) -> Spanned<T> {
    Spanned {
        value,
        referenced: at,
        defined: at,
    }
}

impl RawIdentity {
    pub(super) fn validate(self, c: &Check<'_>) -> Result<IdentityConfig, ConfigError> {
        self.validate_with_env(c, std::env::var(SPIFFE_ENDPOINT_SOCKET).ok())
    }

    /// As [`RawIdentity::validate`], with `SPIFFE_ENDPOINT_SOCKET` given.
    fn validate_with_env(
        self,
        c: &Check<'_>,
        env_socket: Option<String>,
    ) -> Result<IdentityConfig, ConfigError> {
        let named_files = [&self.cert, &self.key, &self.trust_bundle]
            .iter()
            .filter_map(|f| f.as_ref().map(|f| f.referenced))
            .collect::<Vec<_>>();
        let source = match (self.workload_api, named_files.first()) {
            (Some(w), Some(_)) => {
                return Err(c.at(
                    w.referenced,
                    "identity names both files (cert, key, trust_bundle) and workload_api: choose one source",
                ));
            }
            (None, None) => {
                return Err(ConfigError::file(
                    c.file,
                    "identity names no source: give cert, key and trust_bundle, or workload_api",
                ));
            }
            (Some(w), None) => IdentitySource::WorkloadApi {
                workload_api: validate_workload_api(c, w, env_socket)?,
            },
            (None, Some(_)) => {
                let need = |f: Option<Spanned<PathBuf>>, name: &str| match f {
                    Some(f) => c.path(&f),
                    None => Err(ConfigError::file(
                        c.file,
                        format!(
                            "identity.{name} is missing: files need cert, key and trust_bundle"
                        ),
                    )),
                };
                IdentitySource::Files(IdentityFiles {
                    cert: need(self.cert, "cert")?,
                    key: need(self.key, "key")?,
                    trust_bundle: need(self.trust_bundle, "trust_bundle")?,
                })
            }
        };
        let mut identity = IdentityConfig {
            source,
            trust_domain: self.trust_domain,
            trust_bundles: Vec::with_capacity(self.trust_bundles.0.len()),
            expiry_warning_fraction: 1.0 / 3.0,
            key_pair_grace: self
                .key_pair_grace
                .unwrap_or(ConfigDuration(Duration::from_secs(10))),
        };
        for (td, entry) in self.trust_bundles.0 {
            let at = entry.referenced;
            if identity.trust_bundles.iter().any(|(t, _)| *t == td)
                || identity.trust_domain.as_ref() == Some(&td)
            {
                return Err(c.at(at, format!("trust domain {td} has more than one bundle")));
            }
            let bundle = match entry.value {
                RawFederated::File(p) => FederatedBundle::File(c.path(&spanned_at(p, at))?),
                RawFederated::Endpoint(e) => {
                    FederatedBundle::Endpoint(validate_endpoint(c, &td, e, at)?)
                }
            };
            identity.trust_bundles.push((td, bundle));
        }
        c.set(
            self.expiry_warning_fraction,
            "identity.expiry_warning_fraction",
            (Bound::Excluded(0.0), Bound::Excluded(1.0)),
            &mut identity.expiry_warning_fraction,
        )
        .map_err(|e| e.note("e.g. 0.33"))?;
        Ok(identity)
    }
}

fn validate_workload_api(
    c: &Check<'_>,
    w: Spanned<RawWorkloadApi>,
    env_socket: Option<String>,
) -> Result<WorkloadApiConfig, ConfigError> {
    let at = w.referenced;
    let w = w.value;
    let (socket, socket_at) = match w.socket {
        Some(s) => (s.value, s.referenced),
        None => match env_socket.filter(|s| !s.is_empty()) {
            Some(s) => (s, at),
            None => {
                return Err(c.at(
                    at,
                    format!("identity.workload_api.socket is not set and neither is {SPIFFE_ENDPOINT_SOCKET}"),
                ));
            }
        },
    };
    let valid = match socket.split_once("://") {
        Some(("unix", path)) => path.starts_with('/'),
        Some(("tcp", addr)) => addr.parse::<std::net::SocketAddr>().is_ok(),
        _ => false,
    };
    if !valid {
        return Err(c.at(
            socket_at,
            format!(
                "identity.workload_api.socket {socket:?} is not unix:///absolute/path or tcp://ip:port"
            ),
        ));
    }
    let mut backoff = ConfigDuration(Duration::from_millis(200));
    let mut backoff_max = ConfigDuration(Duration::from_secs(10));
    c.set_positive(w.backoff, "identity.workload_api.backoff", &mut backoff)?;
    c.set_positive(
        w.backoff_max,
        "identity.workload_api.backoff_max",
        &mut backoff_max,
    )?;
    if backoff_max.0 < backoff.0 {
        return Err(c.at(
            at,
            "identity.workload_api.backoff_max must be at least backoff",
        ));
    }
    Ok(WorkloadApiConfig {
        socket,
        hint: w.hint.filter(|h| !h.is_empty()),
        backoff,
        backoff_max,
    })
}

fn validate_endpoint(
    c: &Check<'_>,
    td: &TrustDomain,
    e: RawEndpoint,
    at: Location,
) -> Result<BundleEndpoint, ConfigError> {
    let here = |reason: String| c.at(at, format!("trust_bundles.{td}: {reason}"));
    let Some(rest) = e.endpoint.strip_prefix("https://") else {
        return Err(here(format!(
            "endpoint {:?} must be an https:// URL",
            e.endpoint
        )));
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') {
        return Err(here(format!(
            "endpoint {:?} has no usable host",
            e.endpoint
        )));
    }
    match e.profile {
        EndpointProfile::HttpsSpiffe => {
            if e.endpoint_spiffe_id.is_none() {
                return Err(here("profile https_spiffe needs endpoint_spiffe_id".into()));
            }
            if e.bundle.is_none() {
                return Err(here(
                    "profile https_spiffe needs bundle: the bundle that authenticates the endpoint until the first fetch"
                        .into(),
                ));
            }
            if e.ca.is_some() {
                return Err(here("ca is for profile https_web only".into()));
            }
        }
        EndpointProfile::HttpsWeb => {
            if e.endpoint_spiffe_id.is_some() {
                return Err(here(
                    "endpoint_spiffe_id is for profile https_spiffe only".into(),
                ));
            }
        }
    }
    let refresh = match e.refresh {
        Some(r) if r.0.is_zero() => return Err(here("refresh must be more than 0".into())),
        Some(r) => r,
        None => ConfigDuration(Duration::from_secs(300)),
    };
    let path = |p: Option<PathBuf>| p.map(|p| c.path(&spanned_at(p, at))).transpose();
    Ok(BundleEndpoint {
        url: e.endpoint,
        profile: e.profile,
        endpoint_spiffe_id: e.endpoint_spiffe_id,
        bundle: path(e.bundle)?,
        ca: path(e.ca)?,
        refresh,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(yaml: &str, env: Option<&str>) -> Result<IdentityConfig, ConfigError> {
        let raw: RawIdentity = serde_saphyr::from_str(yaml).expect("yaml");
        let c = Check::new(Path::new("/etc/p/portcullis.yaml"));
        raw.validate_with_env(&c, env.map(String::from))
    }

    #[test]
    fn exactly_one_source_is_named() {
        let e = parse(
            "cert: c.pem\nkey: k.pem\ntrust_bundle: b.pem\nworkload_api: {}\n",
            None,
        )
        .unwrap_err();
        assert!(e.reason.contains("both files"), "{e}");
        assert_eq!(e.line, Some(4), "{e}");
        let e = parse("trust_domain: a.org\n", None).unwrap_err();
        assert!(e.reason.contains("names no source"), "{e}");
        let e = parse("cert: c.pem\nkey: k.pem\n", None).unwrap_err();
        assert!(e.reason.contains("trust_bundle is missing"), "{e}");

        let files = parse("cert: c.pem\nkey: k.pem\ntrust_bundle: b.pem\n", None).unwrap();
        assert_eq!(
            files.files_source().map(|f| f.cert.clone()),
            Some(PathBuf::from("/etc/p/c.pem"))
        );
        assert!(files.workload_api().is_none());
    }

    #[test]
    fn the_socket_comes_from_the_config_or_the_environment() {
        let w = parse(
            "workload_api: {socket: \"unix:///run/spire/agent.sock\", hint: internal}\n",
            None,
        )
        .unwrap();
        let w = w.workload_api().unwrap();
        assert_eq!(w.socket, "unix:///run/spire/agent.sock");
        assert_eq!(w.hint.as_deref(), Some("internal"));
        let env = parse("workload_api: {}\n", Some("unix:///tmp/agent.sock")).unwrap();
        assert_eq!(env.workload_api().unwrap().socket, "unix:///tmp/agent.sock");
        let e = parse("workload_api: {}\n", None).unwrap_err();
        assert!(e.reason.contains("SPIFFE_ENDPOINT_SOCKET"), "{e}");
        let e = parse("workload_api: {socket: /run/agent.sock}\n", None).unwrap_err();
        assert!(e.reason.contains("unix:///absolute/path"), "{e}");
        assert!(parse("workload_api: {socket: \"tcp://127.0.0.1:8081\"}\n", None).is_ok());
    }

    #[test]
    fn bundle_endpoints_are_checked_per_profile() {
        let ok = parse(
            "workload_api: {socket: \"unix:///a\"}\ntrust_bundles:\n  partner.org: {endpoint: \"https://partner.example/bundle\", profile: https_spiffe, endpoint_spiffe_id: \"spiffe://partner.org/spire/server\", bundle: partner.json}\n  other.org: other.pem\n  web.org: {endpoint: \"https://web.example:8443/b\", profile: https_web, refresh: 1m}\n",
            None,
        )
        .unwrap();
        let endpoints: Vec<_> = ok
            .endpoints()
            .map(|(td, e)| (td.to_string(), e.profile))
            .collect();
        assert_eq!(
            endpoints,
            [
                ("partner.org".to_string(), EndpointProfile::HttpsSpiffe),
                ("web.org".to_string(), EndpointProfile::HttpsWeb)
            ]
        );
        assert_eq!(
            ok.files(),
            [
                PathBuf::from("/etc/p/partner.json"),
                PathBuf::from("/etc/p/other.pem")
            ]
        );
        for (entry, why) in [
            (
                "{endpoint: \"http://x/b\", profile: https_web}",
                "https:// URL",
            ),
            (
                "{endpoint: \"https://x/b\", profile: https_spiffe, bundle: b.json}",
                "needs endpoint_spiffe_id",
            ),
            (
                "{endpoint: \"https://x/b\", profile: https_spiffe, endpoint_spiffe_id: \"spiffe://p.org/s\"}",
                "needs bundle",
            ),
            (
                "{endpoint: \"https://x/b\", profile: https_web, endpoint_spiffe_id: \"spiffe://p.org/s\"}",
                "https_spiffe only",
            ),
            (
                "{endpoint: \"https://x/b\", profile: https_web, refresh: 0s}",
                "more than 0",
            ),
        ] {
            let e = parse(
                &format!(
                    "workload_api: {{socket: \"unix:///a\"}}\ntrust_bundles:\n  p.org: {entry}\n"
                ),
                None,
            )
            .unwrap_err();
            assert!(e.reason.contains(why), "{entry}: {e}");
            assert_eq!(e.line, Some(3), "{e}");
        }
        let e = serde_saphyr::from_str::<RawIdentity>(
            "workload_api: {socket: \"unix:///a\"}\ntrust_bundles:\n  p.org: {endpoint: \"https://x/b\", profile: ftp}\n",
        )
        .err()
        .expect("an unknown profile is refused");
        assert!(e.to_string().contains("unknown variant `ftp`"), "{e}");
    }
}
