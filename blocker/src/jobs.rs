//! Background work that must never pile up: at most one job runs and at most one waits. Asking
//! for work while a job runs merges the request into the waiting one, so a flood of triggers
//! (files written, timers, signals) costs at most one more job.

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
}
