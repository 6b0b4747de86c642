import CoreMetrics
import Foundation
import LeaseholdKit
import LeaseholdStore
import Logging
import Synchronization

/// Tokens for handlers created by their first checkpoint (a `run`'s first pass runs before its
/// handler is written, under a token it already has). Reserved from the store's sequence in
/// blocks; each is handed to one handler only, and counted as granted at once, so that a database
/// that went back in time is judged against it (`LeaseKeeper+FailoverCheck.swift`). The machine
/// keeps the reserve (`LeaseMachine.takeToken`): the failover check discards it in the same step
/// as it distrusts the database.
extension LeaseKeeper {
    static let tokenBlock = 256

    /// A token no other handler has or will have, or nil when none may be handed out now: only
    /// while this replica can prove its leases (registered, renewed within the self-fencing
    /// limit) and trusts the database it talks to. A handler launched otherwise would run its
    /// first pass for nothing; the caller creates the handler first instead, as a `run` with a
    /// client's id does. - Throws: the store's error when a block cannot be reserved.
    func takeToken() async throws -> FencingToken? {
        switch state.withLock({ $0.takeToken(at: clock.now) }) {
        case .refused: return nil
        case .token(let token): return token
        case .reserve(let epoch):
            let block = try await store.reserveTokens(Self.tokenBlock)
            return state.withLock { $0.reserved(block, epoch: epoch) }
        }
    }

    /// Forgets every reserved token (they belong to a database this replica no longer trusts).
    func discardReservedTokens() { state.withLock { $0.discardReservedTokens() } }
}
