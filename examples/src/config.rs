//! Configuration files of the `server` and `gateway` binaries (TOML), and the token table they
//! share.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use gateway_proto::auth::{Authenticator, Principal, Role, StaticTokens};
use serde::{Deserialize, Serialize};

/// One bearer token and who it stands for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenConfig {
    /// The secret.
    pub token: String,
    /// Tenant; defaults to the file's `tenant`.
    #[serde(default)]
    pub tenant: Option<String>,
    /// `admin`, `gateway` or `agent`.
    pub role: Role,
    /// Gateway id, agent id (`*` for a site-wide agent token) or operator name.
    pub subject: String,
}

/// Build the authenticator from a token list; `default_tenant` fills in missing tenants.
pub fn authenticator(tokens: &[TokenConfig], default_tenant: &str) -> Arc<dyn Authenticator> {
    let mut table = StaticTokens::new();
    for t in tokens {
        let tenant = t.tenant.as_deref().unwrap_or(default_tenant);
        table.insert(t.token.clone(), Principal::new(tenant, &t.subject, t.role));
    }
    Arc::new(table)
}

/// Parse `ID=TOKEN` (the `--gateway-token` flag).
pub fn parse_id_token(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((id, token)) if !id.is_empty() && !token.is_empty() => {
            Ok((id.to_string(), token.to_string()))
        }
        _ => Err(format!("expected ID=TOKEN, got {text:?}")),
    }
}

/// Read a TOML file into `T`; a missing `path` gives `T::default()`.
pub fn load<T: for<'de> Deserialize<'de> + Default>(path: Option<&Path>) -> anyhow::Result<T> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing the config file {}", path.display()))
}
