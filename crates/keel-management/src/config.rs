//! The `management` section.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use keel_config::{Secret, Section};

/// `management.*`: the listener for `/metrics` and `/admin`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct ManagementConfig {
    /// `ip:port` to bind. Default `127.0.0.1:<http.port + 1000>`. Set it equal to the public
    /// address to serve everything on one port.
    pub addr: Option<SocketAddr>,
    /// Bearer token that `/admin/*` requires (a secret: env, `${VAR}` or `admin_token_file`).
    /// Unset: `/admin/*` answers 401 for everyone.
    pub admin_token: Option<Secret>,
}

impl Section for ManagementConfig {}
