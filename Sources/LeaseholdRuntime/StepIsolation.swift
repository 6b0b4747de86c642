import Foundation
import LeaseholdEngine

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
    public var workflow: String
    public var run: StepRun
    public var context: [String: JSONValue]
    public var fencingToken: Int64
    public var handlerID: String

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
        case failed(String)
    }

    /// Runs the step in this process (the child's side): what `HandlerRuntime` would run in-process.
    public func perform(in registry: WorkflowRegistry) async -> Answer {
        let step: Step
        do {
            guard let found = try registry.workflow(workflow).step(named: run.step) else {
                return .failed("unknown step '\(run.step)' of workflow '\(workflow)'")
            }
            step = found
        } catch {
            return .failed("\(error)")
        }
        let context = StepContext(
            stepName: run.step, attempt: run.attempt, state: self.context, received: run.received,
            fencingToken: fencingToken, handlerID: handlerID)
        do {
            try await step.body(run.event, context)
            return .finished(context.collectedOutput)
        } catch let waiting as WaitingForEvent {
            return .waiting(waiting.request)
        } catch {
            return .failed("\(error)")
        }
    }
}

/// The isolated process ended without answering: it trapped, or was killed.
public struct StepCrashed: Error, CustomStringConvertible, Sendable {
    /// The signal that ended it, or nil when it exited without an answer.
    public var signal: Int32?
    public var exitStatus: Int32?
    public var detail: String

    public init(signal: Int32?, exitStatus: Int32?, detail: String) {
        self.signal = signal
        self.exitStatus = exitStatus
        self.detail = detail
    }

    public var description: String {
        if let signal { return "ended its process with signal \(signal) (\(detail))" }
        return "ended its process with exit status \(exitStatus ?? -1) (\(detail))"
    }
}

/// The step threw in the isolated process; its error, as text.
public struct IsolatedStepFailed: Error, CustomStringConvertible, Sendable {
    public var description: String

    public init(description: String) {
        self.description = description
    }
}

/// Runs each step in a new process of an executable that answers `IsolatedStep` on its standard
/// input with an `IsolatedStep.Answer` on its standard output (`leasehold step`).
public struct ChildProcessStepIsolation: StepIsolation {
    public let executable: URL
    public let arguments: [String]
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

    /// This process's executable (`/proc/self/exe` where there is one).
    public static var ownExecutable: URL {
        let link = "/proc/self/exe"
        if let target = try? FileManager.default.destinationOfSymbolicLink(atPath: link) {  // Linux only
            return URL(fileURLWithPath: target)
        }
        return URL(fileURLWithPath: CommandLine.arguments[0])
    }

    public func run(_ step: IsolatedStep) async throws -> StepOutput {
        let input = try JSONEncoder().encode(step)
        let process = Process()
        process.executableURL = executable
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let stdin = Pipe()
        let stdout = Pipe()
        process.standardInput = stdin
        process.standardOutput = stdout
        try process.run()
        // The child's pipes are read and waited for on a thread of Dispatch's own, never on one
        // of the concurrency pool's few: a step may run for minutes.
        let (output, status, reason) = try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation {
                (continuation: CheckedContinuation<(Data, Int32, Process.TerminationReason), any Error>) in
                DispatchQueue.global().async {
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
            }
        } onCancel: {
            if process.isRunning { process.terminate() }
        }
        try Task.checkCancellation()
        if reason == .uncaughtSignal {
            throw StepCrashed(signal: status, exitStatus: nil, detail: "isolated step process")
        }
        guard status == 0, let answer = try? JSONDecoder().decode(IsolatedStep.Answer.self, from: output) else {
            // (`try?`: an answer that does not decode is the same fact as no answer.)
            throw StepCrashed(signal: nil, exitStatus: status, detail: "no answer from the isolated step process")
        }
        switch answer {
        case .finished(let output): return output
        case .waiting(let request): throw WaitingForEvent(request: request)
        case .failed(let error): throw IsolatedStepFailed(description: error)
        }
    }
}
