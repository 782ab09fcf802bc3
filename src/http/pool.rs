//! The shard's connection buffers, lent for a read and given back once the connection is idle.
//!
//! A keep-alive connection between requests holds no buffer (as nginx does): when its engine is
//! about to wait on the socket with nothing buffered, it hands its read and write buffers back
//! ([`crate::http::Connection::release_buffers`]), and takes them again for the next read. So
//! the memory of 15,000 idle connections is the sockets' and the tasks', not 20 KiB of buffers
//! each. The pool keeps a bounded number of free buffers ([`KEEP_FREE`]) so that the busy path
//! reuses them without the allocator; the rest are freed, and [`BufferPool::take_freed`] tells
//! housekeeping how much went back to the allocator since it last asked (see [`trim_allocator`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Size of a pooled read buffer: room for a request head and a read of 8 KiB after it.
pub const READ_BUFFER: usize = 16 * 1024;
/// Initial capacity of a pooled write buffer (it grows with the responses it holds).
pub const WRITE_BUFFER: usize = 4 * 1024;
/// A write buffer that grew past this (a large response) is freed rather than pooled.
const WRITE_KEEP_UP_TO: usize = 64 * 1024;
/// Free buffers of each kind a pool keeps: 256 x 16 KiB + 256 x 4 KiB, 5 MiB per shard at most,
/// enough that the busy path (at most one buffer per connection being served at that moment)
/// never reaches the allocator.
pub const KEEP_FREE: usize = 256;

#[derive(Default)]
struct Free {
    read: Vec<Vec<u8>>,
    write: Vec<Vec<u8>>,
}

/// One shard's pool of connection buffers. Shared by the shard's connections only (the lock is
/// uncontended: one thread uses it at a time).
#[derive(Default)]
pub struct BufferPool {
    free: Mutex<Free>,
    /// Read buffers held by connections now: the gauge that idle connections leave at 0.
    read_lent: AtomicU64,
    /// Write buffers held by connections now.
    write_lent: AtomicU64,
    /// Bytes of buffers freed (not kept) since [`BufferPool::take_freed`] last ran.
    freed: AtomicU64,
    /// The most connections open since the last trim ([`BufferPool::trim_due`]).
    open_peak: AtomicU64,
}

impl BufferPool {
    pub fn new() -> Self {
        BufferPool::default()
    }

    /// A read buffer of [`READ_BUFFER`] initialised bytes.
    pub fn take_read(&self) -> Vec<u8> {
        self.read_lent.fetch_add(1, Ordering::Relaxed);
        self.lock()
            .read
            .pop()
            .unwrap_or_else(|| vec![0; READ_BUFFER])
    }

    /// An empty write buffer.
    pub fn take_write(&self) -> Vec<u8> {
        self.write_lent.fetch_add(1, Ordering::Relaxed);
        self.lock()
            .write
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(WRITE_BUFFER))
    }

    /// Gives back a buffer from [`BufferPool::take_read`] (maybe grown for a large request).
    pub fn give_read(&self, buf: Vec<u8>) {
        self.read_lent.fetch_sub(1, Ordering::Relaxed);
        if buf.len() == READ_BUFFER {
            let mut free = self.lock();
            if free.read.len() < KEEP_FREE {
                free.read.push(buf);
                return;
            }
        }
        self.count_freed(buf.capacity() as u64);
    }

    /// Gives back a buffer from [`BufferPool::take_write`]; its content is dropped.
    pub fn give_write(&self, mut buf: Vec<u8>) {
        self.write_lent.fetch_sub(1, Ordering::Relaxed);
        if buf.capacity() <= WRITE_KEEP_UP_TO {
            buf.clear();
            let mut free = self.lock();
            if free.write.len() < KEEP_FREE {
                free.write.push(buf);
                return;
            }
        }
        self.count_freed(buf.capacity() as u64);
    }

    /// Counts `bytes` freed to the allocator toward the next trim ([`BufferPool::trim_due`]):
    /// the pool's own buffers, and memory a connection gives up elsewhere (glommio's receive
    /// buffer, when an idle connection settles).
    pub fn count_freed(&self, bytes: u64) {
        self.freed.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Read buffers held by connections now.
    pub fn read_lent(&self) -> u64 {
        self.read_lent.load(Ordering::Relaxed)
    }

    /// Write buffers held by connections now.
    pub fn write_lent(&self) -> u64 {
        self.write_lent.load(Ordering::Relaxed)
    }

    /// Bytes of buffers freed to the allocator since the last call.
    pub fn take_freed(&self) -> u64 {
        self.freed.swap(0, Ordering::Relaxed)
    }

    /// Frees the kept buffers beyond [`KEEP_AFTER_TRIM`] of each kind: called before the
    /// allocator is trimmed, once many connections closed, so that a burst of connections
    /// leaves no 5 MiB of spares behind it. The busy path takes new ones as it needs them.
    pub fn shed(&self) {
        let mut free = self.lock();
        free.read.truncate(KEEP_AFTER_TRIM);
        free.write.truncate(KEEP_AFTER_TRIM);
    }

    /// Whether the allocator should be trimmed now ([`trim_allocator`]), asked at each report
    /// with the shard's open connections: yes once [`TRIM_AFTER_FREED`] bytes of buffers were
    /// freed, or [`TRIM_AFTER_CLOSED`] connections closed, since the last yes (what each
    /// connection's task, socket and table entry held is freed with it).
    pub fn trim_due(&self, open: u64) -> bool {
        let peak = self.open_peak.fetch_max(open, Ordering::Relaxed).max(open);
        let closed = peak - open;
        if closed < TRIM_AFTER_CLOSED && self.freed.load(Ordering::Relaxed) < TRIM_AFTER_FREED {
            return false;
        }
        self.freed.store(0, Ordering::Relaxed);
        self.open_peak.store(open, Ordering::Relaxed);
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Free> {
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Free buffers of each kind a pool keeps after [`BufferPool::shed`].
pub const KEEP_AFTER_TRIM: usize = 16;
/// Closed connections past which housekeeping asks the allocator to give memory back.
pub const TRIM_AFTER_CLOSED: u64 = 1024;
/// Freed bytes past which housekeeping asks the allocator to give memory back to the system.
pub const TRIM_AFTER_FREED: u64 = 8 * 1024 * 1024;

/// Asks glibc's allocator to return its free memory to the system (`malloc_trim`): after many
/// connections closed, their buffers sit free in the allocator's heaps and arenas, where glibc
/// only returns the top of each heap by itself; `malloc_trim` also releases the free pages in the
/// middle (`MADV_DONTNEED`). It walks every arena under its lock (about a millisecond for
/// hundreds of MiB), so it runs only after [`TRIM_AFTER_FREED`] bytes were freed, from
/// housekeeping. No other allocator: glibc's, with this, returns what the connections held.
pub fn trim_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions; it only takes the allocator's own locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lent_buffers_are_counted_until_given_back_and_the_pool_keeps_a_bounded_number() {
        let pool = BufferPool::new();
        let reads: Vec<_> = (0..KEEP_FREE + 10).map(|_| pool.take_read()).collect();
        let write = pool.take_write();
        assert_eq!(pool.read_lent(), KEEP_FREE as u64 + 10);
        assert_eq!(pool.write_lent(), 1);
        for buf in reads {
            pool.give_read(buf);
        }
        pool.give_write(write);
        assert_eq!((pool.read_lent(), pool.write_lent()), (0, 0));
        assert_eq!(pool.lock().read.len(), KEEP_FREE);
        assert_eq!(pool.take_freed(), 10 * READ_BUFFER as u64);
        assert_eq!(pool.take_freed(), 0);
        pool.shed();
        assert_eq!(pool.lock().read.len(), KEEP_AFTER_TRIM);
        assert_eq!(pool.lock().write.len(), 1, "fewer than the floor: all kept");
    }

    #[test]
    fn trimming_is_due_after_many_closes_or_much_freed() {
        let pool = BufferPool::new();
        assert!(!pool.trim_due(5000));
        assert!(!pool.trim_due(5000 - TRIM_AFTER_CLOSED + 1));
        assert!(pool.trim_due(5000 - TRIM_AFTER_CLOSED));
        let after = 5000 - TRIM_AFTER_CLOSED;
        assert!(!pool.trim_due(after - 100), "counted from the last trim");
        pool.freed.store(TRIM_AFTER_FREED, Ordering::Relaxed);
        assert!(pool.trim_due(after - 100));
        assert!(!pool.trim_due(after - 100));
    }

    #[test]
    fn grown_buffers_are_freed_not_kept() {
        let pool = BufferPool::new();
        let mut read = pool.take_read();
        read.resize(4 * READ_BUFFER, 0);
        pool.give_read(read);
        let mut write = pool.take_write();
        write.resize(2 * WRITE_KEEP_UP_TO, 1);
        pool.give_write(write);
        let kept_reads = pool.lock().read.len();
        let kept_writes = pool.lock().write.len();
        assert_eq!((kept_reads, kept_writes), (0, 0));
        assert!(pool.take_freed() >= 4 * READ_BUFFER as u64);
        // A kept write buffer comes back empty.
        let mut write = pool.take_write();
        write.extend_from_slice(b"abc");
        pool.give_write(write);
        assert!(pool.take_write().is_empty());
    }
}
