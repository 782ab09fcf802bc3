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
#[derive(Clone, Copy, Debug)]
pub(super) struct StackTop {
    top: usize,
    page: usize,
}

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
        })
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

    #[test]
    fn an_idle_coroutine_gives_back_the_pages_its_deepest_call_touched() {
        // SAFETY: the coroutine keeps no thread-local across a yield (it does not yield).
        let coroutine = unsafe {
            may::coroutine::Builder::new()
                .stack_size(STACK_WORDS)
                .spawn(|| {
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
                })
        }
        .expect("a coroutine");
        let (before, given, after, pages, page) = coroutine.join().expect("the coroutine ends");
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

    #[test]
    fn outside_a_coroutine_or_on_another_stack_size_nothing_is_trimmed() {
        assert!(StackTop::here().is_none(), "a test thread is no coroutine");
        // SAFETY: the coroutine keeps no thread-local across a yield (it does not yield).
        let coroutine = unsafe {
            may::coroutine::Builder::new()
                .stack_size(STACK_WORDS / 4)
                .spawn(|| StackTop::here().is_none())
        }
        .expect("a coroutine");
        assert!(coroutine.join().expect("the coroutine ends"));
    }
}
