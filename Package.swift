// swift-tools-version: 6.0
import PackageDescription

let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
]

let package = Package(
    name: "leasehold",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "leasehold", targets: ["leasehold"]),
        .executable(name: "leasehold-bench", targets: ["leasehold-bench"]),
        .executable(name: "leasehold-sim", targets: ["leasehold-sim"]),
        .library(name: "LeaseholdEngine", targets: ["LeaseholdEngine"]),
        .library(name: "LeaseholdServer", targets: ["LeaseholdServer"]),
        .library(name: "LeaseholdApp", targets: ["LeaseholdApp"]),
    ],
    dependencies: [
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.2"),
        // Already resolved through postgres-nio and Hummingbird; named because the store runs a
        // statement's check and write on its connection's event loop (NIOCore's EventLoop).
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.3"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        // `swift package generate-documentation --target LeaseholdEngine` (the workflow API's DocC
        // catalog; CI builds it with warnings as errors). A plugin only: nothing links it.
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
    ],
    targets: [
        .target(name: "LeaseholdEngine", swiftSettings: swiftSettings),
        // The small toolkit every part shares (mirrored by Python's leasehold_kit): the clock,
        // duration units, the one time-limit race, a once-set flag.
        .target(name: "LeaseholdKit", swiftSettings: swiftSettings),
        .target(
            name: "LeaseholdStore", dependencies: ["LeaseholdEngine", "LeaseholdKit"], swiftSettings: swiftSettings),
        // Signal-handler code must be async-signal-safe: C, not Swift (crash containment).
        .target(name: "CCrashReport"),
        .target(
            name: "LeaseholdRuntime", dependencies: ["LeaseholdEngine", "LeaseholdKit", "CCrashReport"],
            swiftSettings: swiftSettings),
        // The samples' workflows; the ledger sample's PostgreSQL ledger uses the store's checked
        // statements (LeaseholdPostgres), which never depends on the samples.
        .target(
            name: "LeaseholdSamples",
            dependencies: [
                "LeaseholdEngine", "LeaseholdKit", "LeaseholdPostgres",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings),
        .target(
            name: "LeaseholdPostgres",
            dependencies: [
                "LeaseholdStore", "LeaseholdKit",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            resources: [.copy("Migrations")],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "LeaseholdCoordinator",
            dependencies: [
                "LeaseholdRuntime", "LeaseholdStore", "LeaseholdKit",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "LeaseholdServer",
            dependencies: [
                "LeaseholdCoordinator", "LeaseholdStore", "LeaseholdKit",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            resources: [.copy("Resources")],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "LeaseholdTestSupport",
            dependencies: [
                "LeaseholdPostgres", "LeaseholdStore",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // The command line of every Leasehold application: an application's `main` hands its
        // workflows to `LeaseholdApplication`, which gives it serve, migrate, status and run.
        .target(
            name: "LeaseholdApp",
            dependencies: [
                "LeaseholdServer", "LeaseholdPostgres", "LeaseholdRuntime", "LeaseholdStore", "LeaseholdEngine",
                "LeaseholdCoordinator", "LeaseholdKit",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ],
            swiftSettings: swiftSettings
        ),
        // The deterministic simulator: the production coordinators on one seeded serial executor.
        .target(
            name: "LeaseholdSimulation",
            dependencies: [
                "LeaseholdCoordinator", "LeaseholdStore", "LeaseholdEngine", "LeaseholdKit", "LeaseholdSamples",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "leasehold-sim",
            dependencies: [
                "LeaseholdSimulation", .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: swiftSettings
        ),
        // `leasehold`: the application over the samples.
        .executableTarget(
            name: "leasehold",
            dependencies: ["LeaseholdApp", "LeaseholdEngine", "LeaseholdPostgres", "LeaseholdSamples"],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "leasehold-bench",
            dependencies: [
                "LeaseholdServer", "LeaseholdPostgres", "LeaseholdSamples", "LeaseholdKit",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(name: "LeaseholdKitTests", dependencies: ["LeaseholdKit"], swiftSettings: swiftSettings),
        .testTarget(
            name: "LeaseholdEngineTests",
            dependencies: ["LeaseholdEngine", "LeaseholdSamples"],
            exclude: ["Fixtures"],  // read from the source tree (#filePath): they stay where they are
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "LeaseholdRuntimeTests",
            dependencies: ["LeaseholdRuntime", "LeaseholdKit", "LeaseholdSamples", "LeaseholdTestSupport"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "LeaseholdStoreConformanceTests",
            dependencies: [
                "LeaseholdStore", "LeaseholdPostgres", "LeaseholdSamples", "LeaseholdTestSupport", "LeaseholdKit",
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "LeaseholdCoordinatorTests",
            dependencies: [
                "LeaseholdCoordinator", "LeaseholdPostgres", "LeaseholdSamples", "LeaseholdTestSupport", "LeaseholdKit",
                .product(name: "PostgresNIO", package: "postgres-nio"),
            ],
            exclude: ["Fixtures"],  // read from the source tree (#filePath)
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "LeaseholdSimulationTests", dependencies: ["LeaseholdSimulation"], swiftSettings: swiftSettings),
        .testTarget(
            name: "LeaseholdAppTests",
            dependencies: ["LeaseholdApp", "LeaseholdSamples", "LeaseholdPostgres", "LeaseholdKit"],
            resources: [.copy("Golden")],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "LeaseholdServerTests",
            dependencies: [
                "LeaseholdServer", "LeaseholdSamples", "LeaseholdTestSupport", "LeaseholdPostgres",
                .product(name: "HummingbirdTesting", package: "hummingbird"),
            ],
            swiftSettings: swiftSettings
        ),
    ]
)
