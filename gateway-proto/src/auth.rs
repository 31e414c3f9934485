//! Who is calling: the principal behind a bearer token, shared by every receiver
//! (`POST /v1/records`, the control channel, the operator API) so they all agree.
//!
//! Identity always comes from the credentials, never from what a message claims: a gateway's
//! `hello.gateway_id` or a batch's `gateway_id` is checked against [`Principal::subject`].

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// What a principal may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// An operator: may call every operator endpoint of its tenant.
    Admin,
    /// One gateway: may upload records, hold a control session and report as itself only.
    Gateway,
    /// One agent: may register, heartbeat and upload records to its gateway.
    Agent,
}

impl Role {
    /// The snake_case name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Gateway => "gateway",
            Role::Agent => "agent",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Principal {
    /// Tenant the caller belongs to. Record dedup and every read are scoped by tenant.
    pub tenant: String,
    /// The caller's id: a gateway id, an agent id, or an operator name.
    pub subject: String,
    /// What the caller may do.
    pub role: Role,
}

impl Principal {
    /// A principal.
    pub fn new(tenant: impl Into<String>, subject: impl Into<String>, role: Role) -> Self {
        Principal {
            tenant: tenant.into(),
            subject: subject.into(),
            role,
        }
    }

    /// Whether this principal may speak for agent `agent_id` (register, heartbeat, post its
    /// records): its role is [`Role::Agent`] and its subject is `agent_id` or [`ANY_AGENT`].
    /// Gateway, operator and admin tokens may not act as agents.
    ///
    /// ```
    /// use gateway_proto::auth::{ANY_AGENT, Principal, Role};
    ///
    /// assert!(Principal::new("acme", "a1", Role::Agent).may_act_as_agent("a1"));
    /// assert!(!Principal::new("acme", "a1", Role::Agent).may_act_as_agent("a2"));
    /// assert!(Principal::new("acme", ANY_AGENT, Role::Agent).may_act_as_agent("a2"));
    /// assert!(!Principal::new("acme", "a1", Role::Gateway).may_act_as_agent("a1"));
    /// ```
    pub fn may_act_as_agent(&self, agent_id: &str) -> bool {
        self.role == Role::Agent && (self.subject == agent_id || self.subject == ANY_AGENT)
    }
}

/// The subject of an agent token that may act as any agent of its tenant (a site-wide agent
/// token, e.g. one baked into an installer). A token with any other subject speaks only for
/// the agent of that id.
pub const ANY_AGENT: &str = "*";

/// Turns a bearer token into a [`Principal`].
///
/// Receivers answer 401 (`unauthorized`) when no token is sent and 403 (`forbidden`) when this
/// returns `None`. Implementations must be cheap: they run on every request. Integrators with
/// a token database cache it behind this trait.
pub trait Authenticator: Send + Sync + 'static {
    /// The principal a token stands for, or `None` when the token is not valid.
    fn authenticate(&self, token: &str) -> Option<Principal>;
}

/// Which tenant each gateway id belongs to — the server's list of provisioned gateways.
///
/// Gateway ids are unique across the whole server: two tenants cannot both have a gateway
/// `gw-1`. Every operator action that names a gateway (issuing a command, assigning a policy,
/// setting groups) checks the gateway's tenant here first, so an operator can never reach
/// another tenant's gateway, and a gateway id nobody provisioned is refused.
pub trait GatewayDirectory: Send + Sync + 'static {
    /// The tenant of gateway `gateway_id`; `None` when no such gateway is provisioned (or the
    /// id is ambiguous).
    fn tenant_of(&self, gateway_id: &str) -> Option<String>;
}

/// A fixed table of tokens, for configuration files and tests.
///
/// ```
/// use gateway_proto::auth::{Authenticator, Principal, Role, StaticTokens};
/// let tokens = StaticTokens::new()
///     .with("s3cret", Principal::new("acme", "gw-1", Role::Gateway));
/// assert_eq!(tokens.authenticate("s3cret").unwrap().subject, "gw-1");
/// assert!(tokens.authenticate("guess").is_none());
/// ```
///
/// It is also a [`GatewayDirectory`]: every `gateway` principal in the table is a provisioned
/// gateway of its tenant. A gateway id given to two tenants is ambiguous and belongs to none
/// ([`StaticTokens::ambiguous_gateways`] lists them, so a configuration loader can refuse them).
#[derive(Debug, Clone, Default)]
pub struct StaticTokens {
    tokens: HashMap<String, Principal>,
    gateways: HashMap<String, Vec<String>>,
}

impl StaticTokens {
    /// An empty table: every token is refused.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a token (builder style).
    pub fn with(mut self, token: impl Into<String>, principal: Principal) -> Self {
        self.insert(token, principal);
        self
    }

    /// Add or replace a token.
    pub fn insert(&mut self, token: impl Into<String>, principal: Principal) {
        if principal.role == Role::Gateway {
            let tenants = self.gateways.entry(principal.subject.clone()).or_default();
            if !tenants.contains(&principal.tenant) {
                tenants.push(principal.tenant.clone());
            }
        }
        if let Some(old) = self.tokens.insert(token.into(), principal) {
            self.forget_gateway(&old);
        }
    }

    /// Gateway ids that more than one tenant has a token for.
    pub fn ambiguous_gateways(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .gateways
            .iter()
            .filter(|(_, tenants)| tenants.len() > 1)
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// After a token was replaced: drop the old principal's gateway entry unless another token
    /// still names that gateway in that tenant.
    fn forget_gateway(&mut self, old: &Principal) {
        if old.role != Role::Gateway {
            return;
        }
        let still_named = self
            .tokens
            .values()
            .any(|p| p.role == Role::Gateway && p.subject == old.subject && p.tenant == old.tenant);
        if !still_named && let Some(tenants) = self.gateways.get_mut(&old.subject) {
            tenants.retain(|t| t != &old.tenant);
            if tenants.is_empty() {
                self.gateways.remove(&old.subject);
            }
        }
    }
}

impl GatewayDirectory for StaticTokens {
    fn tenant_of(&self, gateway_id: &str) -> Option<String> {
        match self.gateways.get(gateway_id).map(Vec::as_slice) {
            Some([tenant]) => Some(tenant.clone()),
            _ => None,
        }
    }
}

impl Authenticator for StaticTokens {
    fn authenticate(&self, token: &str) -> Option<Principal> {
        // A keyed lookup: O(1) for fleets of any size. `HashMap` hashes with a per-process
        // random SipHash key, so lookup time reveals nothing an attacker can steer towards a
        // real token; the final comparison is constant-time all the same.
        let (candidate, principal) = self.tokens.get_key_value(token)?;
        constant_time_eq(candidate.as_bytes(), token.as_bytes()).then(|| principal.clone())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token of an `Authorization: Bearer <token>` header value; `None` for another scheme or
/// an empty token. The scheme is case-insensitive.
///
/// ```
/// assert_eq!(gateway_proto::auth::bearer_token("Bearer abc"), Some("abc"));
/// assert_eq!(gateway_proto::auth::bearer_token("Basic abc"), None);
/// ```
pub fn bearer_token(header_value: &str) -> Option<&str> {
    let (scheme, token) = header_value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer_token("bearer  t0k "), Some("t0k"));
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token(""), None);
    }

    #[test]
    fn static_tokens_are_a_gateway_directory() {
        let mut tokens = StaticTokens::new()
            .with("a", Principal::new("acme", "gw-1", Role::Gateway))
            .with("b", Principal::new("acme", "gw-1", Role::Gateway))
            .with("c", Principal::new("globex", "gw-2", Role::Gateway))
            .with("d", Principal::new("acme", "ops", Role::Admin));
        assert_eq!(tokens.tenant_of("gw-1").as_deref(), Some("acme"));
        assert_eq!(tokens.tenant_of("gw-2").as_deref(), Some("globex"));
        assert_eq!(tokens.tenant_of("ops"), None, "admins are not gateways");
        assert_eq!(tokens.tenant_of("gw-3"), None);
        assert!(tokens.ambiguous_gateways().is_empty());

        tokens.insert("e", Principal::new("globex", "gw-1", Role::Gateway));
        assert_eq!(
            tokens.tenant_of("gw-1"),
            None,
            "an id of two tenants belongs to none"
        );
        assert_eq!(tokens.ambiguous_gateways(), vec!["gw-1".to_string()]);

        // Replacing the token removes the second tenant again.
        tokens.insert("e", Principal::new("globex", "agent-9", Role::Agent));
        assert_eq!(tokens.tenant_of("gw-1").as_deref(), Some("acme"));
    }

    #[test]
    fn static_tokens_only_accept_exact_matches() {
        let tokens = StaticTokens::new().with("abc", Principal::new("t", "gw", Role::Gateway));
        assert!(tokens.authenticate("abc").is_some());
        assert!(tokens.authenticate("ab").is_none());
        assert!(tokens.authenticate("abcd").is_none());
        assert!(StaticTokens::new().authenticate("abc").is_none());
    }
}
