//! The gateway's command bookkeeping on top of a [`CommandJournal`]: dedup of redeliveries,
//! outcomes, pending acknowledgements. Shared by the WebSocket session and the REST fallback.

use gateway_proto::{Command, CommandAck, CommandAckState, CommandId};

use super::journal::{CommandJournal, JournalEntry, Outcome};
use crate::{CommandState, Error};

/// Detail of the outcome given to commands interrupted by a restart.
pub(crate) const INTERRUPTED: &str =
    "interrupted by a gateway restart; not run again to keep execution at most once";

/// What to do with an incoming command.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// New: send `received`, hand the command to the application.
    New(Box<Command>),
    /// Known (a redelivery): send this answer, do not run it again.
    Known(CommandAck),
}

pub(crate) struct Ledger {
    journal: Box<dyn CommandJournal>,
}

impl Ledger {
    pub(crate) fn new(journal: Box<dyn CommandJournal>) -> Self {
        Ledger { journal }
    }

    /// Finish every command left running by a previous process as `failed`; their ids.
    pub(crate) fn recover(&mut self) -> Result<Vec<CommandId>, Error> {
        let running = self.journal.running()?;
        for id in &running {
            self.journal
                .record_outcome(id, &Outcome::failed(INTERRUPTED))?;
        }
        Ok(running)
    }

    pub(crate) fn last_command_id(&self) -> Result<Option<CommandId>, Error> {
        self.journal.last_command_id()
    }

    /// Classify a command from the server. `server_now_ms` is the server's clock as estimated
    /// by the session, used to refuse a command past its delivery deadline.
    pub(crate) fn on_command(
        &mut self,
        command: Command,
        server_now_ms: Option<i64>,
    ) -> Result<Incoming, Error> {
        match self.journal.get(&command.id)? {
            Some(JournalEntry::Finished { outcome, .. }) => {
                metrics::counter!("gateway_control_gateway_redeliveries_answered_total")
                    .increment(1);
                Ok(Incoming::Known(ack_of(command.id, &outcome)))
            }
            Some(JournalEntry::Running { .. }) => {
                metrics::counter!("gateway_control_gateway_redeliveries_answered_total")
                    .increment(1);
                // `received`, never `in_progress`, even when progress was reported: the
                // server restarts the step timer on every `in_progress`, and a redelivery is
                // not progress — answering with it would keep a hung command from ever timing
                // out while the server keeps asking.
                Ok(Incoming::Known(CommandAck {
                    id: command.id,
                    state: CommandAckState::Received,
                    detail: Some("already running".into()),
                    result: None,
                }))
            }
            None => {
                let expired = matches!(
                    (command.delivery_deadline_ms, server_now_ms),
                    (Some(deadline), Some(now)) if now > deadline
                );
                if expired {
                    let outcome = Outcome::rejected("delivery deadline passed before it arrived");
                    self.journal.record_outcome(&command.id, &outcome)?;
                    return Ok(Incoming::Known(ack_of(command.id, &outcome)));
                }
                self.journal.record_received(&command.id, &command.kind)?;
                Ok(Incoming::New(Box::new(command)))
            }
        }
    }

    fn running(&self, id: &CommandId) -> Result<(), Error> {
        match self.journal.get(id)? {
            Some(JournalEntry::Running { .. }) => Ok(()),
            Some(JournalEntry::Finished { outcome, .. }) => Err(Error::CommandFinished {
                id: *id,
                state: CommandState::from(outcome.state.ack_state()),
            }),
            None => Err(Error::UnknownCommand { id: *id }),
        }
    }

    pub(crate) fn progress(
        &mut self,
        id: CommandId,
        detail: Option<String>,
    ) -> Result<CommandAck, Error> {
        self.running(&id)?;
        self.journal.record_progress(&id)?;
        Ok(CommandAck {
            id,
            state: CommandAckState::InProgress,
            detail,
            result: None,
        })
    }

    pub(crate) fn outcome(
        &mut self,
        id: CommandId,
        outcome: &Outcome,
    ) -> Result<CommandAck, Error> {
        self.running(&id)?;
        self.journal.record_outcome(&id, outcome)?;
        Ok(ack_of(id, outcome))
    }

    pub(crate) fn pending(&self) -> Result<Vec<CommandAck>, Error> {
        Ok(self
            .journal
            .pending_acks()?
            .iter()
            .map(|(id, outcome)| ack_of(*id, outcome))
            .collect())
    }

    pub(crate) fn ack_sent(&mut self, id: &CommandId) -> Result<(), Error> {
        self.journal.mark_ack_sent(id)
    }
}

pub(crate) fn ack_of(id: CommandId, outcome: &Outcome) -> CommandAck {
    CommandAck {
        id,
        state: outcome.state.ack_state(),
        detail: outcome.detail.clone(),
        result: outcome.result.clone(),
    }
}
