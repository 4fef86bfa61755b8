//! A bounded queue in front of one sink, and the thread that empties it into the sink. Pushing
//! never waits for the sink: when the queue is full the record is dropped and counted, and the
//! count is written into the sink itself once it has caught up, where the gap is.

use std::{
    collections::VecDeque,
    io,
    sync::{Arc, Condvar, Mutex, MutexGuard},
    time::Instant,
};

use super::{Emitted, Encoding};
use crate::events::{self, Record};

/// Somewhere records are written, on the queue's own thread. The writer hands over everything
/// queued since its last write at once, so that a sink can write a burst with one system call.
pub trait Sink: Send + 'static {
    /// The sink writes the daemon's log itself: when it falls behind, the log is what is stuck,
    /// and a warning written into it from the event loop would wait there too.
    const WRITES_THE_LOG: bool = false;

    /// Writes `records` in order.
    fn write(&mut self, records: &[Arc<Emitted>]) -> Result<(), Unwritten>;
}

/// A failed write: the first `written` records were written, the rest were not.
#[derive(Debug)]
pub struct Unwritten {
    pub written: usize,
    pub error: io::Error,
}

impl Unwritten {
    /// A failure before anything was written.
    pub fn nothing(error: io::Error) -> Self {
        Self { written: 0, error }
    }
}

pub struct SinkQueue {
    name: &'static str,
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when a record is queued or the queue is closed.
    work: Condvar,
    /// Signalled when the writer has written the last record and ended.
    finished: Condvar,
    /// Signalled when the writer has written every queued record.
    idle: Condvar,
    capacity: usize,
    /// [`Sink::WRITES_THE_LOG`] of the sink.
    writes_the_log: bool,
}

#[derive(Default)]
struct State {
    records: VecDeque<Arc<Emitted>>,
    dropped_total: u64,
    dropped_unreported: u64,
    /// Set at the first drop for a full queue, so that only the first of a run is logged.
    falling_behind: bool,
    closed: bool,
    finished: bool,
    /// Records the writer took from the queue and has not finished writing.
    writing: usize,
    /// Someone waits in [`SinkQueue::wait_until_idle`].
    idle_wanted: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A writer that panicked left consistent counters: go on with them.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl SinkQueue {
    /// Starts the thread writing into `sink`; at most `capacity` records wait for it.
    /// `encoding` is that of the records it reports its own gaps in.
    pub fn start<S: Sink>(
        name: &'static str,
        sink: S,
        capacity: usize,
        encoding: Encoding,
    ) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            finished: Condvar::new(),
            idle: Condvar::new(),
            capacity,
            writes_the_log: S::WRITES_THE_LOG,
        });
        let writer = Writer {
            name,
            sink,
            shared: shared.clone(),
            failing: false,
            encoding,
        };
        std::thread::Builder::new()
            .name(format!("sink-{name}"))
            .spawn(move || writer.run())
            .expect("starting a sink thread");
        Self { name, shared }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Queues `records`, or drops and counts those that do not fit. Never waits for the sink,
    /// and wakes its writer at most once for the lot.
    pub fn push_all(&self, records: &[Arc<Emitted>]) {
        let mut state = self.shared.lock();
        if state.closed {
            return;
        }
        // The writer waits only for an empty queue; waking it costs a system call, which would
        // otherwise be paid per record.
        let writer_may_wait = state.records.is_empty();
        let room = self.shared.capacity.saturating_sub(state.records.len());
        let (fitting, dropped) = records.split_at(room.min(records.len()));
        state.records.extend(fitting.iter().cloned());
        let first_of_run = if dropped.is_empty() {
            false
        } else {
            state.dropped_total += dropped.len() as u64;
            state.dropped_unreported += dropped.len() as u64;
            !std::mem::replace(&mut state.falling_behind, true)
        };
        drop(state);
        if writer_may_wait && !fitting.is_empty() {
            self.shared.work.notify_one();
        }
        // The log's own sink reports its gap when it catches up (`report_drops`), from its
        // writer's thread.
        if first_of_run && !self.shared.writes_the_log {
            log::warn!(
                "the {} sink is not keeping up: its records are dropped and counted until it \
                 catches up (enforcement is not affected)",
                self.name
            );
        }
    }

    /// Records this sink never got: dropped from a full queue or failed to write.
    pub fn dropped(&self) -> u64 {
        self.shared.lock().dropped_total
    }

    /// Queues `last` even if the queue is full, takes no more records, and lets the writer
    /// finish what is queued.
    pub fn close_with(&self, last: Arc<Emitted>) {
        let mut state = self.shared.lock();
        state.records.push_back(last);
        state.closed = true;
        drop(state);
        self.shared.work.notify_one();
    }

    /// Waits until the writer has written everything queued so far (`blocker feed-events`
    /// paces its feed with this, so that it measures what the sinks carry, not what they drop).
    pub fn wait_until_idle(&self) {
        let mut state = self.shared.lock();
        while state.writing > 0 || !state.records.is_empty() {
            state.idle_wanted = true;
            state = self
                .shared
                .idle
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// Waits until the writer has written everything queued, or until `deadline`. Returns the
    /// number of records still unwritten (0 when it finished).
    pub fn wait_until_written(&self, deadline: Instant) -> usize {
        let mut state = self.shared.lock();
        while !state.finished {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                // Those being written are not in the queue any more, but may be unwritten too.
                return state.records.len() + state.writing;
            }
            state = self
                .shared
                .finished
                .wait_timeout(state, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
        0
    }
}

struct Writer<S> {
    name: &'static str,
    sink: S,
    shared: Arc<Shared>,
    /// The last write failed; the error was logged once for the whole run of failures.
    failing: bool,
    encoding: Encoding,
}

impl<S: Sink> Writer<S> {
    fn run(mut self) {
        let mut batch = VecDeque::new();
        while self.take_queued(&mut batch) {
            let written = self.write(batch.make_contiguous());
            let failed = (batch.len() - written) as u64;
            batch.clear();
            let mut state = self.shared.lock();
            state.writing = 0;
            if state.records.is_empty() && std::mem::take(&mut state.idle_wanted) {
                self.shared.idle.notify_all();
            }
            state.dropped_total += failed;
            state.dropped_unreported += failed;
            let caught_up = failed == 0
                && !state.closed
                && state.records.is_empty()
                && state.dropped_unreported > 0;
            if caught_up {
                let (dropped, total) = (state.dropped_unreported, state.dropped_total);
                drop(state);
                self.report_drops(dropped, total);
            }
        }
        self.shared.lock().finished = true;
        self.shared.finished.notify_all();
    }

    /// Moves every queued record into `batch` (empty), waiting for one if none is; `false` once
    /// the queue is closed and empty. Taking them all at once keeps the writer off the lock the
    /// event loop pushes under, and out of its way, while it writes.
    fn take_queued(&self, batch: &mut VecDeque<Arc<Emitted>>) -> bool {
        let mut state = self.shared.lock();
        loop {
            if !state.records.is_empty() {
                std::mem::swap(&mut state.records, batch);
                state.writing = batch.len();
                return true;
            }
            if state.closed {
                return false;
            }
            state = self
                .shared
                .work
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// Writes `records`; returns how many were written, and logs the first failure of a run
    /// and the recovery after it.
    fn write(&mut self, records: &[Arc<Emitted>]) -> usize {
        match self.sink.write(records) {
            Ok(()) => {
                if std::mem::take(&mut self.failing) {
                    log::info!("the {} sink works again", self.name);
                }
                records.len()
            }
            Err(Unwritten { written, error }) => {
                if !std::mem::replace(&mut self.failing, true) {
                    log::error!(
                        "the {} sink failed ({error}); its records are dropped and counted until \
                         it works again (enforcement is not affected)",
                        self.name
                    );
                }
                written
            }
        }
    }

    /// Writes a `records_dropped` record into the sink, where its gap is.
    fn report_drops(&mut self, dropped: u64, total: u64) {
        let report = Record::RecordsDropped {
            time: events::now_rfc3339(),
            sink: self.name,
            dropped,
            total,
        };
        if self
            .sink
            .write(&[Emitted::new(report, &self.encoding)])
            .is_err()
        {
            // Not reported yet: the next catch-up reports these too.
            return;
        }
        let mut state = self.shared.lock();
        state.dropped_unreported -= dropped;
        state.falling_behind = false;
        drop(state);
        log::warn!(
            "the {} sink caught up: {dropped} records never reached it ({total} in total)",
            self.name
        );
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::mpsc::{self, Receiver, SyncSender},
        time::Duration,
    };

    use super::*;

    /// A sink that blocks on every write until the test lets it go on, and tells what it wrote.
    struct Gated {
        go: Receiver<()>,
        written: SyncSender<String>,
    }

    impl Sink for Gated {
        fn write(&mut self, records: &[Arc<Emitted>]) -> Result<(), Unwritten> {
            self.go.recv().map_err(other)?;
            for record in records {
                self.written.send(line(record)).map_err(other)?;
            }
            Ok(())
        }
    }

    fn other(error: impl std::error::Error + Send + Sync + 'static) -> Unwritten {
        Unwritten::nothing(io::Error::other(error))
    }

    fn line(record: &Emitted) -> String {
        String::from_utf8(record.json_line.to_vec()).unwrap()
    }

    fn reloaded(rules: usize) -> Arc<Emitted> {
        Emitted::new(
            Record::Reloaded {
                time: events::now_rfc3339(),
                policies: vec![],
                rules,
                entries: 0,
            },
            &Encoding::Blocker,
        )
    }

    fn push(queue: &SinkQueue, record: Arc<Emitted>) {
        queue.push_all(&[record]);
    }

    fn gated_queue(capacity: usize) -> (SinkQueue, SyncSender<()>, Receiver<String>) {
        let (go, gate) = mpsc::sync_channel(0);
        let (written_sender, written) = mpsc::sync_channel(100);
        let queue = SinkQueue::start(
            "gated",
            Gated {
                go: gate,
                written: written_sender,
            },
            capacity,
            Encoding::Blocker,
        );
        (queue, go, written)
    }

    /// Until the writer has taken every queued record (and blocks in the gated sink).
    fn wait_until_taken(queue: &SinkQueue) {
        while !queue.shared.lock().records.is_empty() {
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_blocking_and_reports_on_catching_up() {
        let (queue, go, written) = gated_queue(2);
        // The writer takes the first record and blocks in the sink; two more fill the queue.
        push(&queue, reloaded(0));
        wait_until_taken(&queue);
        queue.push_all(&(1..=5).map(reloaded).collect::<Vec<_>>());
        assert_eq!(
            queue.dropped(),
            3,
            "records 3, 4 and 5 found the queue full"
        );

        // Three writes: the first record, the two queued behind it, the report.
        for _ in 0..3 {
            go.send(()).unwrap();
        }
        let lines: Vec<String> = (0..4).map(|_| written.recv().unwrap()).collect();
        let rules: Vec<_> = lines[..3]
            .iter()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()["rules"].clone())
            .collect();
        assert_eq!(rules, [0, 1, 2]);
        let report: serde_json::Value = serde_json::from_str(&lines[3]).unwrap();
        assert_eq!(report["kind"], "records_dropped");
        assert_eq!(report["sink"], "gated");
        assert_eq!(report["dropped"], 3);
        assert_eq!(report["total"], 3);

        // Caught up: new records are queued again.
        push(&queue, reloaded(6));
        go.send(()).unwrap();
        let line: serde_json::Value = serde_json::from_str(&written.recv().unwrap()).unwrap();
        assert_eq!(line["rules"], 6);
        assert_eq!(queue.dropped(), 3);
    }

    #[test]
    fn closing_writes_the_last_record_even_when_full_and_gives_up_at_the_deadline() {
        let (queue, go, written) = gated_queue(1);
        push(&queue, reloaded(0));
        wait_until_taken(&queue);
        push(&queue, reloaded(1));
        queue.close_with(reloaded(2));
        push(&queue, reloaded(3));
        assert_eq!(
            queue.wait_until_written(Instant::now()),
            3,
            "one in the sink, two queued"
        );
        // Two writes: the first record, then the two queued behind it.
        for _ in 0..2 {
            go.send(()).unwrap();
        }
        assert_eq!(
            queue.wait_until_written(Instant::now() + Duration::from_secs(10)),
            0
        );
        let rules: Vec<_> = written
            .try_iter()
            .map(|line| serde_json::from_str::<serde_json::Value>(&line).unwrap()["rules"].clone())
            .collect();
        assert_eq!(rules, [0, 1, 2], "nothing is taken after closing");
    }

    #[test]
    fn idle_means_every_queued_record_written() {
        let (queue, go, written) = gated_queue(4);
        let queue = Arc::new(queue);
        push(&queue, reloaded(0));
        wait_until_taken(&queue);
        push(&queue, reloaded(1));
        let (idle_sender, idle) = mpsc::channel();
        let waiting = queue.clone();
        std::thread::spawn(move || {
            waiting.wait_until_idle();
            idle_sender.send(()).unwrap();
        });
        go.send(()).unwrap();
        written.recv().unwrap();
        assert!(
            idle.recv_timeout(Duration::from_millis(50)).is_err(),
            "one record is still queued"
        );
        go.send(()).unwrap();
        written.recv().unwrap();
        idle.recv_timeout(Duration::from_secs(10))
            .expect("idle once both are written");
    }

    /// Fails every write until told otherwise, after writing the first record of each.
    struct Flaky {
        failures_left: usize,
        written: SyncSender<String>,
    }

    impl Sink for Flaky {
        fn write(&mut self, records: &[Arc<Emitted>]) -> Result<(), Unwritten> {
            if self.failures_left > 0 {
                self.failures_left -= 1;
                self.written.send(line(&records[0])).map_err(other)?;
                return Err(Unwritten {
                    written: 1,
                    error: io::Error::from_raw_os_error(libc::ENOSPC),
                });
            }
            for record in records {
                self.written.send(line(record)).map_err(other)?;
            }
            Ok(())
        }
    }

    #[test]
    fn failed_writes_are_counted_and_reported_when_writing_works_again() {
        let (written_sender, written) = mpsc::sync_channel(100);
        let queue = SinkQueue::start(
            "flaky",
            Flaky {
                failures_left: 2,
                written: written_sender,
            },
            10,
            Encoding::Blocker,
        );
        // Two failing writes of two records each, of which the first gets written.
        for rules in 0..2 {
            queue.push_all(&[reloaded(rules * 2), reloaded(rules * 2 + 1)]);
            queue.wait_until_idle();
        }
        push(&queue, reloaded(4));
        let lines: Vec<serde_json::Value> = (0..4)
            .map(|_| serde_json::from_str(&written.recv().unwrap()).unwrap())
            .collect();
        let rules: Vec<_> = lines[..3]
            .iter()
            .map(|line| line["rules"].clone())
            .collect();
        assert_eq!(rules, [0, 2, 4]);
        assert_eq!(lines[3]["kind"], "records_dropped");
        assert_eq!(lines[3]["dropped"], 2);
        assert_eq!(queue.dropped(), 2);
    }
}
