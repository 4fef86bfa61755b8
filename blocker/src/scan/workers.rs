//! Spreading independent pieces of work over every CPU.

use std::{
    num::NonZeroUsize,
    sync::atomic::{AtomicUsize, Ordering},
    thread,
};

/// `work` applied to every item, on as many threads as there are CPUs, the calling thread being
/// one of them. Each thread takes the next unclaimed item, so a few large files do not hold up a
/// fixed share of the rest, and keeps its own `state`, made by `new_state`. The results are in
/// the order of `items`.
pub fn map_in_parallel<T, S, R>(
    items: &[T],
    new_state: impl Fn() -> S + Sync,
    work: impl Fn(&mut S, &T) -> R + Sync,
) -> Vec<R>
where
    T: Sync,
    R: Send,
{
    let threads = thread::available_parallelism()
        .map_or(1, NonZeroUsize::get)
        .min(items.len());
    let next = AtomicUsize::new(0);
    let run_worker = || {
        let mut state = new_state();
        let mut results = Vec::new();
        loop {
            let index = next.fetch_add(1, Ordering::Relaxed);
            let Some(item) = items.get(index) else {
                break results;
            };
            results.push((index, work(&mut state, item)));
        }
    };
    let mut results = thread::scope(|scope| {
        // A thread that cannot be started leaves its share to the others: the calling thread
        // alone finishes everything.
        let helpers: Vec<_> = (1..threads)
            .filter_map(|_| {
                thread::Builder::new()
                    .name("blocker-scan".to_owned())
                    .spawn_scoped(scope, run_worker)
                    .ok()
            })
            .collect();
        let mut results = run_worker();
        for helper in helpers {
            results.extend(
                helper
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            );
        }
        results
    });
    results.sort_unstable_by_key(|(index, _)| *index);
    results.into_iter().map(|(_, result)| result).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn keeps_the_order_of_the_items() {
        let items: Vec<u64> = (0..1000).collect();
        let squares = map_in_parallel(&items, || (), |(), item| item * item);
        assert_eq!(
            squares,
            items.iter().map(|item| item * item).collect::<Vec<_>>()
        );
        assert!(map_in_parallel(&[] as &[u64], || (), |(), item| *item).is_empty());
    }

    #[test]
    fn each_item_is_done_once_and_each_thread_has_its_own_state() {
        let states_made = Mutex::new(0);
        let items = vec![(); 100];
        let done = map_in_parallel(
            &items,
            || *states_made.lock().unwrap() += 1,
            |(), ()| thread::current().id(),
        );
        assert_eq!(done.len(), items.len());
        let threads: std::collections::HashSet<_> = done.into_iter().collect();
        assert!(threads.len() <= *states_made.lock().unwrap());
    }
}
