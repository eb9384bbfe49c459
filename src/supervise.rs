//! The run group: every long-running part of a node (listeners and their connections, the
//! HTTP server, consumers, the lifecycle task, gossip, the sync thread) runs under one
//! supervisor, which names the first part to end and why (a return, or a panic and its
//! message), and keeps each part's state for `/health`.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::task::{Id, JoinSet};

use crate::http::PartStates;

/// The supervised parts of a node.
pub struct RunGroup {
    set: JoinSet<()>,
    names: HashMap<Id, String>,
    states: PartStates,
}

/// How a part ended.
#[derive(Debug)]
pub struct Exit {
    /// The part.
    pub name: String,
    /// `Err` with the panic message if it panicked.
    pub result: Result<(), String>,
}

impl RunGroup {
    /// An empty group.
    pub fn new() -> RunGroup {
        RunGroup {
            set: JoinSet::new(),
            names: HashMap::new(),
            states: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }

    /// The parts' states, for `/health`.
    pub fn states(&self) -> PartStates {
        Arc::clone(&self.states)
    }

    /// Run `part` under the name `name`.
    pub fn spawn(&mut self, name: &str, part: impl Future<Output = ()> + Send + 'static) {
        let armed = crate::failpoint::armed(name);
        let owned = name.to_string();
        let handle = self.set.spawn(async move {
            if armed {
                tokio::select! {
                    _ = part => {}
                    _ = tokio::time::sleep(crate::failpoint::AFTER) => {
                        panic!("injected failure of {owned} (OKLOG_FAILPOINT)")
                    }
                }
            } else {
                part.await
            }
        });
        self.names.insert(handle.id(), name.to_string());
        self.set_state(name, "running");
    }

    fn set_state(&self, name: &str, state: &str) {
        self.states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), state.to_string());
    }

    /// Wait for the next part to end (`None` when none is left), and record its state.
    pub async fn next_exit(&mut self) -> Option<Exit> {
        let joined = self.set.join_next_with_id().await?;
        let (id, result) = match joined {
            Ok((id, ())) => (id, Ok(())),
            Err(e) => {
                let id = e.id();
                let why = if e.is_panic() {
                    panic_message(e.into_panic())
                } else {
                    "cancelled".to_string()
                };
                (id, Err(why))
            }
        };
        let name = self
            .names
            .remove(&id)
            .unwrap_or_else(|| format!("task {id}"));
        match &result {
            Ok(()) => self.set_state(&name, "stopped"),
            Err(why) => self.set_state(&name, &format!("failed: {why}")),
        }
        Some(Exit { name, result })
    }

    /// The parts still running.
    pub fn running(&self) -> Vec<&str> {
        self.names.values().map(String::as_str).collect()
    }
}

impl Default for RunGroup {
    fn default() -> Self {
        RunGroup::new()
    }
}

/// The text of a panic payload.
pub fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panicked".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_part_to_end_is_named_with_its_panic() {
        let mut group = RunGroup::new();
        group.spawn("forever", std::future::pending());
        group.spawn("broken", async {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            panic!("disk on fire");
        });
        let exit = group.next_exit().await.unwrap();
        assert_eq!(exit.name, "broken");
        assert_eq!(exit.result.unwrap_err(), "disk on fire");
        let states = group.states();
        let states = states.lock().unwrap();
        assert_eq!(states["forever"], "running");
        assert_eq!(states["broken"], "failed: disk on fire");
    }
}
