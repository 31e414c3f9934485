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

/// Build the token table from a token list; `default_tenant` fills in missing tenants. A
/// gateway id given to two tenants is refused: gateway ids are unique across a server.
pub fn tokens(tokens: &[TokenConfig], default_tenant: &str) -> anyhow::Result<StaticTokens> {
    let mut table = StaticTokens::new();
    for t in tokens {
        let tenant = t.tenant.as_deref().unwrap_or(default_tenant);
        table.insert(t.token.clone(), Principal::new(tenant, &t.subject, t.role));
    }
    let ambiguous = table.ambiguous_gateways();
    if !ambiguous.is_empty() {
        anyhow::bail!(
            "gateway id(s) {} have tokens in more than one tenant; a gateway id belongs to one tenant",
            ambiguous.join(", ")
        );
    }
    Ok(table)
}

/// [`tokens`] as an authenticator.
pub fn authenticator(
    list: &[TokenConfig],
    default_tenant: &str,
) -> anyhow::Result<Arc<dyn Authenticator>> {
    Ok(Arc::new(tokens(list, default_tenant)?))
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

/// Read a TOML file into `T`; a missing `path` gives `T::default()`. A key the configuration
/// does not know (a typo, a setting from another version) is an error naming it, not silently
/// ignored.
pub fn load<T: for<'de> Deserialize<'de> + Default>(path: Option<&Path>) -> anyhow::Result<T> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the config file {}", path.display()))?;
    parse(&text).with_context(|| format!("in the config file {}", path.display()))
}

/// Parse TOML text into `T`, refusing unknown keys.
pub fn parse<T: for<'de> Deserialize<'de>>(text: &str) -> anyhow::Result<T> {
    let mut unknown = Vec::new();
    let value: T = serde_ignored::deserialize(toml::Deserializer::parse(text)?, |path| {
        unknown.push(path.to_string())
    })?;
    if !unknown.is_empty() {
        anyhow::bail!("unknown setting(s): {}", unknown.join(", "));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::gateway::GatewayConfig;
    use crate::server::ServerConfig;

    fn example(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("config")
            .join(name)
    }

    #[test]
    fn the_documented_server_config_loads() {
        let config: ServerConfig = load(Some(&example("server.toml"))).unwrap();
        assert_eq!(config.tenant, "acme");
        assert_eq!(config.tokens.len(), 3);
        assert_eq!(config.tokens[1].role, Role::Gateway);
        assert_eq!(config.hub.session.heartbeat_interval_ms, 15_000);
        config.hub.validate().unwrap();
        config.receiver.validate().unwrap();
        assert_eq!(config.receiver.ingest_roles, vec![Role::Gateway]);
        assert_eq!(
            ServerConfig::default().receiver.ingest_roles,
            vec![Role::Gateway]
        );
        let auth = authenticator(&config.tokens, &config.tenant).unwrap();
        let gateway = auth.authenticate("CHANGE-ME-lisbon-gateway-token").unwrap();
        assert_eq!(
            (gateway.tenant.as_str(), gateway.subject.as_str()),
            ("acme", "gw-lisbon-01")
        );
    }

    #[test]
    fn the_documented_gateway_config_loads() {
        let config: GatewayConfig = load(Some(&example("gateway.toml"))).unwrap();
        assert_eq!(config.agent_policy, "agents");
        assert_eq!(config.buffer.quota_bytes, 2 * 1024 * 1024 * 1024);
        assert_eq!(
            config.buffer.retention,
            std::time::Duration::from_secs(7 * 86_400)
        );
        config.buffer.validate().unwrap();
        assert_eq!(config.agents.registry.heartbeat_interval_ms, 10_000);
        let registry = gateway_devices::DeviceRegistry::builder()
            .with_factory(gateway_devices::hikvision::HikvisionFactory)
            .build(&config.devices)
            .unwrap();
        assert_eq!(registry.device_ids(), vec!["front-door".to_string()]);
    }

    #[test]
    fn a_partial_collector_section_keeps_the_gateway_defaults() {
        let config =
            parse::<GatewayConfig>("[collector.limits]\nmax_records_per_batch = 100\n").unwrap();
        let receiver = config.collector.receiver();
        assert_eq!(receiver.limits.max_records_per_batch, 100);
        assert_eq!(receiver.ingest_roles, vec![Role::Agent]);
        let requests = receiver.rate_limit.requests.unwrap();
        assert_eq!(requests.per_second, 2_000.0);
    }

    #[test]
    fn unknown_keys_are_named() {
        // Sections whose library refuses unknown fields itself name the field and line…
        let err = parse::<GatewayConfig>("[buffer]\nquota = 5\n").unwrap_err();
        assert!(format!("{err:#}").contains("quota"), "{err:#}");
        // …and the rest are caught here, with their path.
        let err = parse::<GatewayConfig>("[uplink.batch]\nmax_recs = 5\n").unwrap_err();
        assert!(
            format!("{err:#}").contains("uplink.batch.max_recs"),
            "{err:#}"
        );
        let err = parse::<ServerConfig>("tenantt = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("tenantt"), "{err}");
    }

    #[test]
    fn a_gateway_id_in_two_tenants_is_refused() {
        let list = [
            TokenConfig {
                token: "a".into(),
                tenant: Some("acme".into()),
                role: Role::Gateway,
                subject: "gw-1".into(),
            },
            TokenConfig {
                token: "b".into(),
                tenant: Some("globex".into()),
                role: Role::Gateway,
                subject: "gw-1".into(),
            },
        ];
        let err = tokens(&list, "default").expect_err("refused");
        assert!(err.to_string().contains("gw-1"), "{err}");
        assert!(tokens(&list[..1], "default").is_ok());
    }

    #[test]
    fn id_token_flags_parse() {
        assert_eq!(
            parse_id_token("gw-1=s3cret").unwrap(),
            ("gw-1".to_string(), "s3cret".to_string())
        );
        assert!(parse_id_token("gw-1").is_err());
        assert!(parse_id_token("=x").is_err());
    }
}
