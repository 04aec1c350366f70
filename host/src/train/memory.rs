//! How the CPU allocator treats the memory a training step frees. libtorch
//! allocates each intermediate tensor with malloc; glibc hands blocks above
//! its mmap threshold back to the kernel on free and trims the heap top, so
//! every PGD step touches the same megabytes afresh and pays a page fault per
//! 4 KiB (about 18 000 per 10-step attack at 64x64, batch 8). Keeping freed
//! memory in the process removes them; the peak stays what a step needs.

/// Sets glibc's mmap and trim thresholds once per process (elsewhere a no-op).
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // From glibc's <malloc.h>.
            const M_TRIM_THRESHOLD: i32 = -1;
            const M_MMAP_THRESHOLD: i32 = -3;
            unsafe extern "C" {
                fn mallopt(param: i32, value: i32) -> i32;
            }
            // SAFETY: mallopt only changes allocator parameters; any thread may call it.
            unsafe {
                // 32 MiB is the largest mmap threshold glibc accepts on 64-bit targets.
                mallopt(M_MMAP_THRESHOLD, 32 << 20);
                mallopt(M_TRIM_THRESHOLD, i32::MAX);
            }
        });
    }
}
