//! The daemon's heartbeat in the kernel (see `blocker_common::Heartbeat`): beaten from the event
//! loop, so a daemon that is killed, frozen or starved stops beating whatever stopped it.

use anyhow::{Context, Result};
use aya::maps::{Array, MapData};
use blocker_common::{names, Heartbeat};

use super::Enforcer;
use crate::events::BootClock;

impl Enforcer {
    /// The heartbeat as the daemon before this one left it (all zero for new programs).
    pub fn heartbeat(&mut self) -> Result<Heartbeat> {
        self.heartbeat_slot()?
            .get(&0, 0)
            .context("reading the heartbeat")
    }

    /// Tells the programs this daemon answers, now.
    pub fn beat(&mut self) -> Result<()> {
        self.set_heartbeat(Heartbeat {
            last_beat_ns: BootClock.now_ns(),
            daemon_tgid: std::process::id(),
            stopped: 0,
        })
    }

    /// Tells the programs and the next daemon that this one stopped the documented way.
    pub fn stop_beating(&mut self) -> Result<()> {
        let last = self.heartbeat()?;
        self.set_heartbeat(Heartbeat { stopped: 1, ..last })
    }

    fn set_heartbeat(&mut self, heartbeat: Heartbeat) -> Result<()> {
        self.heartbeat_slot()?
            .set(0, heartbeat, 0)
            .context("writing the heartbeat")
    }

    fn heartbeat_slot(&mut self) -> Result<Array<&mut MapData, Heartbeat>> {
        Ok(Array::try_from(self.map_mut(names::HEARTBEAT_MAP)?)?)
    }
}
