//! Who may act as which agent.

pub use gateway_proto::auth::ANY_AGENT;
use gateway_proto::auth::Principal;

/// Whether `principal` may register or heartbeat as `agent_id`: its role is `agent`, and its
/// subject is `agent_id` or [`ANY_AGENT`]. Gateway and admin tokens may not act as agents.
/// The rule is [`Principal::may_act_as_agent`], shared with the record receiver.
pub fn may_act_as(principal: &Principal, agent_id: &str) -> bool {
    principal.may_act_as_agent(agent_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_proto::auth::Role;

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
