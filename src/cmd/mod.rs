//! The command line: its arguments (`args`) and the commands other than
//! `run` (which is the control plane's, `sidecar::run`): `check`, `cert`
//! (the development PKI), `demo`, `init` (the pod's netfilter rules) and `inject` (the sidecar
//! added to Kubernetes YAML).

pub mod args;
pub mod cert;
pub mod check;
pub mod demo;
pub mod init;
pub mod inject;
