import Foundation
import PostgresNIO

/// The SQL fragments several statements share: a lease's expiry and currency, the record's
/// columns. Each statement lives beside the operation that sends it (one file per subject).
extension PostgresStore {
    enum Statements {
        /// The effective expiry of a handler's lease (NULL when unowned): the earlier of the
        /// lease's own cap and its owner's registration. The same as the SQL function
        /// `leasehold_lease_expiry` (migration 0002), written inline: a SQL function with a
        /// subquery is not inlined and is planned on every call, which made a one-row record read
        /// take 0.23-0.25 ms instead of 0.13 ms inline (PL/pgSQL: 0.14-0.19 ms; pgbench, prepared,
        /// 4 clients, 2 busy cores).
        static func leaseExpiry(owner: String, cap: String) -> String {
            """
            CASE WHEN \(owner) IS NULL THEN NULL ELSE LEAST(\(cap), COALESCE(
                (SELECT r.lease_expires_at FROM replicas r WHERE r.id = \(owner)), 'epoch')) END
            """
        }

        /// "This lease is current", the one definition used by every fenced write (checkpoint,
        /// hibernation, release): the handler row's token and owner are the writer's, the lease's
        /// own cap has not passed, and the writer's registration is current. `row` is the handlers
        /// row (its columns, not a join, so that a write that waited on the row lock re-checks the
        /// row's newest version); `token` and `writer` are SQL expressions for the writer's lease.
        ///
        /// Inline: as a function (migration 0006's `leasehold_lease_is_current`, PL/pgSQL, kept in
        /// the schema for replicas of earlier versions during a rolling upgrade) each evaluation is
        /// a call into PL/pgSQL, four per echo `run` (pg_stat_statements), about 30 µs each.
        static func leaseIsCurrent(row: String, token: String, writer: String) -> String {
            """
            (\(row).fencing_token = \(token) AND \(row).owner_replica = \(writer) AND \(row).lease_expires_at > now() \
            AND EXISTS (SELECT 1 FROM replicas lr WHERE lr.id = \(writer) AND lr.lease_expires_at > now()))
            """
        }

        /// The `handlers` columns of a `HandlerRecord`, in the order `RecordRow` decodes them: the
        /// one list every record-answering statement's columns are made from.
        static let recordColumnNames = [
            "id", "workflow_name", "run_id", "status", "error", "result", "started_at", "updated_at", "completed_at",
            "owner_replica", "lease_expires_at", "fencing_token", "hibernated", "last_sequence", "wake_at",
        ]

        /// `recordColumnNames` of the row named `alias`, as stored (a CTE passing rows on).
        static func sourceColumns(_ alias: String) -> String {
            recordColumnNames.map { "\(alias).\($0)" }.joined(separator: ", ")
        }

        /// The columns of a `HandlerRecord` from the handlers row `h`, as `RecordRow` decodes them:
        /// the result as text, the lease expiry the effective one (`leaseExpiry`).
        static let recordColumns = recordColumnNames.map { name in
            switch name {
            case "result": "h.result::text"
            case "lease_expires_at": leaseExpiry(owner: "h.owner_replica", cap: "h.lease_expires_at")
            default: "h.\(name)"
            }
        }.joined(separator: ", ")

        /// The record's columns as an UPDATE of handlers returns them (its new values, under the
        /// same names, not the snapshot): a checkpoint answers the record it committed.
        static let writtenColumns = sourceColumns("handlers")

        /// What a checkpoint answers for each row it wrote: `recordColumns`, except that the lease
        /// expiry is the row's own column. Only finished rows are decoded, and for them (no owner,
        /// no lease) that is what `leaseExpiry` gives, NULL, without its lookup of the owner's
        /// registration on every running row.
        static let checkpointAnswer = recordColumnNames.map { $0 == "result" ? "h.result::text" : "h.\($0)" }
            .joined(separator: ", ")

        /// A reserved token the sequence is past (never to be issued by it again); false when the
        /// sequence is behind it (the database went back in time since the reservation).
        static func tokenIsPast(_ token: String) -> String {
            "\(token) <= COALESCE(pg_sequence_last_value('leasehold_fencing_tokens'::regclass), 0)"
        }
    }
}
