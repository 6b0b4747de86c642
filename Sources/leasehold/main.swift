import LeaseholdApp
import LeaseholdEngine
import LeaseholdPostgres
import LeaseholdSamples

// `leasehold`: the Leasehold application over the samples. The ledger sample posts to the
// cluster's database through a pool of its own (an in-memory ledger in a single process); debug
// builds also offer `poison`, whose step traps on every attempt (the containment tests'), which
// the shipped (release) binary does not.
await LeaseholdApplication(name: "leasehold") { resources in
    let ledger: any FencedLedger =
        try resources.postgres(maxConnections: 4, name: "leasehold ledger").map {
            PostgresLedger(client: $0, logger: resources.logger)
        } ?? InMemoryLedger()
    var workflows = try Samples.all(ledger: ledger)
    #if DEBUG
        workflows.append(try Samples.poison())
    #endif
    return workflows
}.main()
