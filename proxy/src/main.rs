//! The `corral` binary.

// Every proxied request allocates on the worker that reads it and frees
// on the one that writes the answer: glibc's malloc takes an arena lock
// for that (a futex per contended free, seen with `strace -k`), jemalloc
// a per-thread cache. Measured in benches/RESULTS.md ("The changes, each measured", issue 21).
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    corral::cli::main()
}
