import LeaseholdApp

// The whole server: Leasehold's command line (serve, migrate, status, run, release) over this
// application's workflow. Its external systems' addresses come from the environment.
await LeaseholdApplication(name: "document-review", abstract: "Reviews documents on a Leasehold cluster.") {
    resources in
    [try DocumentReview.workflow(services: Services(environment: resources.environment))]
}.main()
