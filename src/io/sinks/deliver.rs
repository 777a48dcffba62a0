//! Handing a stream's records to the outside world, complete time by complete time.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use timely::ExchangeData;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;

use crate::dataflow::gather::GatherByTime;
use crate::dataflow::model::TimeMs;

/// Delivers a stream to one place, in time order.
pub trait DeliverInOrder<T> {
    /// Gathers the stream on worker 0 and calls `deliver` once per timely time, in time order,
    /// with all of that time's records, as soon as the frontier has passed it. The order of
    /// records within a time is not defined (sort them where it matters).
    fn deliver_in_order<F>(self, name: &str, deliver: F)
    where
        F: FnMut(TimeMs, Vec<T>) + 'static;
}

impl<T: ExchangeData> DeliverInOrder<T> for Stream<'_, TimeMs, Vec<T>> {
    fn deliver_in_order<F>(self, name: &str, mut deliver: F)
    where
        F: FnMut(TimeMs, Vec<T>) + 'static,
    {
        let mut pending: GatherByTime<(), Vec<T>, ()> = GatherByTime::default();
        self.sink(Exchange::new(|_: &T| 0), name, move |(input, frontier)| {
            input.for_each(|cap, data| {
                if let Some(&time) = cap.least() {
                    pending.at(time, || ()).0.append(data);
                }
            });
            while let Some((time, (), records, ())) = pending.next_ready(&[frontier]) {
                deliver(time, records);
            }
        });
    }
}

/// A target that delivering operators and others share: a worker's own
/// (`Rc<RefCell<_>>`), or one other threads read too (`Arc<Mutex<_>>`, the dashboard's).
pub trait SharedTarget<S>: Clone + 'static {
    /// Runs `f` on the target.
    fn with(&self, f: impl FnOnce(&mut S));
}

impl<S: 'static> SharedTarget<S> for Rc<RefCell<S>> {
    fn with(&self, f: impl FnOnce(&mut S)) {
        f(&mut self.borrow_mut());
    }
}

impl<S: 'static> SharedTarget<S> for Arc<Mutex<S>> {
    fn with(&self, f: impl FnOnce(&mut S)) {
        f(&mut self.lock().expect("not poisoned"));
    }
}

/// A `deliver` function that hands each time's records to `apply` on a shared target, if this
/// worker has one (only the worker that records go to needs it).
pub fn to_shared<P, S, T>(
    target: &Option<P>,
    apply: fn(&mut S, Vec<T>),
) -> impl FnMut(TimeMs, Vec<T>) + 'static
where
    P: SharedTarget<S>,
    S: 'static,
    T: 'static,
{
    let target = target.clone();
    move |_, records| {
        if let Some(target) = &target {
            target.with(|s| apply(s, records));
        }
    }
}
