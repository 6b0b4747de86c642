import LeaseholdStore
import Synchronization

/// Tokens for handlers created by their first checkpoint (a `run`'s first pass runs before its
/// handler is written, under a token it already has). Reserved from the store's sequence in
/// blocks; each is handed to one handler only, and counted as granted at once, so that a database
/// that went back in time is judged against it (`LeaseKeeper+Database.swift`).
extension LeaseKeeper {
    static let tokenBlock = 256

    /// A token no other handler has or will have. - Throws: the store's error when a block
    /// cannot be reserved; `StoreError.unavailable` when the replica started over meanwhile.
    func takeToken() async throws -> FencingToken {
        // Only while this replica can prove its leases and trusts the database it talks to: a
        // handler launched otherwise would run its first pass for nothing (it cannot be written).
        guard leasesProvable else { throw StoreError.unavailable("this replica cannot prove its leases") }
        let (token, epoch) = try state.withLock { state -> (FencingToken?, Int) in
            guard Self.trustsDatabase(state) else { throw StoreError.unavailable("the replica is starting over") }
            return (state.reservedTokens.popLast(), state.tokenEpoch)
        }
        if let token { return token }
        let block = try await store.reserveTokens(Self.tokenBlock)
        return try state.withLock { state in
            // Reserved from a database this replica has since stopped trusting (or is checking):
            // not used.
            guard state.tokenEpoch == epoch, Self.trustsDatabase(state), let highest = block.max() else {
                throw StoreError.unavailable("the replica is starting over")
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
    func discardReservedTokens() {
        state.withLock { state in
            state.reservedTokens = []
            state.tokenEpoch += 1
        }
    }
}
