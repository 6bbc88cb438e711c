//! Page-aligned I/O buffers (O_DIRECT needs aligned memory) and a per-thread pool of them.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;

/// Alignment of every I/O buffer: enough for O_DIRECT on any device this server meets.
pub const BUF_ALIGN: usize = 4096;

/// An owned, page-aligned heap buffer, zeroed when first allocated (pooled buffers keep
/// whatever they last held).
#[derive(Debug)]
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    cap: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Box<[u8]>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared references only allow reads, like &[u8].
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Allocates `cap` bytes (rounded up to the alignment, at least one page).
    pub fn new(cap: usize) -> Self {
        let cap = cap.max(BUF_ALIGN).div_ceil(BUF_ALIGN) * BUF_ALIGN;
        let layout = Layout::from_size_align(cap, BUF_ALIGN).expect("buffer sizes are bounded by the max payload");
        // SAFETY: layout has a non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else { std::alloc::handle_alloc_error(layout) };
        Self { ptr, cap }
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid and initialised (zeroed at allocation) for cap bytes for as
        // long as self lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.cap) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.cap) }
    }

    pub(crate) fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub(crate) fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.cap, BUF_ALIGN).expect("layout was valid at allocation");
        // SAFETY: allocated in `new` with this exact layout.
        unsafe { dealloc(self.ptr.as_ptr(), layout) }
    }
}

/// Free lists of buffers by power-of-two size class, so the data path does not allocate
/// per request once warm. Owned by one worker thread.
#[derive(Debug, Default)]
pub struct BufPool {
    classes: Vec<Vec<AlignedBuf>>,
}

impl BufPool {
    fn class(size: usize) -> usize {
        size.max(BUF_ALIGN).next_power_of_two().trailing_zeros() as usize
    }

    /// How many buffers of a class are kept: many small ones, few huge ones.
    fn keep(class: usize) -> usize {
        match class {
            0..=17 => 256, // up to 128 KiB
            18..=20 => 32, // up to 1 MiB
            21..=23 => 4,  // up to 8 MiB
            _ => 1,
        }
    }

    /// A buffer of at least `size` bytes.
    pub fn get(&mut self, size: usize) -> AlignedBuf {
        let c = Self::class(size);
        if let Some(b) = self.classes.get_mut(c).and_then(Vec::pop) {
            return b;
        }
        AlignedBuf::new(1 << c)
    }

    pub fn put(&mut self, buf: AlignedBuf) {
        let c = Self::class(buf.capacity());
        if buf.capacity() != 1 << c {
            return; // not one of ours: let it go
        }
        if self.classes.len() <= c {
            self.classes.resize_with(c + 1, Vec::new);
        }
        if self.classes[c].len() < Self::keep(c) {
            self.classes[c].push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_recycled() {
        let mut pool = BufPool::default();
        let b = pool.get(5000);
        assert_eq!(b.as_ptr() as usize % BUF_ALIGN, 0);
        assert_eq!(b.capacity(), 8192);
        let p = b.as_ptr();
        pool.put(b);
        assert_eq!(pool.get(8000).as_ptr(), p);
        assert!(AlignedBuf::new(10).as_slice().iter().all(|&x| x == 0));
    }
}
