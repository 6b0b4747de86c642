import CoreMetrics
import LeaseholdKit
import LeaseholdRuntime
import LeaseholdStore
import Synchronization

/// Tokens for handlers created by their first checkpoint (a `run`'s first pass runs before its
/// handler is written, under a token it already has). Reserved from the store's sequence in
/// blocks; each is handed to one handler only, and counted as granted at once, so that a database
/// that went back in time is judged against it (`LeaseKeeper+FailoverCheck.swift`).
extension LeaseKeeper {
    static let tokenBlock = 256

    /// A token no other handler has or will have, or nil when none may be handed out now: only
    /// while this replica can prove its leases (registered, renewed within the self-fencing
    /// limit) and trusts the database it talks to. A handler launched otherwise would run its
    /// first pass for nothing; the caller creates the handler first instead, as a `run` with a
    /// client's id does. - Throws: the store's error when a block cannot be reserved.
    func takeToken() async throws -> FencingToken? {
        guard leasesProvable else { return nil }
        let taken = state.withLock { state -> (token: FencingToken?, epoch: Int)? in
            guard Self.trustsDatabase(state) else { return nil }
            return (state.reservedTokens.popLast(), state.tokenEpoch)
        }
        guard let (token, epoch) = taken else { return nil }
        if let token { return token }
        let block = try await store.reserveTokens(Self.tokenBlock)
        return state.withLock { state -> FencingToken? in
            // Reserved from a database this replica has since stopped trusting (or is checking):
            // not used.
            guard state.tokenEpoch == epoch, Self.trustsDatabase(state), let highest = block.max() else {
                return nil
            }
            state.highestToken = max(state.highestToken, highest)
            var rest = block.sorted(by: >)
            let token = rest.removeLast()
            state.reservedTokens.append(contentsOf: rest)
            return token
        }
    }

    /// Not starting over, not checking a database that failed over, none waiting for its check.
    static func trustsDatabase(_ state: State) -> Bool {
        !state.startingOver && !state.checkingDatabase && state.pendingNode == nil
    }

    /// Forgets every reserved token (the replica starts over; they belong to a database it no
    /// longer trusts).
    func discardReservedTokens() { state.withLock { Self.discardReservedTokens(&$0) } }

    /// The same, inside a lock the caller holds.
    static func discardReservedTokens(_ state: inout State) {
        state.reservedTokens = []
        state.tokenEpoch += 1
    }
}
