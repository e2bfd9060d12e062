//! Allocator settings for a program that moves megabyte buffers.
//!
//! Each chunk passes through a few buffers of about 1 MiB (the file read,
//! the record, rskafka's encoded request). glibc serves allocations that
//! large with a fresh `mmap` and returns them with `munmap`, so every chunk
//! paid for zeroed pages and page faults: a profile of `send` relaying 1 GiB
//! showed about a fifth of its CPU time there, and 2.8 s of system time per
//! GiB fell to about 0.7 s with the settings below. Memory use stays bounded:
//! freed buffers are reused, and the heap is trimmed above `TRIM_THRESHOLD`.

/// Allocations below this come from the heap and are reused when freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 16 * 1024 * 1024;

/// Free memory at the top of the heap beyond this goes back to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = 32 * 1024 * 1024;

/// At most this many heaps ("arenas"). glibc gives threads arenas of their
/// own, up to eight per core, and each keeps what is freed into it: a
/// portal decoding fetches and reading spool files on many blocking threads
/// at once peaked at 81 MiB with 8 uploads of 100 MiB, 30 MiB with two.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENA_MAX: libc::c_int = 2;

/// Applies the settings; call first thing in `main`, before any thread
/// starts. Other C libraries (musl in the static build) keep their own
/// behaviour.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)] // The crate's one exception: glibc has no safe interface for this.
pub fn tune_allocator() {
    // SAFETY: mallopt only sets allocator parameters, and runs before the
    // program starts other threads.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX);
    }
}

/// The static build's allocator. musl's own serves each megabyte buffer
/// with a fresh `mmap` and gives it back at once, and has no setting to
/// change that: a static `send` spent 6.4 s of system time per GiB in page
/// faults and page clearing (1.5 s of user time). mimalloc keeps freed
/// memory for reuse, as the glibc settings above do.
///
/// It is built without transparent huge pages (the `no_thp` feature in
/// Cargo.toml): mimalloc would ask for them on its arenas, and a 2 MiB
/// page stays resident while any of its 64 KiB slices is in use, so freed
/// buffers were not given back. A static portal peaked at about 85 MiB
/// with one 1 GiB upload and 170 MiB with eight; without huge pages, about
/// 34 MiB and 75 to 110 MiB.
#[cfg(target_env = "musl")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for the process. `no_thp` only stops
/// mimalloc asking for them; a kernel set to use them everywhere
/// (`/sys/kernel/mm/transparent_hugepage/enabled` = `always`) would still
/// give them, with the growth described above. The kernel checks this flag
/// at each page fault, so memory mapped before `main` is covered too.
#[cfg(all(target_os = "linux", target_env = "musl"))]
#[allow(unsafe_code)] // The crate's one exception: prctl has no safe interface.
pub fn tune_allocator() {
    // SAFETY: PR_SET_THP_DISABLE takes an integer flag and three zeros and
    // touches no memory of ours. A refusal (kernels before 3.15) leaves the
    // kernel's default, so the result is not checked.
    let (on, unused): (libc::c_ulong, libc::c_ulong) = (1, 0);
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, on, unused, unused, unused);
    }
}

/// Does nothing outside Linux with glibc or musl.
#[cfg(not(all(target_os = "linux", any(target_env = "gnu", target_env = "musl"))))]
pub fn tune_allocator() {}
