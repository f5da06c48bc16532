//! The set of running traffic listeners, kept in step with the config across reloads.
//!
//! Each listener runs as its own task with its own `CancellationToken` (a child of the
//! server's shutdown token). A reload diffs the new config's listeners against the running
//! ones *by name*, in two steps so that it stays all-or-nothing:
//! 1. [`ListenerSet::plan`] binds every listener that is new or whose `bind` changed. If one
//!    bind fails, the listeners bound so far in this attempt are dropped (closed) and the
//!    reload fails with nothing changed.
//! 2. After the new snapshot is stored, [`ListenerSet::apply`] starts the new listeners and
//!    cancels the removed and rebound ones: they stop accepting and drain their open
//!    connections in the background, up to the drain deadline.
//!
//! A listener whose `bind` is unchanged keeps its socket and task; its limits come from the
//! snapshot at each accept (see `listener`). Per-connection settings are `listener`'s job.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::ListenerConfig;
use crate::listener::Listener;
use crate::snapshot::Shared;
use crate::StartError;

/// One listener task that is accepting connections.
#[derive(Debug)]
struct Running {
    name: String,
    /// The configured address (port 0 stays 0 here).
    bind: SocketAddr,
    /// The address actually bound.
    addr: SocketAddr,
    /// Cancelled to make this listener stop accepting and drain.
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

/// Listeners bound for a new config but not serving yet, and the running ones it drops.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    bound: Vec<(Listener, SocketAddr, SocketAddr)>,
    stop: Vec<String>,
}

/// The running listeners and the ones still draining after a reload removed them.
#[derive(Debug)]
pub(crate) struct ListenerSet {
    /// The server's shutdown token; each listener's token is a child of it.
    shutdown: CancellationToken,
    drain: Duration,
    running: Vec<Running>,
    /// Tasks of removed listeners, still draining; awaited at shutdown.
    retired: Vec<JoinHandle<()>>,
}

// === impl ListenerSet ===

impl ListenerSet {
    /// An empty set whose listeners stop when `shutdown` fires, draining for up to `drain`.
    pub(crate) fn new(shutdown: CancellationToken, drain: Duration) -> ListenerSet {
        ListenerSet {
            shutdown,
            drain,
            running: Vec::new(),
            retired: Vec::new(),
        }
    }

    /// Binds what `configs` adds or moves; on any failure nothing stays bound.
    pub(crate) fn plan(&self, configs: &[ListenerConfig]) -> Result<Plan, StartError> {
        let mut plan = Plan::default();
        for cfg in configs {
            let current = self.running.iter().find(|r| r.name == cfg.name);
            if current.is_some_and(|r| r.bind == cfg.bind) {
                continue;
            }
            let bind_error = |source| StartError::Bind {
                name: cfg.name.clone(),
                addr: cfg.bind,
                source,
            };
            let listener = Listener::bind(cfg).map_err(bind_error)?;
            let addr = listener.local_addr().map_err(bind_error)?;
            plan.bound.push((listener, cfg.bind, addr));
            if current.is_some() {
                plan.stop.push(cfg.name.clone());
            }
        }
        let removed = self
            .running
            .iter()
            .filter(|r| !configs.iter().any(|c| c.name == r.name));
        plan.stop.extend(removed.map(|r| r.name.clone()));
        Ok(plan)
    }

    /// Stops the listeners `plan` drops and starts the ones it bound, serving `shared`.
    pub(crate) fn apply(&mut self, plan: Plan, shared: &Arc<Shared>) {
        for name in plan.stop {
            if let Some(i) = self.running.iter().position(|r| r.name == name) {
                let old = self.running.swap_remove(i);
                tracing::info!(listener = %old.name, addr = %old.addr, "listener closing: stops accepting, draining its connections");
                old.cancel.cancel();
                self.retired.push(old.task);
            }
        }
        self.retired.retain(|task| !task.is_finished());
        for (listener, bind, addr) in plan.bound {
            let name = listener.name().to_owned();
            tracing::info!(listener = %name, %addr, "listening");
            let cancel = self.shutdown.child_token();
            let task = tokio::spawn(listener.serve(shared.clone(), cancel.clone(), self.drain));
            self.running.push(Running {
                name,
                bind,
                addr,
                cancel,
                task,
            });
        }
    }

    /// The address the listener named `name` actually bound.
    pub(crate) fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.running.iter().find(|r| r.name == name).map(|r| r.addr)
    }

    /// Every listener task, running or draining, for shutdown to await; the set is empty after.
    pub(crate) fn take_tasks(&mut self) -> Vec<JoinHandle<()>> {
        let running = self.running.drain(..).map(|r| r.task);
        let mut tasks: Vec<JoinHandle<()>> = running.collect();
        tasks.append(&mut self.retired);
        tasks
    }
}
