// swift-tools-version: 6.0
import PackageDescription

// A Leasehold application outside the server's repository: it depends on Leasehold (here by
// path; a team's package names the repository URL and a version) and brings its own workflow.
let package = Package(
    name: "document-review",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "leasehold", path: "../..")
    ],
    targets: [
        .executableTarget(
            name: "document-review",
            dependencies: [
                .product(name: "LeaseholdApp", package: "leasehold"),
                .product(name: "LeaseholdEngine", package: "leasehold"),
            ],
            swiftSettings: [.enableUpcomingFeature("ExistentialAny")]
        )
    ]
)
