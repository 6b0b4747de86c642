import CCrashReport
import Foundation

/// What this process reports when it dies of a fault: the handlers that had a step running in
/// it (the C part, `crash_report.c`, writes them from the signal handler to the crash watcher's
/// pipe, then closes every descriptor from 3 up, so the port and the database sessions are free
/// at once). The watcher marks them suspects in the database; their next owner runs their steps
/// in isolation (`StepIsolation`).
public enum CrashReport {
    /// Reports a fatal signal of this process to `descriptor` from now on (the write end of the
    /// crash watcher's pipe), and waits for the watcher's answer on `acknowledgement` before it
    /// dies. Called again, it only changes the descriptors (a new watcher).
    public static func install(reportingTo descriptor: Int32, acknowledgedBy acknowledgement: Int32) throws {
        guard lh_crash_report_install(descriptor, acknowledgement) == 0 else {
            throw CrashReportError(description: "sigaction failed: errno \(errno)")
        }
    }

    /// Runs `body` with a step of `handlerID` marked as running in this process.
    static func duringStep<T>(of handlerID: String, _ body: () async throws -> T) async rethrows -> T {
        let slot = handlerID.utf8CString.withUnsafeBufferPointer { buffer in
            lh_step_began(buffer.baseAddress, max(0, buffer.count - 1))
        }
        defer { lh_step_ended(slot) }
        return try await body()
    }

    /// Dies (SIGKILL) with the thread of process `parent` that started this one; false when this
    /// process's parent is no longer `parent` (it is gone already).
    public static func dieWithParent(_ parent: Int32) -> Bool { lh_die_with_parent(parent) == 0 }

    /// Step runs marked as running right now (tests).
    public static var stepsRunning: Int { Int(lh_steps_running()) }

    /// One report as the watcher reads it: "crash <signal>", then "step <id>" lines or "all", then
    /// "end". A report cut short (no "end") names every handler the process owned: which ones
    /// had a step running is not known.
    public struct Report: Sendable, Hashable {
        /// The fatal signal the process died of.
        public var signal: Int32
        /// The handlers that had a step running in the process.
        public var handlerIDs: [String]
        /// A step could not be marked (every slot taken): every handler the process owned is a suspect.
        public var all: Bool

        /// Parses what the watcher read; nil when it holds no crash (the process ended otherwise).
        public init?(parsing text: String) {
            var signal: Int32?
            var ids: [String] = []
            var all = false
            var ended = false
            for line in text.split(separator: "\n") {
                if line.hasPrefix("crash ") {
                    signal = Int32(line.dropFirst(6))
                } else if line.hasPrefix("step ") {
                    ids.append(String(line.dropFirst(5)))
                } else if line == "all" {
                    all = true
                } else if line == "end" {
                    ended = true
                }
            }
            guard let signal else { return nil }
            self.signal = signal
            self.handlerIDs = ids
            self.all = all || !ended
        }
    }
}

/// Crash reporting could not be installed.
public struct CrashReportError: Error, CustomStringConvertible {
    /// Why (the failed call and its errno).
    public var description: String
}
