import ArgumentParser
import Foundation
import LeaseholdEngine
import LeaseholdPostgres
import LeaseholdStore
import Logging

struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the cluster view: replicas, handlers, leases.")

    @OptionGroup var database: DatabaseOptions
    @Option(name: .customLong("lease-ttl"), help: "A replica is alive if it heartbeat within this (default 5s)")
    var leaseTTL: String = "5s"
    @Flag(help: "Print JSON instead of a table") var json = false
    @OptionGroup var logging: LogOptions

    func run() async throws {
        let (logger, url) = try databaseCommand(database, logging)
        let ttl: Duration
        do {
            ttl = try parseDuration(leaseTTL, flag: "--lease-ttl")
        } catch let error as BadSetting {
            throw fail(error.message)
        }
        // Lease expiry is judged by the database's clock (in `counts`), never this machine's.
        let (replicas, counts) = try await withDatabase(url, logger: logger) { database in
            (try await database.store.replicas(aliveWithin: ttl), try await database.store.counts())
        }
        let expired = counts.expiredLeases
        if json {
            let value: JSONValue = [
                "replicas": .array(
                    replicas.map {
                        [
                            "id": .string($0.id.rawValue), "address": .string($0.address), "alive": .bool($0.alive),
                            "handlers_owned": .int($0.handlersOwned), "last_heartbeat": .string("\($0.heartbeatAt)"),
                        ]
                    }),
                "handlers": [
                    "running": .int(counts.running), "hibernated": .int(counts.hibernated),
                    "completed": .int(counts.completed), "failed": .int(counts.failed),
                    "cancelled": .int(counts.cancelled),
                ],
                "expired_leases": .int(expired),
            ]
            print(value.jsonString)
            return
        }
        print(pad("REPLICA", 24) + pad("ADDRESS", 28) + pad("ALIVE", 7) + pad("OWNED", 7) + "LAST HEARTBEAT")
        for replica in replicas {
            print(
                pad(replica.id.rawValue, 24) + pad(replica.address, 28) + pad(replica.alive ? "yes" : "no", 7)
                    + pad(String(replica.handlersOwned), 7) + "\(replica.heartbeatAt)")
        }
        print("")
        print(
            "handlers: running \(counts.running), hibernated \(counts.hibernated), completed \(counts.completed), "
                + "failed \(counts.failed), cancelled \(counts.cancelled); expired leases \(expired)")
    }

    func pad(_ text: String, _ width: Int) -> String {
        text.count >= width ? text + " " : text + String(repeating: " ", count: width - text.count)
    }
}
