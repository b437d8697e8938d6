//! The control plane: everything that decides what the data path in
//! `proxy/` admits and keeps it current. Start-up and the run loop
//! (`start`), the state it shares and readiness (`control`), our identity
//! and trust from files (`credentials`), the reload orchestrator (`reload`)
//! and the one report type every reload returns (`report`), the one
//! enforcement sweep over every live connection (`enforce`), background
//! tasks (`tasks`: readiness, OCSP re-checks, the expiry sweep, CRL
//! fetching, our staple), the file watch (`watch`), and the admin server
//! (`admin`). Nothing below this module imports it.

mod admin;
mod control;
mod credentials;
mod enforce;
mod federation;
mod reload;
mod report;
mod source;
mod start;
mod tasks;
mod watch;
mod workload_api;

pub use control::ControlPlane;
pub use credentials::load_tls;
pub use enforce::Change;
pub use report::{IdentityChange, Outcome, PolicyVersion, ReloadReport, UpstreamsChanged};
pub use start::{Sidecar, StartError, run, start};
