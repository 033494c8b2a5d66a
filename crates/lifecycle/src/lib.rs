//! Lifecycle of a long-running process (kuma-cp, kuma-dp).
//!
//! Every long-running task is started through a [`Supervisor`], under a name: a *critical* task
//! that ends before the process is stopping stops the process (non-zero exit); a *restarting*
//! task is started again with exponential backoff. One [`Shutdown`] tells every task to stop,
//! and lets the process wait, with a deadline, for the tasks that still have something to do on
//! the way out (close streams with a status, record the subscriptions they close).
//! [`Readiness`] answers `/ready`: never ready while a task is dead or restarting.
//!
//! It knows nothing of what the tasks do, and must not hold domain state.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::{AbortOnDropHandle, TaskTracker};
use tracing::{error, info, warn};

/// One shutdown for the whole process: tasks watch [`Shutdown::begun`]; tasks spawned with
/// [`Shutdown::spawn`] are waited for by [`Shutdown::finish`].
#[derive(Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Tells every task to stop. Idempotent.
    pub fn begin(&self) {
        self.token.cancel();
        self.tracker.close();
    }

    pub fn has_begun(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once the shutdown has begun (at once if it already has).
    pub fn begun(&self) -> WaitForCancellationFutureOwned {
        self.token.clone().cancelled_owned()
    }

    /// Runs `task` until it ends or the shutdown begins, whichever comes first.
    pub async fn unless_stopped<F: Future>(&self, task: F) -> Option<F::Output> {
        tokio::select! {
            out = task => Some(out),
            () = self.begun() => None,
        }
    }

    /// Spawns a task the process waits for when it stops (a stream that must end with a status
    /// and record that it ended).
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// Begins the shutdown and waits until every task spawned with [`Shutdown::spawn`] has
    /// ended, or `deadline` has passed. Returns how many were still running.
    pub async fn finish(&self, deadline: Duration) -> usize {
        self.begin();
        match tokio::time::timeout(deadline, self.tracker.wait()).await {
            Ok(()) => 0,
            Err(_) => self.tracker.len(),
        }
    }
}

/// What a supervised task is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Running,
    /// It ended unexpectedly (the reason) and starts again after a backoff.
    Restarting(String),
    /// It ended unexpectedly and the process is stopping because of it.
    Failed(String),
    /// It ended because the process is stopping.
    Stopped,
    /// A leader-only task on an instance that does not lead: waiting, as it should.
    Standby,
}

/// A critical task that ended while the process was not stopping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub task: &'static str,
    pub reason: String,
}

impl Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} stopped unexpectedly: {}", self.task, self.reason)
    }
}

/// Backoff between restarts: doubles from `start` up to `max`; a task that ran for longer than
/// `reset_after` starts again from `start`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub start: Duration,
    pub max: Duration,
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            start: Duration::from_millis(200),
            max: Duration::from_secs(10),
            reset_after: Duration::from_secs(60),
        }
    }
}

#[derive(Default)]
struct State {
    tasks: BTreeMap<&'static str, Health>,
}

/// Starts named tasks and watches them (see the crate's documentation).
#[derive(Clone)]
pub struct Supervisor {
    shutdown: Shutdown,
    state: Arc<Mutex<State>>,
    started: Arc<AtomicBool>,
    failures: mpsc::UnboundedSender<Failure>,
    backoff: Backoff,
}

/// Where the failures of critical tasks arrive.
pub struct Failures(mpsc::UnboundedReceiver<Failure>);

impl Failures {
    /// The next failure of a critical task; pending forever if none fails.
    pub async fn next(&mut self) -> Failure {
        match self.0.recv().await {
            Some(f) => f,
            None => std::future::pending().await,
        }
    }
}

impl Supervisor {
    pub fn new(shutdown: Shutdown, backoff: Backoff) -> (Supervisor, Failures) {
        let (tx, rx) = mpsc::unbounded_channel();
        let supervisor = Supervisor {
            shutdown,
            state: Arc::default(),
            started: Arc::default(),
            failures: tx,
            backoff,
        };
        (supervisor, Failures(rx))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, task: &'static str, health: Health) {
        self.lock().tasks.insert(task, health);
    }

    /// Every task's health, by name.
    pub fn health(&self) -> BTreeMap<&'static str, Health> {
        self.lock().tasks.clone()
    }

    /// Marks the process as started: [`Readiness`] reports ready from now on while every task
    /// runs and no shutdown has begun.
    pub fn set_started(&self) {
        self.started.store(true, Ordering::SeqCst);
    }

    pub fn readiness(&self) -> Readiness {
        Readiness(self.clone())
    }

    /// A task the process cannot do without: if it ends (returns, fails or panics) while the
    /// process is not stopping, the failure is logged and reported to [`Failures`]. The task
    /// itself must end when the shutdown begins (after draining what it serves).
    pub fn critical<F, E>(&self, task: &'static str, future: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: Display + Send + 'static,
    {
        self.set(task, Health::Running);
        let me = self.clone();
        self.shutdown.spawn(async move {
            let outcome = run_catching(future).await;
            if me.shutdown.has_begun() {
                if let Err(reason) = &outcome {
                    warn!(task, reason, "task ended with an error while stopping");
                }
                me.set(task, Health::Stopped);
                return;
            }
            let reason = outcome.err().unwrap_or_else(|| "it returned".to_string());
            error!(task, reason, "task ended unexpectedly; the process stops");
            me.set(task, Health::Failed(reason.clone()));
            let _ = me.failures.send(Failure { task, reason });
        });
    }

    /// A critical task that serves until the shutdown begins, then is dropped (a UDP server:
    /// nothing to drain). Ending on its own before that is a failure.
    pub fn serving<F>(&self, task: &'static str, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let shutdown = self.shutdown.clone();
        self.critical(task, async move {
            shutdown.unless_stopped(future).await;
            Ok::<(), std::convert::Infallible>(())
        });
    }

    /// A task that is started again, after a backoff, whenever it ends (returns, fails or
    /// panics) while the process is not stopping. `start` makes a fresh run of it. At shutdown
    /// the running instance is dropped.
    pub fn restarting<M, F, E>(&self, task: &'static str, start: M)
    where
        M: FnMut() -> F + Send + 'static,
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: Display + Send + 'static,
    {
        self.supervise_restarting(task, start, None);
    }

    /// A [`restarting`](Self::restarting) task that runs only while `leading` is true (this
    /// instance leads): it starts when leadership comes, is dropped as soon as it goes (shown
    /// as [`Health::Standby`], which is not a failure) and starts afresh when it comes back.
    pub fn leader_only<M, F, E>(&self, task: &'static str, leading: watch::Receiver<bool>, start: M)
    where
        M: FnMut() -> F + Send + 'static,
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: Display + Send + 'static,
    {
        self.supervise_restarting(task, start, Some(leading));
    }

    fn supervise_restarting<M, F, E>(
        &self,
        task: &'static str,
        mut start: M,
        mut leading: Option<watch::Receiver<bool>>,
    ) where
        M: FnMut() -> F + Send + 'static,
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: Display + Send + 'static,
    {
        let health_while_running = |leading: &Option<watch::Receiver<bool>>| match leading {
            Some(l) if !*l.borrow() => Health::Standby,
            _ => Health::Running,
        };
        self.set(task, health_while_running(&leading));
        let me = self.clone();
        self.shutdown.spawn(async move {
            let mut backoff = me.backoff.start;
            loop {
                if let Some(l) = &mut leading {
                    if !*l.borrow() {
                        me.set(task, Health::Standby);
                    }
                    // A dropped sender means leadership can never come: stand by until the end.
                    if me
                        .shutdown
                        .unless_stopped(l.wait_for(|lead| *lead))
                        .await
                        .is_none()
                    {
                        break;
                    }
                    me.set(task, Health::Running);
                }
                let began = Instant::now();
                let run = run_catching(start());
                let outcome = match &mut leading {
                    None => me.shutdown.unless_stopped(run).await,
                    Some(l) => {
                        let lost = async {
                            if l.wait_for(|lead| !*lead).await.is_err() {
                                std::future::pending::<()>().await;
                            }
                        };
                        tokio::select! {
                            out = me.shutdown.unless_stopped(run) => out,
                            () = lost => {
                                info!(task, "stopped: this instance is no longer the leader");
                                continue;
                            }
                        }
                    }
                };
                let Some(outcome) = outcome else {
                    break;
                };
                if me.shutdown.has_begun() {
                    break;
                }
                if began.elapsed() > me.backoff.reset_after {
                    backoff = me.backoff.start;
                }
                let reason = outcome.err().unwrap_or_else(|| "it returned".to_string());
                error!(task, reason, retry_in = ?backoff, "task ended unexpectedly; restarting it");
                me.set(task, Health::Restarting(reason));
                if me
                    .shutdown
                    .unless_stopped(tokio::time::sleep(backoff))
                    .await
                    .is_none()
                {
                    break;
                }
                backoff = (backoff * 2).min(me.backoff.max);
                me.set(task, health_while_running(&leading));
            }
            me.set(task, Health::Stopped);
        });
    }
}

/// Runs a task in its own tokio task so that a panic is caught; the reason of a failure or a
/// panic comes back as text. Dropping this future aborts the task.
async fn run_catching<F, E>(future: F) -> Result<(), String>
where
    F: Future<Output = Result<(), E>> + Send + 'static,
    E: Display + Send + 'static,
{
    match AbortOnDropHandle::new(tokio::spawn(future)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(join) if join.is_panic() => {
            let panic = join.into_panic();
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".into());
            Err(format!("panicked: {message}"))
        }
        Err(join) => Err(format!("cancelled: {join}")),
    }
}

/// Whether the process is ready: started, not stopping, and every supervised task running.
#[derive(Clone)]
pub struct Readiness(Supervisor);

impl Readiness {
    /// `Ok` when ready, else why not (naming the tasks that are not running).
    pub fn check(&self) -> Result<(), String> {
        let s = &self.0;
        if s.shutdown.has_begun() {
            return Err("shutting down".into());
        }
        if !s.started.load(Ordering::SeqCst) {
            return Err("starting".into());
        }
        let down: Vec<String> = s
            .lock()
            .tasks
            .iter()
            .filter_map(|(task, health)| match health {
                Health::Running | Health::Standby => None,
                Health::Restarting(r) => Some(format!("{task} is restarting ({r})")),
                Health::Failed(r) => Some(format!("{task} failed ({r})")),
                Health::Stopped => Some(format!("{task} stopped")),
            })
            .collect();
        if down.is_empty() {
            Ok(())
        } else {
            Err(down.join("; "))
        }
    }
}

/// Waits for SIGTERM or SIGINT and begins the shutdown; from then on a second signal ends the
/// process at once (exit code 130). Returns the name of the signal.
pub async fn stop_on_signal(shutdown: &Shutdown) -> std::io::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    shutdown.begin();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        warn!("second signal: exiting now, without waiting for streams to close");
        std::process::exit(130);
    });
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    type Task = std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

    fn quick() -> Backoff {
        Backoff {
            start: Duration::from_millis(100),
            max: Duration::from_millis(400),
            reset_after: Duration::from_secs(60),
        }
    }

    async fn wait_health(s: &Supervisor, task: &'static str, want: impl Fn(&Health) -> bool) {
        for _ in 0..1000 {
            if s.health().get(task).is_some_and(&want) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("{task} never reached the wanted health: {:?}", s.health());
    }

    #[tokio::test]
    async fn a_critical_task_that_fails_or_panics_or_returns_is_reported_by_name() {
        let cases: Vec<(&'static str, Task, &str)> = vec![
            (
                "fails",
                Box::pin(async { Err("port closed".to_string()) }),
                "port closed",
            ),
            (
                "panics",
                Box::pin(async { panic!("boom") }),
                "panicked: boom",
            ),
            ("returns", Box::pin(async { Ok(()) }), "it returned"),
        ];
        for (task, future, reason) in cases {
            let (s, mut failures) = Supervisor::new(Shutdown::new(), quick());
            s.set_started();
            s.critical(task, future);
            let failure = failures.next().await;
            assert_eq!(failure.task, task);
            assert_eq!(failure.reason, reason);
            assert_eq!(s.health()[task], Health::Failed(reason.into()));
            assert!(s.readiness().check().unwrap_err().contains(task));
        }
    }

    #[tokio::test]
    async fn a_leader_only_task_runs_exactly_while_leading() {
        let shutdown = Shutdown::new();
        let (s, _failures) = Supervisor::new(shutdown.clone(), quick());
        s.set_started();
        let (lead_tx, lead_rx) = watch::channel(false);
        // How many runs are alive now, and how many began.
        let alive = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let began = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        struct Alive(Arc<std::sync::atomic::AtomicUsize>);
        impl Drop for Alive {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let (a, b) = (alive.clone(), began.clone());
        s.leader_only("kds client", lead_rx, move || {
            let (a, b) = (a.clone(), b.clone());
            async move {
                a.fetch_add(1, Ordering::SeqCst);
                b.fetch_add(1, Ordering::SeqCst);
                let _alive = Alive(a);
                std::future::pending::<()>().await;
                Ok::<(), String>(())
            }
        });
        wait_health(&s, "kds client", |h| *h == Health::Standby).await;
        assert_eq!(began.load(Ordering::SeqCst), 0, "no run before leading");
        assert_eq!(s.readiness().check(), Ok(()), "standing by is ready");

        let count = |n: usize, what: &str| {
            let (alive, began) = (alive.clone(), began.clone());
            let what = what.to_string();
            async move {
                for _ in 0..1000 {
                    if alive.load(Ordering::SeqCst) == n {
                        return began.load(Ordering::SeqCst);
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                panic!("{what}: {} alive, wanted {n}", alive.load(Ordering::SeqCst));
            }
        };
        lead_tx.send_replace(true);
        assert_eq!(count(1, "leading").await, 1);
        wait_health(&s, "kds client", |h| *h == Health::Running).await;
        lead_tx.send_replace(false);
        assert_eq!(count(0, "lost").await, 1, "the run is dropped");
        wait_health(&s, "kds client", |h| *h == Health::Standby).await;
        lead_tx.send_replace(true);
        assert_eq!(count(1, "leading again").await, 2, "a fresh run");
        shutdown.finish(Duration::from_secs(5)).await;
        assert_eq!(count(0, "stopped").await, 2);
        assert_eq!(s.health()["kds client"], Health::Stopped);
    }

    #[tokio::test]
    async fn a_critical_task_ending_at_shutdown_is_no_failure() {
        let shutdown = Shutdown::new();
        let (s, mut failures) = Supervisor::new(shutdown.clone(), quick());
        let stop = shutdown.begun();
        s.critical("server", async move {
            stop.await;
            Ok::<(), String>(())
        });
        assert_eq!(shutdown.finish(Duration::from_secs(1)).await, 0);
        assert_eq!(s.health()["server"], Health::Stopped);
        let none = tokio::time::timeout(Duration::from_secs(1), failures.next()).await;
        assert!(none.is_err(), "no failure expected");
    }

    #[tokio::test]
    async fn a_restarting_task_is_started_again_with_backoff_and_is_unready_meanwhile() {
        let (s, _failures) = Supervisor::new(Shutdown::new(), quick());
        s.set_started();
        let runs = Arc::new(AtomicUsize::new(0));
        let counter = runs.clone();
        let began = Instant::now();
        s.restarting("watcher", move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    Err(format!("run {n} lost its store"))
                } else {
                    std::future::pending::<Result<(), String>>().await
                }
            }
        });
        wait_health(&s, "watcher", |h| matches!(h, Health::Restarting(_))).await;
        let why = s.readiness().check().unwrap_err();
        assert!(
            why.contains("watcher is restarting (run 0 lost its store)"),
            "{why}"
        );
        wait_health(&s, "watcher", |_| runs.load(Ordering::SeqCst) == 3).await;
        // 100 ms, then 200 ms of backoff: never sooner.
        assert!(began.elapsed() >= Duration::from_millis(300));
        wait_health(&s, "watcher", |h| *h == Health::Running).await;
        assert_eq!(s.readiness().check(), Ok(()));
    }

    #[tokio::test]
    async fn a_panicking_restarting_task_restarts() {
        let (s, _failures) = Supervisor::new(Shutdown::new(), quick());
        let runs = Arc::new(AtomicUsize::new(0));
        let counter = runs.clone();
        s.restarting("table", move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    panic!("damaged");
                }
                std::future::pending::<Result<(), String>>().await
            }
        });
        wait_health(&s, "table", |_| runs.load(Ordering::SeqCst) == 2).await;
    }

    #[tokio::test]
    async fn shutdown_drops_restarting_tasks_and_waits_for_tracked_ones_until_the_deadline() {
        let shutdown = Shutdown::new();
        let (s, _failures) = Supervisor::new(shutdown.clone(), quick());
        s.set_started();
        s.restarting("loop", std::future::pending::<Result<(), String>>);
        let recorded = Arc::new(AtomicBool::new(false));
        let flag = recorded.clone();
        let stop = shutdown.begun();
        // A stream that records its end after the shutdown begins.
        shutdown.spawn(async move {
            stop.await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            flag.store(true, Ordering::SeqCst);
        });
        // One that never ends.
        shutdown.spawn(std::future::pending::<()>());
        let left = shutdown.finish(Duration::from_millis(500)).await;
        assert_eq!(left, 1, "only the stuck task is left");
        assert!(recorded.load(Ordering::SeqCst));
        assert_eq!(s.health()["loop"], Health::Stopped);
        assert_eq!(s.readiness().check(), Err("shutting down".into()));
    }

    #[tokio::test]
    async fn a_serving_task_is_dropped_at_shutdown_and_fails_if_it_ends_before() {
        let shutdown = Shutdown::new();
        let (s, mut failures) = Supervisor::new(shutdown.clone(), quick());
        s.serving("udp", std::future::pending::<()>());
        s.serving("ends", async {});
        let failure = failures.next().await;
        assert_eq!(failure.task, "ends");
        assert_eq!(failure.reason, "it returned");
        assert_eq!(shutdown.finish(Duration::from_secs(1)).await, 0);
        assert_eq!(s.health()["udp"], Health::Stopped);
    }

    #[tokio::test]
    async fn unready_until_started() {
        let (s, _failures) = Supervisor::new(Shutdown::new(), quick());
        assert_eq!(s.readiness().check(), Err("starting".into()));
        s.set_started();
        assert_eq!(s.readiness().check(), Ok(()));
    }
}
