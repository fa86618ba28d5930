//! Bounded caches that take memory for what they hold, not for what they may hold.
//!
//! Owns one constructor. `lru::LruCache::new(cap)` reserves its hash table for all `cap`
//! entries at once: 65,536 entries are a 2.2 MiB table, and as entries land at places
//! spread over all of it, a few thousand of them make every page of it resident. The
//! caches made here start empty and grow as entries come (the table doubles), with the
//! same bound. It must never hold state of its own.

use std::hash::Hash;
use std::num::NonZeroUsize;

use lru::LruCache;

/// A least-recently-used cache of at most `cap` entries (at least one) that allocates as
/// it fills.
pub fn lru<K: Hash + Eq, V>(cap: usize) -> LruCache<K, V> {
    let mut c = LruCache::unbounded();
    c.resize(NonZeroUsize::new(cap).unwrap_or(NonZeroUsize::MIN));
    c
}

#[cfg(test)]
mod tests {
    #[test]
    fn holds_at_most_its_bound_dropping_the_least_recently_used() {
        let mut c = super::lru::<u32, u32>(3);
        assert_eq!(c.cap().get(), 3);
        for i in 0..10 {
            c.put(i, i);
        }
        assert_eq!(c.len(), 3);
        assert_eq!(c.peek_lru(), Some((&7, &7)));
        let empty = super::lru::<u64, u64>(1 << 16);
        assert_eq!(empty.cap().get(), 1 << 16);
        assert!(empty.is_empty());
    }
}
