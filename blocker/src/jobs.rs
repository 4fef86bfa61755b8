//! Background work that must never pile up: at most one job runs and at most one waits. Asking
//! for work while a job runs merges the request into the waiting one, so a flood of triggers
//! (files written, timers, signals) costs at most one more job. [`Slot`] decides when a job
//! starts; [`Jobs`] also runs it off the event loop and hands its result back.

use tokio::sync::mpsc;

/// A request that can stand in for itself and a later one.
pub trait Merge {
    fn merge(self, later: Self) -> Self;
}

#[derive(Debug)]
pub struct Slot<R> {
    running: bool,
    waiting: Option<R>,
}

impl<R: Merge> Default for Slot<R> {
    fn default() -> Self {
        Self {
            running: false,
            waiting: None,
        }
    }
}

impl<R: Merge> Slot<R> {
    /// Asks for `request`; returns it if it is to start now (no job runs), else keeps it
    /// waiting, merged with whatever already waits.
    #[must_use]
    pub fn request(&mut self, request: R) -> Option<R> {
        if !self.running {
            self.running = true;
            return Some(request);
        }
        self.waiting = Some(match self.waiting.take() {
            Some(waiting) => waiting.merge(request),
            None => request,
        });
        None
    }

    /// The running job is done; returns the waiting request, which is to start now.
    #[must_use]
    pub fn finished(&mut self) -> Option<R> {
        let next = self.waiting.take();
        self.running = next.is_some();
        next
    }
}

/// Background jobs run on blocking threads, one at a time, with at most one request waiting.
pub struct Jobs<R, D> {
    slot: Slot<R>,
    done: mpsc::Sender<D>,
    results: mpsc::Receiver<D>,
}

impl<R: Merge, D: Send + 'static> Default for Jobs<R, D> {
    fn default() -> Self {
        // One job runs at a time: its result is the only one ever in flight.
        let (done, results) = mpsc::channel(1);
        Self {
            slot: Slot::default(),
            done,
            results,
        }
    }
}

impl<R: Merge, D: Send + 'static> Jobs<R, D> {
    /// Asks for `request`; returns it if it is to start now (see [`Slot::request`]): the caller
    /// then [`Jobs::run`]s it, from its state as it is now.
    #[must_use]
    pub fn request(&mut self, request: R) -> Option<R> {
        self.slot.request(request)
    }

    /// Runs the job just started on a blocking thread; its result comes from [`Jobs::done`].
    pub fn run(&self, job: impl FnOnce() -> D + Send + 'static) {
        let done = self.done.clone();
        tokio::task::spawn_blocking(move || {
            // Fails only once the receiver, and with it whoever asked, is gone.
            let _ = done.blocking_send(job());
        });
    }

    /// The running job's result, when it is done; pending while none runs.
    pub async fn done(&mut self) -> Option<D> {
        self.results.recv().await
    }

    /// The result of the running job was handled; returns the waiting request, which is to
    /// start now.
    #[must_use]
    pub fn finished(&mut self) -> Option<R> {
        self.slot.finished()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Eq)]
    struct Files(Vec<u32>);

    impl Merge for Files {
        fn merge(mut self, later: Self) -> Self {
            self.0.extend(later.0);
            self
        }
    }

    #[test]
    fn one_job_runs_and_requests_meanwhile_wait_as_one() {
        let mut slot = Slot::default();
        assert_eq!(slot.request(Files(vec![1])), Some(Files(vec![1])));
        for file in 2..1000 {
            assert_eq!(slot.request(Files(vec![file])), None);
        }
        assert_eq!(slot.finished(), Some(Files((2..1000).collect())));
        assert_eq!(slot.request(Files(vec![1000])), None, "the merged job runs");
        assert_eq!(slot.finished(), Some(Files(vec![1000])));
        assert_eq!(slot.finished(), None);
        assert_eq!(slot.request(Files(vec![1001])), Some(Files(vec![1001])));
    }

    #[test]
    fn jobs_hand_back_each_result_and_then_the_merged_waiting_request() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut jobs = Jobs::<Files, Vec<u32>>::default();
            let first = jobs.request(Files(vec![1])).expect("nothing runs");
            jobs.run(move || first.0);
            assert_eq!(jobs.request(Files(vec![2])), None);
            assert_eq!(jobs.request(Files(vec![3])), None);
            assert_eq!(jobs.done().await, Some(vec![1]));
            let next = jobs.finished().expect("a request waits");
            jobs.run(move || next.0);
            assert_eq!(jobs.done().await, Some(vec![2, 3]));
            assert_eq!(jobs.finished(), None);
        });
    }
}
