import Foundation
import LeaseholdEngine
import Synchronization

/// Where a suspect handler's steps run: in a process of their own, so that a step that traps
/// (user code can: an overflow, a failed precondition) ends that process and nothing else.
///
/// A handler is a suspect when a replica died of a fault while one of its steps ran there
/// (`CrashReport`). Its next owner runs its steps through this until the handler has got past
/// every step it had started (a checkpoint with nothing in flight); a run that ends its process
/// again quarantines the handler (`Tick.Kind.quarantine`).
public protocol StepIsolation: Sendable {
    /// Runs `step` to its end elsewhere and returns what it produced.
    /// - Throws: `StepCrashed` when the process ended without an answer (a trap, a kill);
    ///   `IsolatedStepFailed` with the step's own error; `WaitingForEvent` as the step threw it.
    func run(_ step: IsolatedStep) async throws -> StepOutput
}

/// One step run handed to another process: everything `Step.body` sees.
public struct IsolatedStep: Sendable, Codable {
    /// The name of the step's workflow, looked up in the child's registry.
    public var workflow: String
    /// The run to execute.
    public var run: StepRun
    /// The handler's context state as the run sees it.
    public var context: [String: JSONValue]
    /// The token of the handler's lease (`StepContext.fencingToken`).
    public var fencingToken: Int64
    /// The handler the step runs for.
    public var handlerID: String

    /// A run of a step of `workflow`, with what its context holds.
    public init(workflow: String, run: StepRun, context: [String: JSONValue], fencingToken: Int64, handlerID: String) {
        self.workflow = workflow
        self.run = run
        self.context = context
        self.fencingToken = fencingToken
        self.handlerID = handlerID
    }

    /// What the other process answers on its standard output.
    public enum Answer: Sendable, Codable {
        case finished(StepOutput)
        case waiting(WaitRequest)
        case failed(StepError)
    }

    /// Runs the step in this process (the child's side): what `HandlerRuntime` would run
    /// in-process, with the same check of its output (what cannot be kept fails the run here, so
    /// that the answer can always be written).
    public func perform(in registry: WorkflowRegistry) async -> Answer {
        let step: Step
        do {
            guard let found = try registry.workflow(workflow).step(named: run.step) else {
                return .failed(.engine("unknown step '\(run.step)' of workflow '\(workflow)'"))
            }
            step = found
        } catch {
            return .failed(StepError(error))
        }
        let context = StepContext(run: run, state: self.context, fencingToken: fencingToken, handlerID: handlerID)
        do {
            try await step.body(run.event, context)
            let output = context.collectedOutput
            if let problem = output.boundsProblem { return .failed(.engine("step output cannot be kept: \(problem)")) }
            return .finished(output)
        } catch let waiting as WaitingForEvent {
            return .waiting(waiting.request)
        } catch {
            return .failed(StepError(error))
        }
    }
}

/// The isolated process died of a fault (a trap, a failed precondition, a stack overflow): the
/// step ended its process. What quarantines a suspect.
public struct StepCrashed: Error, CustomStringConvertible, Sendable {
    /// The signal that ended it.
    public var signal: Int32

    /// The process ended with `signal`.
    public init(signal: Int32) {
        self.signal = signal
    }

    /// The signals of a fault (what a trap, an abort or a bad access end a process with).
    public static let faults: Set<Int32> = [SIGILL, SIGTRAP, SIGABRT, SIGSEGV, SIGBUS, SIGFPE]

    /// Says which signal ended the process.
    public var description: String { "ended its process with signal \(signal)" }
}

/// The isolated process ended otherwise than by a fault
/// (killed, out of memory, no answer): a failure of this run, retried as the step's policy says.
public struct IsolatedStepFailed: Error, CustomStringConvertible, Sendable {
    /// What went wrong (the failure's message).
    public var description: String

    /// A failure described by `description`.
    public init(description: String) {
        self.description = description
    }
}

/// Runs each step in a new process of an executable that answers `IsolatedStep` on its standard
/// input with an `IsolatedStep.Answer` on its standard output (`leasehold step`).
public struct ChildProcessStepIsolation: StepIsolation {
    /// The program started for each step.
    public let executable: URL
    /// Its arguments.
    public let arguments: [String]
    /// Variables added to this process's environment for it.
    public let environment: [String: String]

    /// - Parameters:
    ///   - executable: the program to start; by default this process's own.
    ///   - arguments: its arguments (the subcommand that answers one step).
    ///   - environment: added to this process's environment.
    public init(
        executable: URL = ChildProcessStepIsolation.ownExecutable, arguments: [String],
        environment: [String: String] = [:]
    ) {
        self.executable = executable
        self.arguments = arguments
        self.environment = environment
    }

    /// This process's executable: `/proc/self/exe` itself where there is one (started as it is,
    /// it is the running binary even after the file was replaced by an upgrade).
    public static var ownExecutable: URL {
        if FileManager.default.fileExists(atPath: "/proc/self/exe") { return URL(fileURLWithPath: "/proc/self/exe") }
        return URL(fileURLWithPath: CommandLine.arguments[0])
    }

    /// The environment variable that tells the child its replica's process id (`leasehold step`
    /// dies with that replica, and refuses to start when its parent is already another).
    public static let parentVariable = "LEASEHOLD_PARENT_PID"

    /// See `StepIsolation.run(_:)`: one new process per call, killed when the task is cancelled.
    public func run(_ step: IsolatedStep) async throws -> StepOutput {
        let input = try JSONEncoder().encode(step)
        let process = Process()
        process.executableURL = executable
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
            .merging([Self.parentVariable: String(getpid())]) { $1 }
        let stdin = Pipe()
        let stdout = Pipe()
        process.standardInput = stdin
        process.standardOutput = stdout
        let cancelled = Mutex(false)
        // The child is started, fed, read and waited for on a thread of its own, which lives as
        // long as the child: a step may run for minutes, and neither the concurrency pool's
        // threads nor Dispatch's global ones (the same few on Linux, retired when idle) may be
        // held that long — and the child dies with the thread that started it (PR_SET_PDEATHSIG).
        let (output, status, reason) = try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation {
                (continuation: CheckedContinuation<(Data, Int32, Process.TerminationReason), any Error>) in
                let waiter = Thread {
                    do {
                        guard !cancelled.withLock({ $0 }) else { throw CancellationError() }
                        try process.run()
                    } catch {
                        continuation.resume(throwing: error)
                        return
                    }
                    do {
                        try stdin.fileHandleForWriting.write(contentsOf: input)
                        try stdin.fileHandleForWriting.close()
                    } catch {
                        // The child ended before reading all of it; its exit tells why.
                    }
                    let output = stdout.fileHandleForReading.readDataToEndOfFile()
                    process.waitUntilExit()
                    continuation.resume(returning: (output, process.terminationStatus, process.terminationReason))
                }
                waiter.start()
            }
        } onCancel: {
            // The handler stops: its step runs again wherever it resumes. No grace for this one.
            cancelled.withLock { $0 = true }
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        }
        try Task.checkCancellation()
        if reason == .uncaughtSignal {
            if StepCrashed.faults.contains(status) { throw StepCrashed(signal: status) }
            throw IsolatedStepFailed(description: "the isolated step was killed (signal \(status))")
        }
        guard status == 0, let answer = try? JSONDecoder().decode(IsolatedStep.Answer.self, from: output) else {
            // (`try?`: an answer that does not decode is the same fact as no answer.)
            throw IsolatedStepFailed(description: "the isolated step exited with status \(status) and no answer")
        }
        switch answer {
        case .finished(let output): return output
        case .waiting(let request): throw WaitingForEvent(request: request)
        case .failed(let error): throw error  // the step's own error, as in-process
        }
    }
}
