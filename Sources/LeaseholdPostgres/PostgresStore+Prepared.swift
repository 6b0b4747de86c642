import Foundation
import PostgresNIO

/// The statements on the hot path (every run, checkpoint, inbox event, stream read and renewal)
/// run as named prepared statements: Postgres parses and plans each once per connection instead
/// of on every call (planning was ~30 % of Postgres's CPU per `run` as unnamed statements).
///
/// A shape's SQL is its builder's SQL: every value is bound, so the text does not depend on the
/// values; `prepared` checks that in debug builds. Optional values are cast to a type in the SQL
/// (`$n::text`), so a statement first prepared with a NULL there still gets a fixed type.
protocol PreparedShape {
    static var sql: String { get }
}

struct Prepared<Shape: PreparedShape>: PostgresPreparedStatement {
    static var name: String { "leasehold_\(Shape.self)" }
    static var sql: String { Shape.sql }

    let bindings: PostgresBindings

    func makeBindings() -> PostgresBindings { bindings }
    func decodeRow(_ row: PostgresRow) -> PostgresRow { row }
}

extension PostgresStore {
    enum Shapes {
        enum Renewal: PreparedShape {
            static let sql = Statements.renewal(
                replica: "", instance: "", address: "", ttlSeconds: 0, excluding: [], fresh: false
            ).sql
        }
        enum Create: PreparedShape {
            static let sql = Statements.create(
                id: "", workflow: "", runID: "", owner: "", eventID: "", event: "", token: 0
            ).sql
        }
        enum Claim: PreparedShape {
            static let sql = Statements.claim(replica: "", instance: "", limit: 1, only: nil).sql
        }
        enum Checkpoint: PreparedShape {
            static let sql =
                // Cannot throw for these empty values (it throws only on unencodable records).
                (try? Statements.checkpoint(
                    id: "", token: 0, replica: "", snapshot: Data(), status: "", error: nil, result: nil,
                    expected: 0, lastSequence: 0, sequences: [], records: [], consumed: []))?.sql ?? ""
        }
        enum CreateBatch: PreparedShape {
            static let sql = Statements.createBatch(
                ids: [], workflows: [], runIDs: [], owners: [], eventIDs: [], events: [], tokens: [], lockTimeout: nil
            ).sql
        }
        enum CheckpointBatch: PreparedShape {
            static let sql = Statements.checkpointBatch([], lockTimeout: nil).sql
        }
        enum AppendInbox: PreparedShape {
            static let sql = Statements.appendInbox(
                id: "", eventID: "", event: "", accepting: nil, replica: nil, instance: "", claim: false
            ).sql
        }
        enum AppendClaim: PreparedShape {
            static let sql = Statements.appendInbox(
                id: "", eventID: "", event: "", accepting: nil, replica: nil, instance: "", claim: true
            ).sql
        }
        enum PendingInbox: PreparedShape {
            static let sql = Statements.pendingInbox(id: "").sql
        }
        enum Handler: PreparedShape {
            static let sql = Statements.handler(id: "").sql
        }
        enum Events: PreparedShape {
            static let sql = Statements.events(id: "", after: 0, limit: 0).sql
        }
    }

    func prepared<Shape: PreparedShape>(_ query: PostgresQuery, as shape: Shape.Type) -> Prepared<Shape> {
        assert(query.sql == Shape.sql, "the prepared statement \(Shape.self) no longer matches its builder")
        return Prepared(bindings: query.binds)
    }
}
