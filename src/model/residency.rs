//! How the OS maps a region's pages right now: the share of huge (2 MB) pages, from
//! `/proc/self/smaps`. Tensors read in place from a file's mapping are as fast as copied ones
//! only where the page cache gives the file huge pages; this says whether it did.

/// The fraction of the resident pages of the mapping(s) holding `region` that the OS maps with
/// 2 MB pages right now (`AnonHugePages` + `FilePmdMapped` + `ShmemPmdMapped` over `Rss` in
/// `/proc/self/smaps`, over every mapping the region overlaps). None where the OS does not say
/// (not Linux, no procfs).
pub fn huge_page_coverage(region: &[u8]) -> Option<f64> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    Some(smaps_coverage(
        &smaps,
        region.as_ptr() as usize,
        region.len(),
    ))
}

/// [`huge_page_coverage`] from the text of an smaps file, for the bytes `start .. start + len`.
fn smaps_coverage(smaps: &str, start: usize, len: usize) -> f64 {
    let (mut resident, mut huge) = (0u64, 0u64);
    let mut inside = false;
    for line in smaps.lines() {
        // A mapping's header: "lo-hi perms offset dev inode [path]", addresses in hex.
        let range = line.split_whitespace().next().and_then(|r| {
            let (lo, hi) = r.split_once('-')?;
            Some((
                usize::from_str_radix(lo, 16).ok()?,
                usize::from_str_radix(hi, 16).ok()?,
            ))
        });
        if let Some((lo, hi)) = range.filter(|_| !line.ends_with(" kB")) {
            inside = lo < start + len && start < hi;
            continue;
        }
        if !inside {
            continue;
        }
        let kb = |key: &str| {
            line.strip_prefix(key)
                .and_then(|v| v.trim().strip_suffix("kB"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let Some(v) = kb("Rss:") {
            resident += v;
        }
        for key in ["AnonHugePages:", "FilePmdMapped:", "ShmemPmdMapped:"] {
            huge += kb(key).unwrap_or(0);
        }
    }
    if resident == 0 {
        0.0
    } else {
        huge as f64 / resident as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_page_coverage_reads_the_mappings_of_a_region() {
        let smaps = "\
7f0000000000-7f0001000000 r--s 00000000 fd:01 123 /models/a.gguf
Size:              16384 kB
KernelPageSize:        4 kB
Rss:                8192 kB
FilePmdMapped:      6144 kB
7f0001000000-7f0001200000 rw-p 00000000 00:00 0
Size:               2048 kB
Rss:                2048 kB
AnonHugePages:      2048 kB
7f1000000000-7f1000001000 r-xp 00000000 fd:01 9 /bin/x
Size:                  4 kB
Rss:                   4 kB
AnonHugePages:         0 kB
";
        let base = 0x7f00_0000_0000usize;
        assert_eq!(smaps_coverage(smaps, base + 4096, 100), 0.75);
        // Overlapping both mappings: (6144 + 2048) / (8192 + 2048).
        assert_eq!(smaps_coverage(smaps, base + (15 << 20), 2 << 20), 0.8);
        assert_eq!(smaps_coverage(smaps, 0x1000, 10), 0.0, "no mapping");
        // This process's own mappings parse (the value depends on the OS's choices).
        let buf = vec![1u8; 8 << 20];
        if let Some(c) = huge_page_coverage(&buf) {
            assert!((0.0..=1.0).contains(&c), "{c}");
        }
    }
}
