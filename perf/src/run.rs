//! One run, phase by phase: connect and declare; start the consumers, then the producers;
//! publish, printing a line a second; when publishing stops (time, count or Ctrl-C), drain
//! until the consumers have what was routed; stop every task; sum up; clean up.
//!
//! Every wait is bounded or cancellable: setup steps by [`SETUP_TIMEOUT`] and Ctrl-C, the
//! run by its own phases (the drain by `--drain-timeout`), the shutdown by
//! [`SHUTDOWN_TIMEOUT`].

use std::{future::Future, sync::Arc, time::Duration};

use hdrhistogram::CreationError;
use lepus::{BasicProperties, Connection, PublishOptions};
use tokio::{
    task::{JoinError, JoinSet},
    time::{Instant, MissedTickBehavior},
};
use tokio_util::sync::CancellationToken;

use crate::{
    args::{Args, Broker},
    connect::{self, CLOSE_TIMEOUT, Unreachable},
    consumer::{Consumer, ConsumerContext, ConsumerPlan},
    message::RunClock,
    phase::{Drain, Publishing},
    producer::{Producer, ProducerContext, ProducerPlan},
    report::{self, IntervalLine, Printer, RunEnd, RunShape, Summary},
    stats::{Counters, Latencies, LatencySummary, Recorder, Snapshot},
    topology::{self, Topology},
};

/// How long one setup step (a connection, a declaration, a consume) may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the tasks may take to stop once the run is over: each closes its connection
/// within [`CLOSE_TIMEOUT`], all at once.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Between two live lines.
const TICK: Duration = Duration::from_secs(1);

/// Why a run could not start, or what went wrong during it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Failure {
    /// No `--uri` accepted a connection.
    #[error(transparent)]
    Unreachable(#[from] Unreachable),
    /// A step or a task failed with the client's error.
    #[error("{what}: {error}")]
    Step {
        /// What was being done, or which task.
        what: String,
        /// The client's error.
        error: lepus::Error,
    },
    /// A setup step did not finish in time.
    #[error("{0}: no answer within {SETUP_TIMEOUT:?}")]
    TimedOut(String),
    /// A task panicked.
    #[error("a task stopped abnormally: {0}")]
    Task(String),
    /// The latency histogram could not be made (its bounds are constants: not expected).
    #[error("latency histogram: {0}")]
    Histogram(#[from] CreationError),
    /// Ctrl-C before the run started.
    #[error("interrupted before the run started")]
    Interrupted,
}

/// Runs what `args` asks for and returns its summary, which names what failed during the
/// run if something did. `Err` is a run that could not start. Cancelling `interrupt` (on
/// Ctrl-C) stops the run and still yields the summary.
pub(crate) async fn run(args: Args, interrupt: CancellationToken, printer: Printer) -> Result<Summary, Failure> {
    let empty = Latencies::new()?;
    let setup_name = args.connection_name("setup");
    let (broker, admin) = tokio::select! {
        () = interrupt.cancelled() => return Err(Failure::Interrupted),
        reached = connect::first_reachable(&args.brokers, &setup_name) => reached?,
    };
    let topology = match step("declaring the queue", &interrupt, topology::declare(&admin, &args)).await {
        Ok(topology) => topology,
        Err(failure) => {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, admin.close()).await;
            return Err(failure);
        }
    };
    let result = Run::new(&args, &broker, &admin, &topology, interrupt, printer, empty).go().await;
    // Bounded even under Ctrl-C: a second Ctrl-C exits at once anyway.
    match tokio::time::timeout(CLOSE_TIMEOUT, topology::remove(&admin, &topology)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => report::warn(&format!("could not delete queue {:?}: {e}", topology.queue)),
        Err(_) => report::warn(&format!("could not delete queue {:?}: no answer", topology.queue)),
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, admin.close()).await;
    result
}

/// A setup step, bounded by [`SETUP_TIMEOUT`] and cancelled by Ctrl-C.
async fn step<T>(
    what: &str,
    interrupt: &CancellationToken,
    step: impl Future<Output = Result<T, lepus::Error>>,
) -> Result<T, Failure> {
    tokio::select! {
        () = interrupt.cancelled() => Err(Failure::Interrupted),
        done = tokio::time::timeout(SETUP_TIMEOUT, step) => match done {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(Failure::Step { what: what.to_owned(), error }),
            Err(_) => Err(Failure::TimedOut(what.to_owned())),
        },
    }
}

/// A task's end as a failure, if it was one.
fn task_failure(joined: Result<Result<(), Failure>, JoinError>) -> Option<Failure> {
    match joined {
        Ok(Ok(())) => None,
        Ok(Err(failure)) => Some(failure),
        Err(e) => Some(Failure::Task(e.to_string())),
    }
}

/// The one-second lines: counters and latencies since the last one, and the run's total
/// latency distribution.
struct Meter {
    start: Instant,
    last_tick: Instant,
    last: Snapshot,
    interval: Latencies,
    total: Latencies,
    recorders: Vec<Arc<Recorder>>,
}

impl Meter {
    fn new(start: Instant, empty: &Latencies, recorders: Vec<Arc<Recorder>>) -> Self {
        Meter {
            start,
            last_tick: start,
            last: Snapshot::default(),
            interval: empty.clone(),
            total: empty.clone(),
            recorders,
        }
    }

    /// Collects the consumers' latencies into the interval and the total.
    fn collect(&mut self) {
        self.interval.reset();
        for recorder in &self.recorders {
            recorder.drain_into(&mut self.interval);
        }
        self.total.add(&self.interval);
    }

    /// The line for the interval that ends now.
    fn tick(&mut self, counters: &Counters) -> IntervalLine {
        let now = Instant::now();
        let snapshot = counters.snapshot();
        self.collect();
        let line = IntervalLine::new(
            now - self.start,
            now - self.last_tick,
            snapshot.since(&self.last),
            self.interval.percentiles(),
        );
        self.last = snapshot;
        self.last_tick = now;
        line
    }

    /// The whole run's latencies, including what came since the last line.
    fn finish(&mut self) -> Option<LatencySummary> {
        self.collect();
        self.total.summary()
    }
}

/// Where the run is.
struct Progress {
    /// Publishing stopped at this instant (every producer done, confirms in).
    published: Option<Instant>,
    /// The drain must be over by then (set when the time is up or publishing finished).
    drain_until: Option<Instant>,
    /// Messages the consumers must receive, once publishing finished.
    target: Option<u64>,
    drained: Option<bool>,
    failure: Option<Failure>,
}

/// One run's state, from the end of setup to the summary.
struct Run<'a> {
    args: &'a Args,
    broker: &'a Broker,
    admin: &'a Connection,
    topology: &'a Topology,
    interrupt: CancellationToken,
    stop_all: CancellationToken,
    stop_publishing: CancellationToken,
    printer: Printer,
    empty: Latencies,
    clock: RunClock,
    counters: Arc<Counters>,
    drain: Arc<Drain>,
    publishing: Arc<Publishing>,
}

impl<'a> Run<'a> {
    fn new(
        args: &'a Args,
        broker: &'a Broker,
        admin: &'a Connection,
        topology: &'a Topology,
        interrupt: CancellationToken,
        printer: Printer,
        empty: Latencies,
    ) -> Self {
        // Ctrl-C stops everything; the end of the run stops publishing too.
        let stop_all = interrupt.child_token();
        let stop_publishing = stop_all.child_token();
        Run {
            args,
            broker,
            admin,
            topology,
            interrupt,
            stop_all,
            stop_publishing,
            printer,
            empty,
            clock: RunClock::new(),
            counters: Arc::default(),
            drain: Arc::default(),
            publishing: Publishing::new(),
        }
    }

    fn shape(&self) -> RunShape {
        RunShape {
            id: self.args.id.clone(),
            broker: self.broker.to_string(),
            queue: self.topology.queue.clone(),
            producers: self.args.producers,
            consumers: self.args.consumers,
            size: self.args.size,
            confirm_window: self.args.confirm,
        }
    }

    /// Sets up the consumers and the producers, runs, stops and sums up.
    async fn go(self) -> Result<Summary, Failure> {
        // Consumers first, so that the first messages already find them.
        let mut consumers = Vec::new();
        let mut producers = Vec::new();
        let started = match self.start_consumers(&mut consumers).await {
            Ok(()) => self.start_producers(&mut producers).await,
            Err(failure) => Err(failure),
        };
        if let Err(failure) = started {
            // Close what was opened rather than drop it: the broker sees clean closes.
            for (_, consumer) in consumers {
                consumer.abandon().await;
            }
            for (_, producer) in producers {
                producer.abandon().await;
            }
            return Err(failure);
        }
        self.printer.header(&self.shape());
        let start = Instant::now();
        let mut tasks = JoinSet::new();
        let mut recorders = Vec::with_capacity(consumers.len());
        for (name, consumer) in consumers {
            let recorder = Recorder::new(self.empty.clone());
            recorders.push(recorder.clone());
            let cx = ConsumerContext {
                clock: self.clock,
                counters: self.counters.clone(),
                drain: self.drain.clone(),
                stop_all: self.stop_all.clone(),
            };
            let autoack = self.args.autoack;
            tasks.spawn(async move {
                consumer.run(recorder, autoack, cx).await.map_err(|error| Failure::Step { what: name, error })
            });
        }
        let plan = Arc::new(self.producer_plan());
        for (name, producer) in producers {
            let cx = ProducerContext {
                clock: self.clock,
                counters: self.counters.clone(),
                stop_publishing: self.stop_publishing.clone(),
                stop_all: self.stop_all.clone(),
            };
            // Counted before the task runs, so the run never sees zero producers publishing
            // while one has yet to start.
            let publishing = self.publishing.start();
            let plan = plan.clone();
            tasks.spawn(async move {
                producer.run(plan, cx, publishing).await.map_err(|error| Failure::Step { what: name, error })
            });
        }
        let mut meter = Meter::new(start, &self.empty, recorders);
        let mut progress = self.watch(&mut tasks, &mut meter, start).await;
        let ended = Instant::now();
        self.stop(&mut tasks, &mut progress).await;
        let end = RunEnd {
            elapsed: ended - start,
            publishing: progress.published.unwrap_or(ended) - start,
            drained: progress.drained,
            interrupted: self.interrupt.is_cancelled(),
            error: progress.failure.map(|f| f.to_string()),
        };
        Ok(Summary::new(self.shape(), self.counters.snapshot(), end, meter.finish()))
    }

    /// Starts every consumer into `consumers`, up to the first failure.
    async fn start_consumers(&self, consumers: &mut Vec<(String, Consumer)>) -> Result<(), Failure> {
        let plan = ConsumerPlan { prefetch: self.args.qos, autoack: self.args.autoack };
        for i in 0..self.args.consumers {
            let name = format!("consumer {i}");
            // An exclusive queue admits only the connection that declared it.
            let (conn, owns_connection) = if self.args.exclusive {
                (self.admin.clone(), false)
            } else {
                let connecting = connect::connect(self.broker, self.args.connection_name(&name), None);
                (step(&format!("{name}: connecting"), &self.interrupt, connecting).await?, true)
            };
            let starting = Consumer::start(conn, owns_connection, &self.topology.queue, plan);
            let consumer =
                step(&format!("{name}: consuming {:?}", self.topology.queue), &self.interrupt, starting).await?;
            consumers.push((name, consumer));
        }
        Ok(())
    }

    /// Starts every producer into `producers`, up to the first failure.
    async fn start_producers(&self, producers: &mut Vec<(String, Producer)>) -> Result<(), Failure> {
        let window = (self.args.confirm > 0).then_some(self.args.confirm as usize);
        let plan = self.producer_plan();
        for i in 0..self.args.producers {
            let name = format!("producer {i}");
            let connecting = connect::connect(self.broker, self.args.connection_name(&name), window);
            let conn = step(&format!("{name}: connecting"), &self.interrupt, connecting).await?;
            let producer =
                step(&format!("{name}: opening its channel"), &self.interrupt, Producer::start(conn, &plan)).await?;
            producers.push((name, producer));
        }
        Ok(())
    }

    fn producer_plan(&self) -> ProducerPlan {
        let properties = BasicProperties { delivery_mode: self.args.persistent().then_some(2), ..Default::default() };
        ProducerPlan {
            exchange: self.topology.exchange.clone(),
            routing_key: self.topology.routing_key.clone(),
            size: self.args.size as usize,
            rate: self.args.rate,
            count: self.args.pmessages,
            confirm_window: self.args.confirm as usize,
            publish: PublishOptions { mandatory: self.args.mandatory(), properties },
        }
    }

    /// What the consumers must receive once publishing has finished: every message the
    /// broker routed, as far as the client can tell (acked and not returned with
    /// confirms; sent and not returned without).
    fn drain_target(&self, totals: Snapshot) -> u64 {
        let accepted = if self.args.confirm > 0 { totals.confirmed } else { totals.sent };
        accepted.saturating_sub(totals.returned)
    }

    /// Publishing stopped (or the time is up): the drain's clock starts.
    fn start_drain_clock(&self, progress: &mut Progress) {
        if progress.drain_until.is_none() {
            progress.drain_until = Some(Instant::now() + self.args.drain_timeout());
        }
    }

    /// Runs until the drain is over, the time for it is up, a task fails or Ctrl-C;
    /// prints a line a second meanwhile.
    async fn watch(&self, tasks: &mut JoinSet<Result<(), Failure>>, meter: &mut Meter, start: Instant) -> Progress {
        let mut progress = Progress { published: None, drain_until: None, target: None, drained: None, failure: None };
        let mut ticker = tokio::time::interval_at(start + TICK, TICK);
        // Skip keeps the ticks on whole seconds from the start, so the last one meets the deadline.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let deadline = self.args.time.map(|secs| start + Duration::from_secs(secs));
        let mut time_up = false;
        // An instant the run never reaches, for the branches that are off.
        let never = start + Duration::from_secs(100 * 365 * 24 * 3600);
        loop {
            tokio::select! {
                biased;
                () = self.stop_all.cancelled() => break,
                Some(joined) = tasks.join_next() => {
                    // Only a failure ends a task before the run is over.
                    if let Some(failure) = task_failure(joined) {
                        progress.failure.get_or_insert(failure);
                        break;
                    }
                }
                // Without producers, "publishing" lasts until the time is up.
                () = self.publishing.finished(), if progress.published.is_none() && (self.args.producers > 0 || time_up) => {
                    progress.published = Some(Instant::now());
                    self.stop_publishing.cancel();
                    if self.args.consumers == 0 {
                        break;
                    }
                    self.start_drain_clock(&mut progress);
                    let target = self.drain_target(self.counters.snapshot());
                    progress.target = Some(target);
                    self.drain.set_target(target);
                }
                () = self.drain.reached(), if progress.target.is_some() => {}
                () = tokio::time::sleep_until(progress.drain_until.unwrap_or(never)), if progress.drain_until.is_some() => {
                    // Without consumers only confirms were awaited: `unconfirmed` tells.
                    progress.drained = (self.args.consumers > 0).then_some(false);
                    break;
                }
                // Before the deadline: a run of N seconds prints its N-th line.
                _ = ticker.tick() => self.printer.interval(&meter.tick(&self.counters)),
                () = tokio::time::sleep_until(deadline.unwrap_or(never)), if deadline.is_some() && !time_up => {
                    time_up = true;
                    self.stop_publishing.cancel();
                    self.start_drain_clock(&mut progress);
                }
            }
            if progress.target.is_some() {
                // Computed again each time: without confirms a late return lowers it (the
                // ticker wakes this loop at least once a second to see that).
                let totals = self.counters.snapshot();
                let target = self.drain_target(totals);
                progress.target = Some(target);
                self.drain.set_target(target);
                if totals.received >= target {
                    progress.drained = Some(true);
                    break;
                }
            }
        }
        progress
    }

    /// Stops every task and waits for them (bounded); a task that failed on the way is
    /// reported unless something failed before.
    async fn stop(&self, tasks: &mut JoinSet<Result<(), Failure>>, progress: &mut Progress) {
        self.stop_all.cancel();
        let joined = tokio::time::timeout(SHUTDOWN_TIMEOUT, async {
            while let Some(joined) = tasks.join_next().await {
                if let Some(failure) = task_failure(joined) {
                    progress.failure.get_or_insert(failure);
                }
            }
        })
        .await;
        if joined.is_err() {
            tasks.abort_all();
            report::warn("some connections did not close in time");
        }
    }
}
