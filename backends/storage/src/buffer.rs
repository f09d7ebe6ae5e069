//! Large byte buffers for array data and file reads.
//!
//! Loading a checkpoint writes every byte of its arrays once into fresh
//! memory, so the cost of faulting that memory in shows up directly in load
//! times. Buffers come zeroed from the allocator (large ones as fresh pages,
//! without a `memset`) and, on Linux, large ones ask for transparent huge
//! pages, which cuts the page faults per gigabyte from ~260,000 to ~500.

/// Buffers at least this large are advised to use huge pages.
const HUGE_PAGE_THRESHOLD: usize = 4 << 20;

/// A zero-filled buffer of `n` bytes, or `None` if it cannot be allocated.
pub fn zeroed(n: usize) -> Option<Vec<u8>> {
    if n == 0 {
        return Some(Vec::new());
    }
    let layout = std::alloc::Layout::array::<u8>(n).ok()?;
    // SAFETY: `layout` has non-zero size; a non-null result points to `n`
    // zeroed bytes allocated by the global allocator with the layout `Vec<u8>`
    // uses for capacity `n`, so the `Vec` may own and free it.
    let buffer = unsafe {
        let ptr = std::alloc::alloc_zeroed(layout);
        if ptr.is_null() {
            return None;
        }
        Vec::from_raw_parts(ptr, n, n)
    };
    #[cfg(target_os = "linux")]
    if n >= HUGE_PAGE_THRESHOLD {
        // madvise needs a page-aligned start: advise the whole pages inside
        // the buffer (the allocator's header usually shifts it by a few bytes).
        const PAGE: usize = 4096;
        let start = (buffer.as_ptr() as usize).next_multiple_of(PAGE);
        let end = (buffer.as_ptr() as usize + n) / PAGE * PAGE;
        if end > start {
            // SAFETY: the range lies within this buffer's own allocation;
            // madvise only changes how the kernel backs it, never its contents.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
    Some(buffer)
}

#[cfg(test)]
mod tests {
    #[test]
    fn buffers_are_zeroed_and_sized() {
        for n in [0, 1, 4096, 8 << 20] {
            let b = super::zeroed(n).unwrap();
            assert_eq!(b.len(), n);
            assert!(b.iter().all(|&x| x == 0));
        }
    }
}
