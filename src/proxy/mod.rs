//! The data path. Shared parts: the accept loop and what listeners are
//! built from (`listener`), protocol detection (`detect`), the checks after
//! every handshake (`admission`), the registry of live connections the
//! enforcement sweep walks (`registry`), the L4 byte copy (`copy`), why
//! connections end (`close`), and a listener's counters (`counters`). Each direction has its own module: `inbound`
//! (peer sidecar over mTLS → local app) and `outbound` (local app → mTLS
//! to an upstream), each with its L4 (`tcp`) and L7 (`http`) paths; the
//! L7 pieces both share are in `http`. The plaintext listeners for kubelet
//! probes (`probe`) and their server loop (`plaintext`, shared with the
//! admin server) are here too.

pub mod admission;
pub mod capture;
pub mod close;
pub mod copy;
pub mod counters;
pub mod detect;
pub mod http;
pub mod inbound;
pub mod listener;
pub mod outbound;
pub mod plaintext;
pub mod probe;
pub mod registry;

pub use close::CloseReason;
pub use counters::{Direction, ListenerMetrics};
pub use inbound::{InboundListener, InboundParts};
pub use listener::{ListenerParts, accept_loop};
pub use outbound::{OutboundListener, OutboundParts};
pub use probe::ProbeListener;
pub use registry::ConnRegistry;
