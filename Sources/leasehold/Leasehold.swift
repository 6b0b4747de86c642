import ArgumentParser

@main
struct Leasehold: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "leasehold",
        abstract: "A multi-replica workflow-handler server over PostgreSQL.",
        discussion: """
            Any replica accepts any request; PostgreSQL leases (SKIP LOCKED, fencing tokens) decide which \
            replica runs which handler. Without --database-url a single process runs on the in-memory store.
            """,
        subcommands: [
            Serve.self, Migrate.self, Status.self, Run.self, Release.self, IsolatedStepCommand.self, CrashWatch.self,
        ])
}
