//! A bounded queue in front of one sink, and the thread that empties it into the sink. Pushing
//! never waits for the sink: when the queue is full the record is dropped and counted, and the
//! count is written into the sink itself once it has caught up, where the gap is.

use std::{
    collections::VecDeque,
    sync::{Arc, Condvar, Mutex, MutexGuard},
    time::Instant,
};

use crate::events::{self, Record};

/// Somewhere records are written, one at a time, on the queue's own thread.
pub trait Sink: Send + 'static {
    fn write(&mut self, record: &Record) -> std::io::Result<()>;
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
}

#[derive(Default)]
struct State {
    records: VecDeque<Arc<Record>>,
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
    pub fn start(name: &'static str, sink: impl Sink, capacity: usize) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            finished: Condvar::new(),
            idle: Condvar::new(),
            capacity,
        });
        let writer = Writer {
            name,
            sink,
            shared: shared.clone(),
            failing: false,
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

    /// Queues `record`, or drops and counts it if the queue is full. Never waits for the sink.
    pub fn push(&self, record: Arc<Record>) {
        let mut state = self.shared.lock();
        if state.closed {
            return;
        }
        if state.records.len() < self.shared.capacity {
            // The writer waits only for an empty queue; waking it costs a system call, which
            // would otherwise be paid per record.
            let writer_may_wait = state.records.is_empty();
            state.records.push_back(record);
            drop(state);
            if writer_may_wait {
                self.shared.work.notify_one();
            }
            return;
        }
        state.dropped_total += 1;
        state.dropped_unreported += 1;
        let first_of_run = !std::mem::replace(&mut state.falling_behind, true);
        drop(state);
        if first_of_run {
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
    pub fn close_with(&self, last: Arc<Record>) {
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
}

impl<S: Sink> Writer<S> {
    fn run(mut self) {
        let mut batch = VecDeque::new();
        while self.take_queued(&mut batch) {
            let mut failed = 0;
            let mut last_written = false;
            for record in batch.drain(..) {
                last_written = self.write(&record);
                failed += u64::from(!last_written);
            }
            let mut state = self.shared.lock();
            state.writing = 0;
            if state.records.is_empty() && std::mem::take(&mut state.idle_wanted) {
                self.shared.idle.notify_all();
            }
            state.dropped_total += failed;
            state.dropped_unreported += failed;
            let caught_up = last_written
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
    fn take_queued(&self, batch: &mut VecDeque<Arc<Record>>) -> bool {
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

    /// Writes `record`; logs the first failure of a run and the recovery after it.
    fn write(&mut self, record: &Record) -> bool {
        match self.sink.write(record) {
            Ok(()) => {
                if std::mem::take(&mut self.failing) {
                    log::info!("the {} sink works again", self.name);
                }
                true
            }
            Err(error) => {
                if !std::mem::replace(&mut self.failing, true) {
                    log::error!(
                        "the {} sink failed ({error}); its records are dropped and counted until \
                         it works again (enforcement is not affected)",
                        self.name
                    );
                }
                false
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
        if self.sink.write(&report).is_err() {
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
        fn write(&mut self, record: &Record) -> std::io::Result<()> {
            self.go.recv().map_err(std::io::Error::other)?;
            let line = serde_json::to_string(record).expect("records serialize");
            self.written.send(line).map_err(std::io::Error::other)
        }
    }

    fn reloaded(rules: usize) -> Arc<Record> {
        Arc::new(Record::Reloaded {
            time: events::now_rfc3339(),
            policies: vec![],
            rules,
            entries: 0,
        })
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
        queue.push(reloaded(0));
        wait_until_taken(&queue);
        for rules in 1..=5 {
            queue.push(reloaded(rules));
        }
        assert_eq!(
            queue.dropped(),
            3,
            "records 3, 4 and 5 found the queue full"
        );

        let mut lines = Vec::new();
        for _ in 0..4 {
            go.send(()).unwrap();
            lines.push(written.recv().unwrap());
        }
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
        queue.push(reloaded(6));
        go.send(()).unwrap();
        let line: serde_json::Value = serde_json::from_str(&written.recv().unwrap()).unwrap();
        assert_eq!(line["rules"], 6);
        assert_eq!(queue.dropped(), 3);
    }

    #[test]
    fn closing_writes_the_last_record_even_when_full_and_gives_up_at_the_deadline() {
        let (queue, go, written) = gated_queue(1);
        queue.push(reloaded(0));
        wait_until_taken(&queue);
        queue.push(reloaded(1));
        queue.close_with(reloaded(2));
        queue.push(reloaded(3));
        assert_eq!(
            queue.wait_until_written(Instant::now()),
            3,
            "one in the sink, two queued"
        );
        for _ in 0..3 {
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
        queue.push(reloaded(0));
        queue.push(reloaded(1));
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

    /// Fails every write until told otherwise.
    struct Flaky {
        failures_left: usize,
        written: SyncSender<String>,
    }

    impl Sink for Flaky {
        fn write(&mut self, record: &Record) -> std::io::Result<()> {
            if self.failures_left > 0 {
                self.failures_left -= 1;
                return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
            }
            let line = serde_json::to_string(record).expect("records serialize");
            self.written.send(line).map_err(std::io::Error::other)
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
        );
        for rules in 0..3 {
            queue.push(reloaded(rules));
        }
        let first: serde_json::Value = serde_json::from_str(&written.recv().unwrap()).unwrap();
        assert_eq!(first["rules"], 2);
        let report: serde_json::Value = serde_json::from_str(&written.recv().unwrap()).unwrap();
        assert_eq!(report["kind"], "records_dropped");
        assert_eq!(report["dropped"], 2);
        assert_eq!(queue.dropped(), 2);
    }
}
