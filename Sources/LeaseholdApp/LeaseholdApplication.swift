import ArgumentParser
import LeaseholdEngine

/// A Leasehold application: a program that offers its own workflows with the whole `leasehold`
/// command line — `serve`, `migrate`, `status`, `run`, `release` — and the same flags,
/// environment variables, defaults and behaviour.
///
/// An application package depends on this package's `LeaseholdApp` product and, in its `main`,
/// hands its workflows to one call:
///
/// ```swift
/// import LeaseholdApp
///
/// @main
/// struct DocumentReview {
///     static func main() async {
///         await LeaseholdApplication(name: "document-review") { resources in
///             [try reviewWorkflow(records: resources.environment["RECORDS_URL"])]
///         }.main()
///     }
/// }
/// ```
///
/// The `leasehold` executable is one such application, over the samples.
public struct LeaseholdApplication: Sendable {
    /// Makes the application's workflows. Called once per process that runs steps (a replica, an
    /// isolated step, `run`), and to list the workflows' names in `run --help`.
    public typealias Workflows = @Sendable (ApplicationResources) throws -> [Workflow]

    /// The command's name in usage lines and messages (the executable's name, as a rule).
    public var name: String
    /// One line saying what the application is, shown at the top of `--help`.
    public var abstract: String
    /// The application's workflows, given the resources of the process.
    public var workflows: Workflows

    /// - Parameters:
    ///   - name: the command's name in usage lines and messages.
    ///   - abstract: one line for the top of `--help`.
    ///   - workflows: makes the workflows; it may open a pool of its own for an external system
    ///     with `ApplicationResources.postgres(url:maxConnections:)`.
    public init(
        name: String, abstract: String = "A multi-replica workflow-handler server over PostgreSQL.",
        workflows: @escaping Workflows
    ) {
        self.name = name
        self.abstract = abstract
        self.workflows = workflows
    }

    /// Parses the process's arguments, runs the command they name, and exits the process with its
    /// status (0, 1 for a failed `run`, 2 for a bad setting).
    public func main() async {
        await Self.$current.withValue(self) { await RootCommand.main() }
    }

    /// Runs the command named by `arguments` (without the executable's name) and returns its exit
    /// status instead of exiting: for tests of an application's command line.
    public func run(arguments: [String]) async -> Int32 {
        await Self.$current.withValue(self) {
            do {
                var command = try RootCommand.parseAsRoot(arguments)
                if var asynchronous = command as? any AsyncParsableCommand {
                    try await asynchronous.run()
                } else {
                    try command.run()
                }
                return 0
            } catch {
                let code = RootCommand.exitCode(for: error).rawValue
                if code != 0 { print(RootCommand.fullMessage(for: error)) }
                return code
            }
        }
    }

    /// The application whose command line runs in this task (set by `main`).
    @TaskLocal static var current: LeaseholdApplication?

    /// The application whose command runs (set by `main` or `run(arguments:)`; a command run
    /// outside them is a programming error).
    static var running: LeaseholdApplication {
        guard let current else {
            fatalError("a LeaseholdApp command ran outside LeaseholdApplication.main()")
        }
        return current
    }

    /// The workflows, in a registry, for these resources.
    func registry(_ resources: ApplicationResources) throws -> WorkflowRegistry {
        try WorkflowRegistry(workflows(resources))
    }
}
