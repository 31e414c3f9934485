//! Who may act as which agent.

use gateway_proto::auth::{Principal, Role};

/// The subject of an agent token that may act as any agent of its tenant (a site-wide agent
/// token, e.g. one baked into an installer).
pub const ANY_AGENT: &str = "*";

/// Whether `principal` may register or heartbeat as `agent_id`: its role is `agent`, and its
/// subject is `agent_id` or [`ANY_AGENT`]. Gateway and admin tokens may not act as agents.
pub fn may_act_as(principal: &Principal, agent_id: &str) -> bool {
    principal.role == Role::Agent
        && (principal.subject == agent_id || principal.subject == ANY_AGENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_acting_rule() {
        let own = Principal::new("acme", "a1", Role::Agent);
        let site = Principal::new("acme", ANY_AGENT, Role::Agent);
        let gateway = Principal::new("acme", "a1", Role::Gateway);
        let admin = Principal::new("acme", "*", Role::Admin);
        assert!(may_act_as(&own, "a1"));
        assert!(!may_act_as(&own, "a2"));
        assert!(may_act_as(&site, "a2"));
        assert!(!may_act_as(&gateway, "a1"));
        assert!(!may_act_as(&admin, "a1"));
    }
}
