//! 64-byte aligned bytes for packed weights: owned, on 2 MB huge pages where the OS grants them,
//! or read in place from a packed model file's mapping.
//!
//! Why huge pages: a decode step reads every weight once, and a sparse gather jumps from column
//! run to column run. On 4 KB pages each jump tends to land on a page the TLB has not seen, and
//! the hardware prefetchers stop at every page boundary (`examples/huge_pages.rs` compares the
//! two side by side; `QSPARSE_NO_HUGE_PAGES=1 qsparse bench` end to end).
//!
//! Linux gives transparent huge pages to anonymous mappings advised `MADV_HUGEPAGE` (the default
//! THP mode is "madvise") whose length is a multiple of 2 MB (then it also aligns them). A matrix
//! smaller than that (SmolLM2's are 0.3-1.8 MB) gets huge pages only by sharing one mapping with
//! others: [`share_huge_pages`] moves a whole model's matrices into one.
//!
//! Why buffers of 64 KB or more live in their own (4 KB page) mappings rather than on the heap
//! until then: a model's matrices are packed on the rayon workers, then copied into the shared
//! mapping and freed, and the allocator kept what they had used resident in its per-thread arenas
//! (SmolLM2 int8: 120 MB of 290 MB anonymous memory after loading, 485 MB peak resident). An own
//! mapping goes back to the OS when it is dropped.

use std::sync::Arc;

/// The huge page size of x86-64 and of aarch64 with 4 KB base pages.
const HUGE_PAGE: usize = 2 << 20;

/// From this size a buffer gets its own huge-page mapping (rounded up to 2 MB: at most a third
/// is padding). Smaller ones live on small pages until [`share_huge_pages`] gathers them.
const OWN_MAPPING_MIN_BYTES: usize = 4 << 20;

/// From this size a buffer on small pages gets its own mapping instead of a heap block.
const SMALL_MAPPING_MIN_BYTES: usize = 64 << 10;

/// 64-byte aligned owned bytes: a heap block, or a region of an anonymous mapping (page aligned)
/// that may be shared, read-only, with other buffers.
pub struct AlignedBytes {
    storage: Storage,
    len: usize,
}

enum Storage {
    Heap(Vec<Block>),
    /// Bytes `offset .. offset + len` of a read-only file mapping: a packed model's weights, used
    /// where they lie (zero-copy). Copied first when written.
    File {
        map: Arc<memmap2::Mmap>,
        offset: usize,
    },
    /// Bytes `offset .. offset + len` of a mapping, advised for huge pages or not. Written in
    /// place while this buffer holds the only reference (packing); copied first otherwise.
    Mapped {
        map: Arc<memmap2::MmapMut>,
        offset: usize,
        huge: bool,
    },
}

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Block([u8; 64]);

impl AlignedBytes {
    /// `len` zero bytes; from 4 MB on their own huge-page mapping when the OS allows one.
    pub fn zeroed(len: usize) -> Self {
        if len >= OWN_MAPPING_MIN_BYTES {
            if let Some(map) = mapping(len, true) {
                return Self::mapped(map, len, true);
            }
        }
        Self::small_pages(len)
    }

    /// `len` zero bytes on ordinary pages: an own mapping from 64 KB on (when the OS allows
    /// one), a heap block below.
    fn small_pages(len: usize) -> Self {
        if len >= SMALL_MAPPING_MIN_BYTES {
            if let Some(map) = mapping(len, false) {
                return Self::mapped(map, len, false);
            }
        }
        AlignedBytes {
            storage: Storage::Heap(vec![Block([0; 64]); len.div_ceil(64)]),
            len,
        }
    }

    /// A zero-copy view of bytes `offset .. offset + len` of a read-only file mapping (a packed
    /// model file's tensor). None unless the range lies inside the mapping and starts on a 64-byte
    /// boundary (the kernels' alignment).
    pub fn from_file(map: Arc<memmap2::Mmap>, offset: usize, len: usize) -> Option<Self> {
        let end = offset.checked_add(len)?;
        if end > map.len() || !(map.as_ptr() as usize + offset).is_multiple_of(64) {
            return None;
        }
        Some(AlignedBytes {
            storage: Storage::File { map, offset },
            len,
        })
    }

    /// Whether the bytes are read in place from a file mapping.
    pub fn is_file(&self) -> bool {
        matches!(self.storage, Storage::File { .. })
    }

    fn mapped(map: memmap2::MmapMut, len: usize, huge: bool) -> Self {
        AlignedBytes {
            storage: Storage::Mapped {
                map: Arc::new(map),
                offset: 0,
                huge,
            },
            len,
        }
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the bytes live in a mapping advised for huge pages (the OS may still decline).
    pub fn is_huge(&self) -> bool {
        matches!(self.storage, Storage::Mapped { huge: true, .. })
    }

    /// Move the bytes to an own buffer on ordinary 4 KB pages: for measuring what huge pages
    /// buy, and before writing a shared region.
    pub fn move_to_small_pages(&mut self) {
        if matches!(self.storage, Storage::Mapped { .. } | Storage::File { .. }) {
            let mut own = Self::small_pages(self.len);
            own.as_mut_slice().copy_from_slice(self.as_slice());
            *self = own;
        }
    }

    /// Its bytes.
    pub fn as_slice(&self) -> &[u8] {
        match &self.storage {
            // SAFETY: `blocks` is a contiguous, initialized allocation of at least `len` bytes,
            // and Block is plain bytes with no padding.
            Storage::Heap(blocks) => unsafe {
                std::slice::from_raw_parts(blocks.as_ptr() as *const u8, self.len)
            },
            Storage::Mapped { map, offset, .. } => &map[*offset..*offset + self.len],
            Storage::File { map, offset } => &map[*offset..*offset + self.len],
        }
    }

    /// Its bytes, to write (a buffer read in place from a file is copied first).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let own = match &mut self.storage {
            Storage::Mapped { map, .. } => Arc::get_mut(map).is_some(),
            Storage::File { .. } => false,
            Storage::Heap(_) => true,
        };
        if !own {
            // Shared, or a read-only file: this buffer gets its own copy.
            self.move_to_small_pages();
        }
        let len = self.len;
        match &mut self.storage {
            // SAFETY: as in `as_slice`, and the borrow is unique.
            Storage::Heap(blocks) => unsafe {
                std::slice::from_raw_parts_mut(blocks.as_mut_ptr() as *mut u8, len)
            },
            Storage::Mapped { map, offset, .. } => {
                let map = Arc::get_mut(map).expect("made unique above");
                &mut map[*offset..*offset + len]
            }
            Storage::File { .. } => unreachable!("copied to small pages above"),
        }
    }
}

impl Clone for AlignedBytes {
    fn clone(&self) -> Self {
        match &self.storage {
            Storage::Mapped { map, offset, huge } => AlignedBytes {
                storage: Storage::Mapped {
                    map: Arc::clone(map),
                    offset: *offset,
                    huge: *huge,
                },
                len: self.len,
            },
            Storage::Heap(blocks) => AlignedBytes {
                storage: Storage::Heap(blocks.clone()),
                len: self.len,
            },
            Storage::File { map, offset } => AlignedBytes {
                storage: Storage::File {
                    map: Arc::clone(map),
                    offset: *offset,
                },
                len: self.len,
            },
        }
    }
}

impl std::fmt::Debug for AlignedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let where_ = match self.storage {
            Storage::Mapped { huge: true, .. } => "huge-page mapping",
            Storage::Mapped { huge: false, .. } => "mapping",
            Storage::Heap(_) => "heap",
            Storage::File { .. } => "file mapping",
        };
        write!(f, "AlignedBytes({} bytes, {where_})", self.len)
    }
}

/// A zeroed anonymous mapping of at least `len` bytes; for huge pages, its length a multiple of
/// 2 MB and advised for them. None if the OS refuses the mapping.
fn mapping(len: usize, huge: bool) -> Option<memmap2::MmapMut> {
    let unit = if huge { HUGE_PAGE } else { 1 };
    let mut options = memmap2::MmapOptions::new();
    options.len(len.div_ceil(unit) * unit);
    // Small-page buffers are written whole right away (packing): one populating call instead of
    // a page fault per 4 KB took the packing's writes in SmolLM2's load from 129-140 to 76-80 ms
    // of the cores' time. (Huge-page mappings fault once per 2 MB.)
    if !huge {
        options.populate();
    }
    let map = options.map_anon().ok()?;
    // A refused advice (THP disabled, other OS) leaves ordinary pages: still correct.
    #[cfg(target_os = "linux")]
    if huge {
        let _ = map.advise(memmap2::Advice::HugePage);
    }
    Some(map)
}

/// Bytes as int8 codes (the int8 formats' storage).
pub(crate) fn as_i8(b: &[u8]) -> &[i8] {
    // SAFETY: u8 and i8 have the same size and alignment, and every bit pattern is valid for both.
    unsafe { std::slice::from_raw_parts(b.as_ptr() as *const i8, b.len()) }
}

pub(crate) fn as_i8_mut(b: &mut [u8]) -> &mut [i8] {
    // SAFETY: as in `as_i8`, and the borrow is unique.
    unsafe { std::slice::from_raw_parts_mut(b.as_mut_ptr() as *mut i8, b.len()) }
}

/// Move the bytes of `buffers` into one shared huge-page mapping, in the given order (put them
/// in the order they are read), each at a 64-byte aligned offset. Each buffer's old storage is
/// freed as soon as it is copied, so memory peaks at about one copy plus one buffer. Returns
/// false (and changes nothing) when the OS refuses the mapping.
pub fn share_huge_pages(buffers: &mut [&mut AlignedBytes]) -> bool {
    let mut offsets = Vec::with_capacity(buffers.len());
    let mut total = 0;
    for b in buffers.iter() {
        offsets.push(total);
        total += b.len.div_ceil(64) * 64;
    }
    let Some(mut map) = mapping(total.max(1), true) else {
        return false;
    };
    // Copy every buffer in, then hand each its region of the shared (now read-only) mapping.
    for (b, &at) in buffers.iter_mut().zip(&offsets) {
        map[at..at + b.len].copy_from_slice(b.as_slice());
        b.storage = Storage::Heap(Vec::new());
    }
    let map = Arc::new(map);
    for (b, at) in buffers.iter_mut().zip(offsets) {
        b.storage = Storage::Mapped {
            map: Arc::clone(&map),
            offset: at,
            huge: true,
        };
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(len: usize, seed: u8) -> AlignedBytes {
        let mut b = AlignedBytes::zeroed(len);
        for (i, v) in b.as_mut_slice().iter_mut().enumerate() {
            *v = (i as u8).wrapping_mul(31).wrapping_add(seed);
        }
        b
    }

    #[test]
    fn sharing_keeps_every_byte_and_alignment() {
        let lens = [1, 63, 64, 65, 4096 + 7, 300_000];
        let originals: Vec<AlignedBytes> = lens
            .iter()
            .enumerate()
            .map(|(i, &l)| filled(l, i as u8))
            .collect();
        let mut copies = originals.clone();
        let mut refs: Vec<&mut AlignedBytes> = copies.iter_mut().collect();
        assert!(share_huge_pages(&mut refs));
        for (a, b) in originals.iter().zip(&copies) {
            assert!(b.is_huge());
            assert_eq!(a.as_slice(), b.as_slice());
            assert_eq!(b.as_slice().as_ptr() as usize % 64, 0);
        }
    }

    #[test]
    fn writing_a_shared_buffer_copies_it() {
        let mut a = filled(1000, 1);
        let mut b = filled(1000, 2);
        assert!(share_huge_pages(&mut [&mut a, &mut b]));
        let before_b = b.as_slice().to_vec();
        a.as_mut_slice()[0] ^= 0xff;
        assert!(!a.is_huge(), "a shared region is copied before a write");
        assert_eq!(b.as_slice(), &before_b[..], "the other buffer is untouched");
        assert_eq!(a.as_slice()[0], filled(1000, 1).as_slice()[0] ^ 0xff);
    }

    #[test]
    fn mid_sized_buffers_live_on_small_pages_and_copy_on_write() {
        let mut a = AlignedBytes::zeroed(SMALL_MAPPING_MIN_BYTES + 5);
        assert!(!a.is_huge());
        assert!(a.as_slice().iter().all(|&v| v == 0));
        assert_eq!(a.as_slice().as_ptr() as usize % 64, 0);
        a.as_mut_slice()[7] = 9;
        let mut b = a.clone();
        b.as_mut_slice()[7] = 4;
        assert_eq!((a.as_slice()[7], b.as_slice()[7]), (9, 4));
        assert!(share_huge_pages(&mut [&mut a]));
        assert!(a.is_huge() && a.as_slice()[7] == 9);
    }

    #[test]
    fn file_views_are_checked_read_in_place_and_copied_on_write() {
        let path = std::env::temp_dir().join(format!("qsparse-memory-{}", std::process::id()));
        let bytes: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: a private read-only mapping of a file this test alone writes.
        let map = Arc::new(unsafe { memmap2::Mmap::map(&file) }.unwrap());
        std::fs::remove_file(&path).unwrap();
        assert!(
            AlignedBytes::from_file(Arc::clone(&map), 64, 10_000).is_none(),
            "past the end"
        );
        assert!(
            AlignedBytes::from_file(Arc::clone(&map), 3, 100).is_none(),
            "misaligned"
        );
        assert!(AlignedBytes::from_file(Arc::clone(&map), usize::MAX, 2).is_none());
        let mut a = AlignedBytes::from_file(Arc::clone(&map), 128, 5000).unwrap();
        assert!(a.is_file() && !a.is_huge());
        assert_eq!(a.as_slice(), &bytes[128..5128]);
        assert_eq!(a.as_slice().as_ptr(), map[128..].as_ptr(), "zero-copy");
        let b = a.clone();
        a.as_mut_slice()[0] ^= 0xff;
        assert!(!a.is_file(), "a write copies the bytes first");
        assert_eq!(a.as_slice()[0], bytes[128] ^ 0xff);
        assert_eq!(
            b.as_slice(),
            &bytes[128..5128],
            "the file's bytes are untouched"
        );
    }

    #[test]
    fn big_buffers_get_their_own_mapping() {
        let b = filled(OWN_MAPPING_MIN_BYTES + 3, 5);
        assert!(b.is_huge());
        assert_eq!(b.as_slice().len(), OWN_MAPPING_MIN_BYTES + 3);
        let c = b.clone();
        assert_eq!(b.as_slice(), c.as_slice());
    }
}
