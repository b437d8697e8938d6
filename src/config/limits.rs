//! `timeouts` and `connections`: how long each step of a connection may
//! take, and how long a connection may live.

use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::check::{Check, ConfigError};
use super::duration::ConfigDuration;

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Timeouts {
    /// TCP connect to the local app or an upstream endpoint.
    pub connect: ConfigDuration,
    /// A TLS handshake, either direction.
    pub handshake: ConfigDuration,
    /// A connection with no bytes in either direction for this long is closed.
    pub idle: ConfigDuration,
    /// How long SIGTERM waits for open connections before exiting.
    pub drain: ConfigDuration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: ConfigDuration(Duration::from_secs(5)),
            handshake: ConfigDuration(Duration::from_secs(10)),
            idle: ConfigDuration(Duration::from_secs(3600)),
            drain: ConfigDuration(Duration::from_secs(30)),
        }
    }
}

/// Limits on how long one connection may live.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ConnectionsConfig {
    /// Close a connection when its peer's certificate expires (off by
    /// default: TLS checks validity at the handshake only).
    pub close_on_peer_expiry: bool,
    /// Close any connection after this long, whatever it is doing.
    pub max_lifetime: Option<ConfigDuration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTimeouts {
    connect: Option<Spanned<ConfigDuration>>,
    handshake: Option<Spanned<ConfigDuration>>,
    idle: Option<Spanned<ConfigDuration>>,
    drain: Option<ConfigDuration>,
}

impl RawTimeouts {
    pub(super) fn validate(self, c: &Check<'_>) -> Result<Timeouts, ConfigError> {
        let mut t = Timeouts::default();
        c.set_positive(self.connect, "timeouts.connect", &mut t.connect)?;
        c.set_positive(self.handshake, "timeouts.handshake", &mut t.handshake)?;
        c.set_positive(self.idle, "timeouts.idle", &mut t.idle)?;
        if let Some(d) = self.drain {
            t.drain = d;
        }
        Ok(t)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConnections {
    #[serde(default)]
    close_on_peer_expiry: bool,
    max_lifetime: Option<Spanned<ConfigDuration>>,
}

impl RawConnections {
    pub(super) fn validate(self, c: &Check<'_>) -> Result<ConnectionsConfig, ConfigError> {
        Ok(ConnectionsConfig {
            close_on_peer_expiry: self.close_on_peer_expiry,
            max_lifetime: c.positive(self.max_lifetime, "connections.max_lifetime")?,
        })
    }
}
