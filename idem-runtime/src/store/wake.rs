//! The wake registry of the shared stores: the calls of this process that wait on an in-flight
//! call, by tag, and what wakes them.
//!
//! A tag is what a completion announces: a Redis channel (named like the key) or a PostgreSQL
//! notification's payload (a hash of the key). A waiter registers on its tag and holds a
//! [`Ticket`] while it waits; every waiter of a tag shares one [`Notify`], and the tag is
//! forgotten when its last waiter leaves. The backend delivers the announcements (a Redis
//! subscriber, a PostgreSQL listener) and wakes tags through [`Tags`]; it hooks into the
//! registry through [`Hooks`]: what it keeps per tag (whether a channel is subscribed) and what
//! it does when the last waiter of a tag leaves (unsubscribe).
//!
//! Only waiting touches the registry: claims, replays and completions never do.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// The waiters of one store, by tag; `S` is what the backend keeps per tag.
pub(super) struct Registry<S> {
    tags: Mutex<Tags<S>>,
}

/// The registry's content, under its lock: what the delivery of announcements and the waiters
/// share.
pub(super) struct Tags<S> {
    tags: HashMap<String, Waiting<S>>,
    /// Which delivery connection is current: a backend that replaces its connection bumps it,
    /// so that late deliveries of the old one are ignored.
    pub(super) generation: u64,
}

/// The waiters of one tag.
pub(super) struct Waiting<S> {
    waiters: usize,
    wake: Arc<Notify>,
    /// What the backend keeps for this tag.
    pub(super) state: S,
}

/// How a backend plugs into the registry.
pub(super) trait Hooks: Send + Sync + Sized + 'static {
    /// What the backend keeps per tag.
    type State: Default + Send;

    /// The registry of the backend's waiters.
    fn registry(&self) -> &Registry<Self::State>;

    /// Whether a tag whose last waiter left stays registered until
    /// [`last_left`](Hooks::last_left) forgets it (a subscribed channel, unsubscribed first).
    fn keeps(_state: &Self::State) -> bool {
        false
    }

    /// The last waiter of `tag` left and [`keeps`](Hooks::keeps) kept it; called without the
    /// registry's lock.
    fn last_left(self: &Arc<Self>, _tag: String) {}
}

/// A registry with nothing to hook in is its own: a tag is forgotten when its last waiter
/// leaves.
impl Hooks for Registry<()> {
    type State = ();

    fn registry(&self) -> &Registry<()> {
        self
    }
}

impl<S> Default for Registry<S> {
    fn default() -> Self {
        Registry {
            tags: Mutex::new(Tags {
                tags: HashMap::new(),
                generation: 0,
            }),
        }
    }
}

impl<S> Registry<S> {
    /// Its content, locked.
    pub(super) fn lock(&self) -> MutexGuard<'_, Tags<S>> {
        // Every change to the registry is complete before anything can panic, so a poisoned
        // lock still guards consistent data.
        self.tags
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<S: Default> Tags<S> {
    /// The waiters of `tag`, if any.
    pub(super) fn get(&self, tag: &str) -> Option<&Waiting<S>> {
        self.tags.get(tag)
    }

    /// The waiters of `tag`, if any, to change the backend's state.
    pub(super) fn get_mut(&mut self, tag: &str) -> Option<&mut Waiting<S>> {
        self.tags.get_mut(tag)
    }

    /// Forgets `tag`.
    pub(super) fn remove(&mut self, tag: &str) {
        self.tags.remove(tag);
    }

    /// Wakes the waiters of `tag`.
    pub(super) fn wake(&self, tag: &str) {
        if let Some(waiting) = self.tags.get(tag) {
            waiting.wake.notify_waiters();
        }
    }

    /// Wakes the waiters of every tag.
    pub(super) fn wake_all(&self) {
        self.wake_all_but(None);
    }

    /// Wakes the waiters of every tag but `spare`.
    pub(super) fn wake_all_but(&self, spare: Option<&str>) {
        for (tag, waiting) in &self.tags {
            if spare != Some(tag.as_str()) {
                waiting.wake.notify_waiters();
            }
        }
    }

    /// Resets the backend's state of every tag and forgets the tags no one waits on (kept
    /// by [`Hooks::keeps`]).
    pub(super) fn reset_states(&mut self) {
        self.tags.retain(|_, waiting| {
            waiting.state = S::default();
            waiting.waiters > 0
        });
    }
}

impl<S> Waiting<S> {
    /// How many waiters hold a ticket on this tag.
    pub(super) fn waiters(&self) -> usize {
        self.waiters
    }

    /// Wakes them.
    pub(super) fn wake(&self) {
        self.wake.notify_waiters();
    }
}

/// One waiter's registration on a tag; dropping it forgets the tag when no one else waits
/// (or hands it to [`Hooks::last_left`]).
pub(super) struct Ticket<H: Hooks> {
    hooks: Arc<H>,
    tag: String,
    wake: Arc<Notify>,
}

impl<H: Hooks> Ticket<H> {
    /// Registers a waiter on `tag`. Enable a `notified()` of [`wake`](Ticket::wake) before
    /// looking at the key, so that a completion after the look is not missed.
    pub(super) fn register(hooks: &Arc<H>, tag: String) -> Ticket<H> {
        let wake = {
            let mut tags = hooks.registry().lock();
            let waiting = tags.tags.entry(tag.clone()).or_insert_with(|| Waiting {
                waiters: 0,
                wake: Arc::default(),
                state: H::State::default(),
            });
            waiting.waiters += 1;
            waiting.wake.clone()
        };
        Ticket {
            hooks: hooks.clone(),
            tag,
            wake,
        }
    }

    /// What wakes this waiter.
    pub(super) fn wake(&self) -> &Notify {
        &self.wake
    }

    /// The tag it waits on.
    pub(super) fn tag(&self) -> &str {
        &self.tag
    }
}

impl<H: Hooks> Drop for Ticket<H> {
    fn drop(&mut self) {
        let mut tags = self.hooks.registry().lock();
        let Some(waiting) = tags.tags.get_mut(&self.tag) else {
            return;
        };
        waiting.waiters -= 1;
        if waiting.waiters > 0 {
            return;
        }
        if !H::keeps(&waiting.state) {
            tags.tags.remove(&self.tag);
            return;
        }
        drop(tags);
        self.hooks.last_left(std::mem::take(&mut self.tag));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_lives_while_someone_waits_on_it() {
        let registry = Arc::new(Registry::<()>::default());
        let first = Ticket::register(&registry, "t".to_owned());
        let second = Ticket::register(&registry, "t".to_owned());
        assert_eq!(registry.lock().get("t").map(Waiting::waiters), Some(2));
        drop(first);
        assert_eq!(registry.lock().get("t").map(Waiting::waiters), Some(1));
        drop(second);
        assert!(registry.lock().get("t").is_none());
    }

    /// A backend that keeps the tags marked `true` and notes which ones it is handed.
    #[derive(Default)]
    struct Keeping {
        registry: Registry<bool>,
        handed: Mutex<Vec<String>>,
    }

    impl Hooks for Keeping {
        type State = bool;

        fn registry(&self) -> &Registry<bool> {
            &self.registry
        }

        fn keeps(kept: &bool) -> bool {
            *kept
        }

        fn last_left(self: &Arc<Self>, tag: String) {
            self.handed.lock().unwrap().push(tag);
        }
    }

    #[test]
    fn a_kept_tag_is_handed_to_the_backend_when_its_last_waiter_leaves() {
        let backend = Arc::new(Keeping::default());
        let kept = Ticket::register(&backend, "kept".to_owned());
        let plain = Ticket::register(&backend, "plain".to_owned());
        backend.registry.lock().get_mut("kept").unwrap().state = true;
        drop(kept);
        drop(plain);
        assert_eq!(*backend.handed.lock().unwrap(), ["kept"]);
        let mut tags = backend.registry.lock();
        assert_eq!(tags.get("kept").map(Waiting::waiters), Some(0));
        assert!(tags.get("plain").is_none());
        tags.reset_states();
        assert!(
            tags.get("kept").is_none(),
            "a reset forgets the tags no one waits on"
        );
    }

    #[tokio::test]
    async fn waking_a_tag_wakes_its_waiters_only() {
        let registry = Arc::new(Registry::<()>::default());
        let a = Ticket::register(&registry, "a".to_owned());
        let b = Ticket::register(&registry, "b".to_owned());
        let mut woken_a = std::pin::pin!(a.wake().notified());
        let mut woken_b = std::pin::pin!(b.wake().notified());
        woken_a.as_mut().enable();
        woken_b.as_mut().enable();
        registry.lock().wake("a");
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        assert!(woken_a.as_mut().poll(&mut cx).is_ready());
        assert!(woken_b.as_mut().poll(&mut cx).is_pending());
    }
}
