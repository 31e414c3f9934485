//! The gateway end: [`GatewaySession`] (sans-IO), its command [`journal`], the tokio
//! WebSocket driver ([`GatewayClient`]) and the REST fallback client; and the gateway's
//! local API for its [`agents`] (registration, heartbeats, presence, commands to agents).

pub mod agents;
mod driver;
pub mod journal;
mod ledger;
mod rest;
mod session;

pub use driver::{
    GatewayClient, GatewayClientBuilder, GatewayClientConfig, GatewayEvents, GatewayHandle,
    WireEncoding, default_tls_config,
};
pub use journal::{
    CommandJournal, JournalConfig, JournalEntry, MemoryJournal, Outcome, OutcomeState,
    SqliteJournal,
};
pub use rest::{AckReceipt, CommandList, RestFallbackClient, RestHeartbeatAck, RestPoller};
pub use session::{
    ConnectionState, GatewayEvent, GatewaySession, GatewaySessionConfig, Transmit, empty_status,
};
