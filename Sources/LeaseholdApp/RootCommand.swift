import ArgumentParser

/// The application's command: its subcommands are the same for every application; its name and
/// abstract are the running application's (`LeaseholdApplication.current`).
struct RootCommand: AsyncParsableCommand {
    static var configuration: CommandConfiguration {
        let application = LeaseholdApplication.current
        return CommandConfiguration(
            commandName: application?.name ?? "leasehold",
            abstract: application?.abstract ?? "A multi-replica workflow-handler server over PostgreSQL.",
            discussion: """
                Any replica accepts any request; PostgreSQL leases (SKIP LOCKED, fencing tokens) decide which \
                replica runs which handler. Without --database-url a single process runs on the in-memory store.
                """,
            subcommands: [
                Serve.self, Migrate.self, Status.self, Run.self, Release.self, IsolatedStepCommand.self,
                CrashWatch.self,
            ])
    }
}
