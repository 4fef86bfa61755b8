//! The sink that tells refused people: exec records whose rules tell them anything go to the
//! notification dispatcher ([`crate::notify::dispatch`]). Behind this sink's own bounded queue,
//! a dispatcher busy with a flood (or a hash for a URL) costs dropped notices, never the event
//! loop's time.

use std::sync::Arc;

use super::{
    queue::{Sink, Unwritten},
    Emitted,
};
use crate::{
    events::Record,
    notify::dispatch::{Dispatch, Refusal},
};

pub struct Notify(pub Dispatch);

impl Sink for Notify {
    fn write(&mut self, records: &[Arc<Emitted>]) -> Result<(), Unwritten> {
        for emitted in records {
            if let Record::Exec(exec) = &emitted.record {
                if let Some(refusal) = Refusal::of(exec) {
                    self.0.refused(refusal);
                }
            }
        }
        Ok(())
    }
}
