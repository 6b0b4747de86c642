#if canImport(Glibc)
import Glibc
#endif

/// Hands freed heap back to the operating system after many handlers have left memory.
///
/// glibc keeps freed memory in its arenas; after 100,000 runtimes were built and hibernated the
/// process would keep their peak footprint although nothing of them is left. `malloc_trim` gives
/// the free pages back. It is looked up at run time, so other C libraries (musl) simply skip it.
struct MemoryTrim {
    /// Trim once the live-handler count has fallen this far below its peak since the last trim.
    static let threshold = 1_000

    private var peak = 0

    /// Called once a second with the number of live handlers; returns true when it trimmed.
    mutating func observe(liveHandlers: Int) -> Bool {
        peak = max(peak, liveHandlers)
        guard peak - liveHandlers >= Self.threshold else { return false }
        peak = liveHandlers
        Self.release()
        return true
    }

    static func release() {
        #if canImport(Glibc)
        guard let symbol = trimSymbol else { return }
        _ = unsafeBitCast(symbol, to: (@convention(c) (Int) -> Int32).self)(0)
        #endif
    }

    #if canImport(Glibc)
    private nonisolated(unsafe) static let trimSymbol = dlsym(dlopen(nil, RTLD_NOW), "malloc_trim")
    #endif
}
