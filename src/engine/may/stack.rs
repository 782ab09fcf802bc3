//! Gives an idle connection's dead stack pages back to the system.
//!
//! A connection's coroutine goes some KiB deep into its stack while it handles a request
//! (parsing, routing, the handler, the response), and the pages it touched stay resident after
//! it returns to wait for the next request: an idle keep-alive connection held about 12 KiB of
//! stack, nearly all of what it cost (`bench/idle_connections.sh`). Once a connection has been
//! idle for [`crate::engine::SETTLE_AFTER`], its coroutine discards the pages below its own frame
//! (`madvise(MADV_DONTNEED)`: they read back as zeros, and below the stack pointer nothing is
//! read before it is written). A busy connection never waits that long, so it never trims; a
//! client that sends a request every second or more pays a `madvise` and the page faults of
//! its next request each time (and the `madvise` that frees pages interrupts the process's
//! other CPUs to flush their TLBs).
//!
//! Only the coroutine itself may do it, from the frame that is about to wait: another thread
//! cannot know that the coroutine is not running deeper at that moment.
//!
//! That leaves the page of the waiting frames at the stack's top, and one at its bottom that
//! holds nothing but generator's overflow pattern (64 bytes): the first idle spell gives that
//! one back too, once it has checked that the pattern is where the estimated bottom says, and
//! the pattern is written back before the coroutine ends. An idle connection's stack then
//! holds one page. The checks read memory with `process_vm_readv` on the process itself; where
//! a seccomp filter refuses it with an error the bottom page simply stays (a filter that kills
//! on it instead, unlike Docker's default, would need it allowed).

use std::cell::Cell;

use super::carriers::{STACK_BYTES, STACK_WORDS};

/// Bytes below the trimming frame that are kept: the frames of the `madvise` call itself.
const MARGIN: usize = 1024;
/// The most discarded below the trimming frame: deeper than any request goes (see
/// [`super::carriers`] on stack depth), and far above the stack's bottom.
const WINDOW: usize = 64 * 1024;
/// The stack's lowest bytes (above the estimated bottom) are never discarded: generator keeps a
/// sentinel there that may checks whenever a coroutine ends, pooled ones included (a zeroed
/// sentinel reads as an overflow, and may ends the process), and [`StackTop`] may place the top
/// a few pages low.
const KEEP_BOTTOM: usize = 16 * 1024;
/// How deep a waiting frame may sit with the whole window still above `KEEP_BOTTOM`: the range
/// cannot reach the stack's bottom unless the trimming frame is this deep, or the top estimate
/// this far off.
const DEPTH_ROOM: usize = STACK_BYTES - WINDOW - MARGIN - KEEP_BOTTOM;
const _: () = assert!(
    DEPTH_ROOM >= 32 * 1024,
    "the stack is too small for the trim window"
);

fn page_size() -> usize {
    // SAFETY: sysconf with a valid name has no preconditions.
    match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        size if size > 0 => size as usize,
        _ => 4096,
    }
}

/// Where a coroutine's stack ends (its highest address), estimated from the coroutine's first
/// frame: the page boundary above it. The coroutine's earlier frames (may's entry, the
/// closure) could span more than a page, which puts the estimate a page or more low; the
/// bounds below leave room for that ([`DEPTH_ROOM`]).
///
/// It also gives back the stack's bottom page, which generator's overflow pattern keeps resident
/// ([`StackTop::trim_bottom`]), and puts the pattern back when dropped, before the coroutine
/// ends.
#[derive(Debug)]
pub(super) struct StackTop {
    top: usize,
    page: usize,
    /// Where the bottom page given back starts: the pattern goes back there on drop.
    bottom_given: Cell<Option<usize>>,
}

/// generator (0.8.12) marks a stack's lowest words with this pattern when it maps the stack
/// (its `STACK_SENTINEL`, on `STACK_USAGE_SAMPLE` words for an even stack size such as ours),
/// and may reads them whenever a coroutine ends: a lowest word that lost the pattern means the
/// stack overflowed, and may ends the process. Those 64 bytes keep each stack's bottom page
/// resident, half of what an idle connection's stack held once its upper pages were trimmed.
const SENTINEL: usize = 0xDEAD_BEEF;
const SENTINEL_WORDS: usize = 8;
/// How many pages above the estimated bottom [`StackTop::trim_bottom`] looks for the real one.
const BOTTOM_SEARCH: usize = 8;

impl StackTop {
    /// Called from the coroutine's first frame of its own (`serve`). `None` outside a coroutine
    /// or in one whose stack is not the size the bounds assume ([`STACK_WORDS`], which
    /// `carriers::start` gives may before its first coroutine): then nothing is ever trimmed.
    #[inline(never)]
    pub fn here() -> Option<StackTop> {
        if !may::coroutine::is_coroutine() || may::coroutine::current().stack_size() != STACK_WORDS
        {
            return None;
        }
        let marker = 0u8;
        let at = std::hint::black_box(&marker) as *const u8 as usize;
        let page = page_size();
        Some(StackTop {
            top: at.next_multiple_of(page),
            page,
            bottom_given: Cell::new(None),
        })
    }

    /// Gives the stack's bottom page back, once, where it finds it: the lowest words of the
    /// stack hold generator's pattern, the page below is the guard page, and every page from
    /// there up to the caller's frame can be read (so no guard page, and no other mapping,
    /// lies between: the bottom is this stack's). It looks at the estimated bottom and the
    /// pages above it (a top estimated low, by the frames above `serve`'s, puts the estimate
    /// that many pages low). All of it read without faulting ([`read_self`]).
    /// The bytes given back. Never inlined, and called before [`StackTop::trim_below_caller`]:
    /// its frame is deeper than the waiting one.
    #[inline(never)]
    pub fn trim_bottom(&self) -> usize {
        if self.bottom_given.get().is_some() {
            return 0;
        }
        let marker = 0u8;
        let here = std::hint::black_box(&marker) as *const u8 as usize;
        let Some(estimated) = self.top.checked_sub(STACK_BYTES) else {
            return 0;
        };
        let word = std::mem::size_of::<usize>();
        let Some(bottom) = (0..BOTTOM_SEARCH)
            .map(|pages| estimated + pages * self.page)
            .find(|&at| read_own::<1>(at - word).is_none())
        else {
            return 0;
        };
        let here_page = here & !(self.page - 1);
        if bottom >= here_page
            || read_own::<SENTINEL_WORDS>(bottom) != Some([SENTINEL; SENTINEL_WORDS])
            || !readable_pages(bottom, here_page, self.page)
        {
            return 0;
        }
        // SAFETY: `[bottom, bottom + page)` is this coroutine's stack's lowest page (its
        // pattern is there, the guard page below, and readable memory up to this frame), far
        // below any live frame (DEPTH_ROOM); nothing there but the pattern, which `drop` puts
        // back before the coroutine ends.
        let done =
            unsafe { libc::madvise(bottom as *mut libc::c_void, self.page, libc::MADV_DONTNEED) };
        if done != 0 {
            return 0;
        }
        self.bottom_given.set(Some(bottom));
        self.page
    }

    /// Discards the stack pages below the caller's frame; the bytes given back (0 when there is
    /// nothing to discard). Never inlined: `here` below must be a local of this frame, the
    /// deepest in use, for MARGIN to cover what the `madvise` call itself puts on the stack
    /// (this frame's rest and the system call's return address).
    #[inline(never)]
    pub fn trim_below_caller(&self) -> usize {
        let marker = 0u8;
        let here = std::hint::black_box(&marker) as *const u8 as usize;
        let Some((from, to)) = self.trimmable(here) else {
            return 0;
        };
        // SAFETY: `[from, to)` lies inside this coroutine's own stack mapping (below the
        // current frame by at least MARGIN, at most WINDOW below it and KEEP_BOTTOM above the
        // estimated bottom, see `trimmable` and DEPTH_ROOM), and nothing there is live: the
        // stack grows down and this frame is the deepest one in use. MADV_DONTNEED on private
        // anonymous memory only drops pages, which read back as zeros.
        let done =
            unsafe { libc::madvise(from as *mut libc::c_void, to - from, libc::MADV_DONTNEED) };
        if done == 0 {
            to - from
        } else {
            0
        }
    }

    /// Puts generator's pattern back on a bottom page given back, on each word that still reads
    /// as the zero the trim left: a word a frame wrote since keeps what it holds, and may
    /// reports an overflow from it as before.
    fn restore_bottom(&self, bottom: usize) {
        let bottom = bottom as *mut usize;
        // SAFETY: `trim_bottom` found the pattern there: these words are this stack's lowest,
        // mapped read-write; volatile, because they are read by may, not by this code.
        unsafe {
            for i in 0..SENTINEL_WORDS {
                if bottom.add(i).read_volatile() == 0 {
                    bottom.add(i).write_volatile(SENTINEL);
                }
            }
        }
    }

    /// The page-aligned range to discard for a frame at `here`, if any.
    fn trimmable(&self, here: usize) -> Option<(usize, usize)> {
        let lowest = self.top.checked_sub(STACK_BYTES)? + KEEP_BOTTOM;
        // Not on this stack (a caller on another thread's stack, or an estimate gone wrong).
        if here > self.top || here < lowest {
            return None;
        }
        let to = (here - MARGIN) & !(self.page - 1);
        let from = to
            .saturating_sub(WINDOW)
            .max(lowest.next_multiple_of(self.page));
        (from < to).then_some((from, to))
    }
}

impl Drop for StackTop {
    fn drop(&mut self) {
        if let Some(bottom) = self.bottom_given.get() {
            self.restore_bottom(bottom);
        }
    }
}

/// Whether one word at the start of each page in `[from, to)` can be read (page-aligned, at
/// most 64 pages): one read, which stops at the first it cannot read.
fn readable_pages(from: usize, to: usize, page: usize) -> bool {
    const MAX_PAGES: usize = 64;
    let pages = to.saturating_sub(from) / page;
    if pages > MAX_PAGES {
        return false;
    }
    let word = std::mem::size_of::<usize>();
    let mut words = [0usize; MAX_PAGES];
    let remote: [libc::iovec; MAX_PAGES] = std::array::from_fn(|i| libc::iovec {
        iov_base: (from + i * page) as *mut libc::c_void,
        iov_len: word,
    });
    read_self(&mut words[..pages], &remote[..pages])
}

/// The `N` words at `at` in this process, or `None` where they cannot be read.
fn read_own<const N: usize>(at: usize) -> Option<[usize; N]> {
    let mut words = [0usize; N];
    let remote = libc::iovec {
        iov_base: at as *mut libc::c_void,
        iov_len: std::mem::size_of_val(&words),
    };
    read_self(&mut words, &[remote]).then_some(words)
}

/// Fills `into` from the places `from` names in this process; whether all of it was read.
/// `process_vm_readv` answers `EFAULT` for an unreadable address instead of faulting, stops at
/// the first place it cannot read, and fails whole where the system refuses the call.
fn read_self(into: &mut [usize], from: &[libc::iovec]) -> bool {
    let len = std::mem::size_of_val(into);
    let local = libc::iovec {
        iov_base: into.as_mut_ptr().cast(),
        iov_len: len,
    };
    // SAFETY: `local` is the caller's buffer of `len` bytes; the kernel checks `from`.
    let read = unsafe {
        libc::process_vm_readv(libc::getpid(), &local, 1, from.as_ptr(), from.len() as _, 0)
    };
    read == len as isize
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: usize = 4096;

    /// A stack ending at `at`, on 4 KiB pages (the range arithmetic; the coroutine test below
    /// uses the host's page size).
    fn top(at: usize) -> StackTop {
        StackTop {
            top: at,
            page: PAGE,
            bottom_given: Cell::new(None),
        }
    }

    #[test]
    fn the_range_ends_a_margin_below_the_frame_on_a_page_boundary() {
        let stack = top(0x10_0000);
        let here = 0x10_0000 - 3000;
        let (from, to) = stack.trimmable(here).unwrap();
        assert_eq!(
            to,
            0x10_0000 - PAGE,
            "the page holding here - MARGIN is kept"
        );
        assert_eq!(from, to - WINDOW);
        assert!(to <= here - MARGIN);
        assert_eq!(from % PAGE, 0);
    }

    #[test]
    fn the_stack_bottom_is_never_in_the_range() {
        let stack = top(0x10_0000);
        let bottom = 0x10_0000 - STACK_BYTES;
        // A frame deep in the stack: the range stops KEEP_BOTTOM above the bottom.
        let (from, _) = stack.trimmable(bottom + KEEP_BOTTOM + 5 * PAGE).unwrap();
        assert_eq!(from, bottom + KEEP_BOTTOM);
        // Deeper still: nothing to discard.
        assert_eq!(stack.trimmable(bottom + KEEP_BOTTOM + 100), None);
        assert_eq!(stack.trimmable(bottom + 10), None);
    }

    #[test]
    fn a_frame_off_the_stack_discards_nothing() {
        let stack = top(0x10_0000);
        assert_eq!(stack.trimmable(0x10_0000 + 8), None);
        assert_eq!(stack.trimmable(0x10), None);
        assert_eq!(top(100).trimmable(50), None);
    }

    /// Goes `levels` KiB deep into the stack, touching every page; the deepest frame's address.
    #[inline(never)]
    fn go_deep(levels: usize) -> usize {
        let buf = [levels as u8; 1024];
        let here = std::hint::black_box(&buf) as *const _ as usize;
        if levels == 0 {
            return here;
        }
        std::hint::black_box(go_deep(levels - 1)).min(here)
    }

    /// How many of the pages in `[from, to)` are resident.
    fn resident(from: usize, to: usize) -> usize {
        let pages = (to - from) / page_size();
        let mut map = vec![0u8; pages];
        // SAFETY: a page-aligned range of this coroutine's stack mapping and a vector of one
        // byte per page.
        let done = unsafe { libc::mincore(from as *mut libc::c_void, to - from, map.as_mut_ptr()) };
        assert_eq!(done, 0, "mincore: {}", std::io::Error::last_os_error());
        map.iter().filter(|page| *page & 1 == 1).count()
    }

    /// Runs `body` in a coroutine of `words` words of stack, and returns what it returns.
    fn in_coroutine<T: Send + 'static>(
        words: usize,
        body: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        // SAFETY: the coroutine keeps no thread-local across a yield (it does not yield).
        let coroutine = unsafe { may::coroutine::Builder::new().stack_size(words).spawn(body) };
        coroutine
            .expect("a coroutine")
            .join()
            .expect("the coroutine ends")
    }

    #[test]
    fn an_idle_coroutine_gives_back_the_pages_its_deepest_call_touched() {
        let (before, given, after, pages, page) = in_coroutine(STACK_WORDS, || {
            let page = page_size();
            let stack = StackTop::here().expect("a coroutine of the configured size");
            let frame = {
                let marker = 0u8;
                std::hint::black_box(&marker) as *const u8 as usize
            };
            let deepest = go_deep(24) & !(page - 1);
            let above = (frame - 2 * page) & !(page - 1);
            let before = resident(deepest, above);
            let given = stack.trim_below_caller();
            let after = resident(deepest, above);
            (before, given, after, (above - deepest) / page, page)
        });
        assert!(
            pages * page >= 16 * 1024,
            "the calls went {pages} pages deep"
        );
        assert_eq!(before, pages, "every page the calls touched is resident");
        assert!(
            given >= pages * page,
            "{given} bytes given back for {pages} pages"
        );
        assert_eq!(
            after, 0,
            "of {pages} pages, {after} still resident after the trim"
        );
    }

    /// The bottom page goes back while the pattern is not needed, and the pattern is back
    /// before the coroutine ends: were it not, may would end this test process as overflowed.
    #[test]
    fn the_bottom_page_goes_back_and_its_pattern_returns_before_the_end() {
        let (given, again, after, restored, page) = in_coroutine(STACK_WORDS, || {
            let page = page_size();
            let stack = StackTop::here().expect("a coroutine of the configured size");
            let given = stack.trim_bottom();
            let bottom = stack.bottom_given.get().expect("the bottom found");
            // This closure's frame is in the stack's top page: the estimate is exact.
            assert_eq!(bottom, stack.top - STACK_BYTES, "the stack's own bottom");
            let again = stack.trim_bottom();
            let after = resident(bottom, bottom + page);
            drop(stack);
            let restored = read_own::<SENTINEL_WORDS>(bottom);
            (given, again, after, restored, page)
        });
        assert_eq!((given, again), (page, 0), "given back once");
        assert_eq!(after, 0, "the bottom page is no longer resident");
        assert_eq!(
            restored,
            Some([SENTINEL; SENTINEL_WORDS]),
            "the pattern is back"
        );
    }

    #[test]
    fn a_bottom_that_is_not_the_stack_is_left_alone() {
        // Outside a coroutine: a "stack" whose bottom is this thread's guard or another
        // mapping; the pattern is not there, so nothing is given back.
        let marker = 0u8;
        let at = std::hint::black_box(&marker) as *const u8 as usize;
        assert_eq!(top(at.next_multiple_of(PAGE)).trim_bottom(), 0);
        assert_eq!(
            read_own::<1>(8),
            None,
            "an unmapped address reads as nothing"
        );
    }

    /// Another mapping laid out like a stack's bottom (a guard page, then the pattern) is not
    /// taken for this stack's: it is not joined to the caller's frame.
    #[test]
    fn a_pattern_above_a_guard_page_elsewhere_is_left_alone() {
        let page = page_size();
        // SAFETY: a fresh private anonymous mapping of three pages, the first made unreadable,
        // the second given the pattern; unmapped at the end.
        unsafe {
            let map = libc::mmap(
                std::ptr::null_mut(),
                3 * page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(map, libc::MAP_FAILED);
            assert_eq!(libc::mprotect(map, page, libc::PROT_NONE), 0);
            let bottom = map as usize + page;
            for i in 0..SENTINEL_WORDS {
                (bottom as *mut usize).add(i).write(SENTINEL);
            }
            let elsewhere = StackTop {
                top: bottom + STACK_BYTES,
                page,
                bottom_given: Cell::new(None),
            };
            assert_eq!(elsewhere.trim_bottom(), 0);
            assert_eq!(
                read_own::<SENTINEL_WORDS>(bottom),
                Some([SENTINEL; SENTINEL_WORDS])
            );
            assert!(
                !readable_pages(map as usize, bottom + page, page),
                "the guard page"
            );
            assert!(readable_pages(bottom, bottom + 2 * page, page));
            libc::munmap(map, 3 * page);
        }
    }

    #[test]
    fn outside_a_coroutine_or_on_another_stack_size_nothing_is_trimmed() {
        assert!(StackTop::here().is_none(), "a test thread is no coroutine");
        assert!(in_coroutine(STACK_WORDS / 4, || StackTop::here().is_none()));
    }
}
