//! `portcullis inject`: Kubernetes YAML in, the same YAML out with the
//! sidecar added to every pod template, as `linkerd inject` and
//! `istioctl kube-inject` do.
//!
//! Each pod spec (a Pod, or the template of a Deployment, StatefulSet,
//! DaemonSet, ReplicaSet, Job or CronJob, in single or multi-document
//! input and in `List` items) gets:
//! - the init container (`portcullis init`, the only one with
//!   `NET_ADMIN`/`NET_RAW`, as root: netfilter needs it);
//! - the sidecar container (`portcullis run`, as the proxy UID the init
//!   rules exclude, read-only root, no capabilities, with resources and the
//!   config and SVID volumes mounted);
//! - the app containers' HTTP probes moved to the probe listener (their
//!   paths kept; the sidecar forwards them to the app), as Linkerd and
//!   Istio rewrite probes, since kubelet cannot present an SVID;
//! - the annotation `portcullis.io/inject: injected`.
//!
//! A template already annotated is left as it is, so injecting twice
//! changes nothing. Everything else, key order included, is written back
//! as it was read (YAML comments are not kept). Documents of other kinds
//! pass through untouched.

use std::io::Read;
use std::path::PathBuf;

use clap::Args;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq, Serializer};

pub const ANNOTATION: &str = "portcullis.io/inject";
/// The app probes moved to the probe listener: `path -> original port`.
pub const PROBES_ANNOTATION: &str = "portcullis.io/probes";

#[derive(Debug, Clone, Args)]
pub struct InjectArgs {
    /// The Kubernetes YAML to inject (`-` or nothing: standard input).
    pub file: Option<PathBuf>,
    /// The sidecar image (also used for the init container).
    #[arg(long, default_value = "ghcr.io/portcullis/portcullis:0.1.0")]
    pub image: String,
    /// The ConfigMap holding portcullis.yaml (and policy.yaml).
    #[arg(long, default_value = "portcullis")]
    pub config_map: String,
    /// Where the SVID comes from: `secret:<name>` (a Secret with tls.crt,
    /// tls.key and ca.crt, kept fresh by an issuer) or `workload-api` (the
    /// SPIRE agent's socket, mounted from the node).
    #[arg(long, default_value = "secret:portcullis-svid")]
    pub identity: String,
    /// The UID the sidecar runs as (excluded from capture by init).
    #[arg(long, default_value_t = 2102)]
    pub proxy_uid: u32,
    /// Inbound ports left out of capture (besides the probe and admin ports).
    #[arg(long, value_delimiter = ',')]
    pub skip_inbound_ports: Vec<u16>,
    /// Outbound ports left out of capture.
    #[arg(long, value_delimiter = ',')]
    pub skip_outbound_ports: Vec<u16>,
    /// The sidecar's probe listener port, where app probes are moved.
    #[arg(long, default_value_t = 15021)]
    pub probe_port: u16,
}

/// A YAML value that keeps the order of mapping keys as read.
#[derive(Debug, Clone, PartialEq)]
pub enum Yaml {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Yaml>),
    Map(Vec<(String, Yaml)>),
}

impl Yaml {
    fn get(&self, key: &str) -> Option<&Yaml> {
        match self {
            Yaml::Map(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn get_mut(&mut self, key: &str) -> Option<&mut Yaml> {
        match self {
            Yaml::Map(m) => m.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The value under `key` of a map (a null becomes an empty map),
    /// inserted as `default` when missing; `None` when this is not a map.
    fn entry(&mut self, key: &str, default: Yaml) -> Option<&mut Yaml> {
        if let Yaml::Null = self {
            *self = Yaml::Map(Vec::new());
        }
        let Yaml::Map(m) = self else {
            return None;
        };
        let i = match m.iter().position(|(k, _)| k == key) {
            Some(i) => i,
            None => {
                m.push((key.to_string(), default));
                m.len() - 1
            }
        };
        Some(&mut m[i].1)
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Yaml::Str(s) => Some(s),
            _ => None,
        }
    }
}

impl<'de> serde::Deserialize<'de> for Yaml {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Yaml;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_unit<E>(self) -> Result<Yaml, E> {
                Ok(Yaml::Null)
            }
            fn visit_none<E>(self) -> Result<Yaml, E> {
                Ok(Yaml::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Yaml, D::Error> {
                serde::Deserialize::deserialize(d)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Yaml, E> {
                Ok(Yaml::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Yaml, E> {
                Ok(Yaml::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Yaml, E> {
                i64::try_from(v)
                    .map(Yaml::Int)
                    .map_err(|_| E::custom("integer too large"))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Yaml, E> {
                Ok(Yaml::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Yaml, E> {
                Ok(Yaml::Str(v.to_string()))
            }
            fn visit_string<E>(self, v: String) -> Result<Yaml, E> {
                Ok(Yaml::Str(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Yaml, A::Error> {
                let mut v = Vec::new();
                while let Some(x) = a.next_element()? {
                    v.push(x);
                }
                Ok(Yaml::Seq(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Yaml, A::Error> {
                let mut m: Vec<(String, Yaml)> = Vec::new();
                while let Some((k, v)) = a.next_entry::<Yaml, Yaml>()? {
                    let k = match k {
                        Yaml::Str(s) => s,
                        Yaml::Int(i) => i.to_string(),
                        Yaml::Bool(b) => b.to_string(),
                        other => {
                            return Err(de::Error::custom(format!("unsupported key {other:?}")));
                        }
                    };
                    m.push((k, v));
                }
                Ok(Yaml::Map(m))
            }
        }
        d.deserialize_any(V)
    }
}

impl serde::Serialize for Yaml {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Yaml::Null => s.serialize_unit(),
            Yaml::Bool(b) => s.serialize_bool(*b),
            Yaml::Int(i) => s.serialize_i64(*i),
            Yaml::Float(f) => s.serialize_f64(*f),
            Yaml::Str(v) => s.serialize_str(v),
            Yaml::Seq(v) => {
                let mut q = s.serialize_seq(Some(v.len()))?;
                for x in v {
                    q.serialize_element(x)?;
                }
                q.end()
            }
            Yaml::Map(m) => {
                let mut q = s.serialize_map(Some(m.len()))?;
                for (k, v) in m {
                    q.serialize_entry(k, v)?;
                }
                q.end()
            }
        }
    }
}

fn s(v: &str) -> Yaml {
    Yaml::Str(v.to_string())
}

fn map(entries: Vec<(&str, Yaml)>) -> Yaml {
    Yaml::Map(
        entries
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

/// Reads, injects and writes back; the error names the input.
pub fn run(a: &InjectArgs) -> Result<String, String> {
    let (name, text) = match &a.file {
        Some(p) if p.as_os_str() != "-" => (
            p.display().to_string(),
            std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?,
        ),
        _ => {
            let mut t = String::new();
            std::io::stdin()
                .read_to_string(&mut t)
                .map_err(|e| format!("standard input: {e}"))?;
            ("standard input".to_string(), t)
        }
    };
    inject_text(&text, a).map_err(|e| format!("{name}: {e}"))
}

/// Injects every document of `text`.
pub fn inject_text(text: &str, a: &InjectArgs) -> Result<String, String> {
    // Kubernetes reads YAML 1.1: `defaultMode: 0400` is octal there.
    let mut options = serde_saphyr::Options::default();
    options.legacy_octal_numbers = true;
    let docs: Vec<Yaml> =
        serde_saphyr::from_multiple_with_options(text, options).map_err(|e| e.to_string())?;
    let mut out = String::new();
    for (i, mut doc) in docs.into_iter().enumerate() {
        if matches!(doc, Yaml::Null) {
            continue;
        }
        inject_object(&mut doc, a);
        if i > 0 || !out.is_empty() {
            out.push_str("---\n");
        }
        out.push_str(&serde_saphyr::to_string(&doc).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

/// Injects one object (recursing into `List` items).
fn inject_object(obj: &mut Yaml, a: &InjectArgs) {
    let kind = obj
        .get("kind")
        .and_then(Yaml::as_str)
        .unwrap_or("")
        .to_string();
    match kind.as_str() {
        "List" => {
            if let Some(Yaml::Seq(items)) = obj.get_mut("items") {
                for item in items {
                    inject_object(item, a);
                }
            }
        }
        "Pod" => inject_pod(obj, a),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            if let Some(t) = obj.get_mut("spec").and_then(|s| s.get_mut("template")) {
                inject_pod(t, a);
            }
        }
        "CronJob" => {
            if let Some(t) = obj
                .get_mut("spec")
                .and_then(|s| s.get_mut("jobTemplate"))
                .and_then(|j| j.get_mut("spec"))
                .and_then(|s| s.get_mut("template"))
            {
                inject_pod(t, a);
            }
        }
        _ => {}
    }
}

/// Injects a Pod or a pod template (both have `metadata` and `spec`).
fn inject_pod(pod: &mut Yaml, a: &InjectArgs) {
    if !matches!(pod, Yaml::Map(_)) {
        return;
    }
    let injected = pod
        .get("metadata")
        .and_then(|m| m.get("annotations"))
        .and_then(|an| an.get(ANNOTATION))
        .is_some();
    // A pod that already runs a container called portcullis was set up
    // by hand: adding a second would break it.
    let has_sidecar = matches!(
        pod.get("spec").and_then(|s| s.get("containers")),
        Some(Yaml::Seq(cs)) if cs.iter().any(|c| c.get("name").and_then(Yaml::as_str) == Some("portcullis"))
    );
    if injected || has_sidecar || !matches!(pod.get("spec"), Some(Yaml::Map(_))) {
        return;
    }
    let Some(spec) = pod.get_mut("spec") else {
        return;
    };
    // The app's HTTP probes go to the probe listener; what it must forward
    // (path, and the app port the probe used) is recorded for the config.
    let mut probes: Vec<String> = Vec::new();
    if let Some(Yaml::Seq(containers)) = spec.get_mut("containers") {
        for c in containers.iter_mut() {
            for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
                let Some(get) = c.get_mut(probe).and_then(|p| p.get_mut("httpGet")) else {
                    continue;
                };
                let path = get
                    .get("path")
                    .and_then(Yaml::as_str)
                    .unwrap_or("/")
                    .to_string();
                let port = match get.get("port") {
                    Some(Yaml::Int(p)) => p.to_string(),
                    Some(Yaml::Str(p)) => p.clone(),
                    _ => "?".into(),
                };
                let seen = format!("{path} -> {port}");
                if !probes.contains(&seen) {
                    probes.push(seen);
                }
                if let Some(p) = get.entry("port", Yaml::Null) {
                    *p = Yaml::Int(i64::from(a.probe_port));
                }
            }
        }
        containers.push(sidecar(a));
    }
    if let Some(Yaml::Seq(v)) = spec.entry("initContainers", Yaml::Seq(Vec::new())) {
        v.insert(0, init_container(a));
    }
    if let Some(Yaml::Seq(v)) = spec.entry("volumes", Yaml::Seq(Vec::new())) {
        v.extend(sidecar_volumes(a));
    }
    if let Some(annotations) = pod
        .entry("metadata", Yaml::Map(Vec::new()))
        .and_then(|m| m.entry("annotations", Yaml::Map(Vec::new())))
    {
        if let Some(v) = annotations.entry(ANNOTATION, Yaml::Null) {
            *v = s("injected");
        }
        // The probe listener's config must forward these (`probes.paths`
        // and `probes.forward` in portcullis.yaml).
        if !probes.is_empty()
            && let Some(v) = annotations.entry(PROBES_ANNOTATION, Yaml::Null)
        {
            *v = s(&probes.join(", "));
        }
    }
}

fn init_container(a: &InjectArgs) -> Yaml {
    let mut args = vec![s("init"), s("--proxy-uid"), s(&a.proxy_uid.to_string())];
    let mut skip_in = vec![a.probe_port, 15000];
    skip_in.extend(&a.skip_inbound_ports);
    args.push(s("--skip-inbound-ports"));
    args.push(s(&join(&skip_in)));
    if !a.skip_outbound_ports.is_empty() {
        args.push(s("--skip-outbound-ports"));
        args.push(s(&join(&a.skip_outbound_ports)));
    }
    map(vec![
        ("name", s("portcullis-init")),
        ("image", s(&a.image)),
        ("args", Yaml::Seq(args)),
        (
            "securityContext",
            map(vec![
                ("runAsUser", Yaml::Int(0)),
                ("runAsNonRoot", Yaml::Bool(false)),
                ("allowPrivilegeEscalation", Yaml::Bool(false)),
                ("readOnlyRootFilesystem", Yaml::Bool(true)),
                (
                    "capabilities",
                    map(vec![
                        ("drop", Yaml::Seq(vec![s("ALL")])),
                        ("add", Yaml::Seq(vec![s("NET_ADMIN"), s("NET_RAW")])),
                    ]),
                ),
            ]),
        ),
    ])
}

fn sidecar(a: &InjectArgs) -> Yaml {
    let mut env = Vec::new();
    if a.identity == "workload-api" {
        env.push(map(vec![
            ("name", s("SPIFFE_ENDPOINT_SOCKET")),
            ("value", s("unix:///run/spire/sockets/agent.sock")),
        ]));
    }
    let mut mounts = vec![map(vec![
        ("name", s("portcullis-config")),
        ("mountPath", s("/etc/portcullis")),
        ("readOnly", Yaml::Bool(true)),
    ])];
    mounts.push(if a.identity == "workload-api" {
        map(vec![
            ("name", s("spire-agent-socket")),
            ("mountPath", s("/run/spire/sockets")),
            ("readOnly", Yaml::Bool(true)),
        ])
    } else {
        map(vec![
            ("name", s("portcullis-svid")),
            ("mountPath", s("/var/run/portcullis/svid")),
            ("readOnly", Yaml::Bool(true)),
        ])
    });
    let mut container = map(vec![
        ("name", s("portcullis")),
        ("image", s(&a.image)),
        (
            "args",
            Yaml::Seq(vec![
                s("run"),
                s("--config"),
                s("/etc/portcullis/portcullis.yaml"),
            ]),
        ),
        (
            "ports",
            Yaml::Seq(vec![
                map(vec![
                    ("name", s("pc-inbound")),
                    ("containerPort", Yaml::Int(15006)),
                ]),
                map(vec![
                    ("name", s("pc-probe")),
                    ("containerPort", Yaml::Int(i64::from(a.probe_port))),
                ]),
            ]),
        ),
        (
            "resources",
            map(vec![
                (
                    "requests",
                    map(vec![("cpu", s("100m")), ("memory", s("32Mi"))]),
                ),
                (
                    "limits",
                    map(vec![("cpu", s("500m")), ("memory", s("64Mi"))]),
                ),
            ]),
        ),
        (
            "securityContext",
            map(vec![
                ("runAsUser", Yaml::Int(i64::from(a.proxy_uid))),
                ("runAsNonRoot", Yaml::Bool(true)),
                ("allowPrivilegeEscalation", Yaml::Bool(false)),
                ("readOnlyRootFilesystem", Yaml::Bool(true)),
                (
                    "capabilities",
                    map(vec![("drop", Yaml::Seq(vec![s("ALL")]))]),
                ),
            ]),
        ),
        ("volumeMounts", Yaml::Seq(mounts)),
    ]);
    if !env.is_empty()
        && let Some(e) = container.entry("env", Yaml::Null)
    {
        *e = Yaml::Seq(env);
    }
    container
}

fn sidecar_volumes(a: &InjectArgs) -> Vec<Yaml> {
    let mut v = vec![map(vec![
        ("name", s("portcullis-config")),
        ("configMap", map(vec![("name", s(&a.config_map))])),
    ])];
    if a.identity == "workload-api" {
        v.push(map(vec![
            ("name", s("spire-agent-socket")),
            (
                "hostPath",
                map(vec![
                    ("path", s("/run/spire/sockets")),
                    ("type", s("Directory")),
                ]),
            ),
        ]));
    } else {
        let secret = a.identity.strip_prefix("secret:").unwrap_or(&a.identity);
        v.push(map(vec![
            ("name", s("portcullis-svid")),
            (
                "secret",
                map(vec![
                    ("secretName", s(secret)),
                    ("defaultMode", Yaml::Int(0o400)),
                ]),
            ),
        ]));
    }
    v
}

fn join(ports: &[u16]) -> String {
    ports
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",")
}
