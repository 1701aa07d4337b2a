//! Process-wide memory settings, made first thing in `main`.

/// Turns transparent huge pages off for this process, unless the operator chose with
/// mimalloc's own `MIMALLOC_ALLOW_THP` (which mimalloc has applied before `main`).
///
/// With THP on (`always` on many distributions), a 2 MiB page that the allocator has
/// touched in one place is resident whole. Weir's memory is mostly many small
/// per-connection allocations spread over threads, and huge pages made idle connections
/// cost 2.2–2.4 KiB each in a two-process cluster instead of 1.8 KiB, with no measurable
/// gain in the engine (docs/decisions/042-no-transparent-huge-pages.md).
pub fn configure() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return;
    }
    // Refused only by kernels before 3.15; the process then runs as before.
    #[cfg(target_os = "linux")]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
}
