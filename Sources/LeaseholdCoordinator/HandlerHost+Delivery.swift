import CoreMetrics
import LeaseholdEngine
import LeaseholdKit
import LeaseholdRuntime
import LeaseholdStore
import Logging
import Synchronization

/// How events reach live handlers. Every path ends in the durable inbox, and none relies on a
/// single notification: a direct delivery or a NOTIFY is the fast path, the reconciliation that
/// reads the pending inbox of every live handler (each renewal period, on every LISTEN
/// (re)subscription, after a failed wake) is the guarantee. Runtimes skip inbox ids they already
/// have, so delivering twice is harmless.
extension HandlerHost {
    /// Hands a just-launched handler its pending inbox. A failed read is retried (backing off)
    /// while the handler still runs here under a provable lease; after one TTL of failures the
    /// handler is handed off (its lease released, or lapsing if the database is gone), so it
    /// never sits live here without its start event.
    func deliverPending(_ handler: LiveHandler) async {
        let deadline = clock.now + configuration.leaseTTL
        var backoff = Backoff(.waitedOn)
        while self.handler(handler.id) === handler, handler.isActive {
            do {
                let id = handler.id
                let pending = try await storeCall { try await $0.pendingInbox(id) }
                handler.deliver(pending)
                return
            } catch {
                logger.warning(
                    "inbox read failed", metadata: [LogKeys.handlerID: "\(handler.id)", LogKeys.error: "\(error)"])
                do {
                    guard try await backoff.wait(on: clock, before: deadline) else {
                        handler.stop(.handoff)
                        return
                    }
                } catch { return }
            }
        }
    }

    /// Appends an event for `id` through `append` and sees that it reaches the handler. When
    /// the handler is neither live here nor being loaded here, the append may claim it for this
    /// replica (`append(true)`): then it comes back with its state and pending inbox and is launched
    /// here, a reload in one round trip. Live here, the append answers the pending inbox, which is
    /// delivered at once. Otherwise as any inbox event: a wake-up (a reload here when it is
    /// unowned), or the owner's NOTIFY.
    /// - Throws: the append's error (nothing is acknowledged then); nothing after the append throws.
    func accept(_ id: HandlerID, append: @escaping @Sendable (_ claim: Bool) async throws -> InboxReceipt)
        async throws -> InboxReceipt
    {
        var answered: InboxReceipt?
        if case .leader = beginLoad(id) {
            defer { endLoad(id) }
            let claim = !isShuttingDown && keeper.leasesProvable
            let started = clock.now
            do {
                // Bounded, as `reload`'s claim: callers of `reload` for this id wait on it (and the
                // store waits only briefly for the row lock of an append that may claim).
                let receipt = try await storeCall { _ in try await append(claim) }
                if let claimed = receipt.claimed {
                    await launchReloaded(claimed, since: started)
                    return receipt
                }
                answered = receipt
            } catch StoreError.handlerBusy {
                // Its row is held by another transaction: appended below without claiming, after
                // this load ended, so that nothing waits for that lock behind it.
            }
        }
        let receipt: InboxReceipt
        if let answered {
            receipt = answered
        } else {
            receipt = try await storeCall { _ in try await append(false) }
        }
        guard receipt.accepted else { return receipt }
        if let handler = handler(id) {
            if let pending = receipt.pending, pending.token == handler.lease.token {
                handler.deliver(pending.events)
            } else {
                await wake(id)
            }
        } else if receipt.owner == nil {
            await wake(id)
        }
        return receipt
    }

    /// An inbox event arrived for `id` (a NOTIFY or a local append), or its lease was taken away
    /// (a cancel). A live handler gets its pending inbox; one not live here is reloaded here if it
    /// is claimable (hibernated with work, or orphaned).
    func wake(_ id: HandlerID) async {
        if handler(id) == nil {
            do {
                // Launched by this call's claim, the runtime has the inbox that claim read, which
                // holds this event (committed before its wake-up). Live here by another way (the
                // claimer, or another caller's reload, read the inbox before this event may have
                // committed): it gets its pending inbox below, as any live handler does.
                guard try await reload(id) != .launched else { return }
            } catch is CancellationError {
                return  // shutdown
            } catch {
                // Not lost: the event is durable and the claim sweep picks up a hibernated
                // handler with inbox work; it only waits for that sweep instead.
                logger.warning(
                    "reload on wake failed", metadata: [LogKeys.handlerID: "\(id)", LogKeys.error: "\(error)"])
                return
            }
        }
        guard let handler = handler(id) else { return }  // not claimable here: another replica runs it
        do {
            guard let record = try await storeCall({ try await $0.handler(id) }), record.status == .running,
                record.fencingToken == handler.lease.token
            else {
                logger.info("lease taken away", metadata: [LogKeys.handlerID: "\(id)"])
                fence([handler], reason: "lease taken away")
                return
            }
            let pending = try await storeCall { try await $0.pendingInbox(id) }
            handler.deliver(pending)
        } catch is CancellationError {
            return  // shutdown
        } catch {
            logger.warning(
                "wake failed, reconciling", metadata: [LogKeys.handlerID: "\(id)", LogKeys.error: "\(error)"])
            await reconcile()
        }
    }

    /// Delivers the pending inbox of every live handler, read in one statement. Runs each renewal
    /// period, on every LISTEN (re)subscription and after a failed wake.
    /// - Returns: false when the read failed (the next period retries).
    @discardableResult
    func reconcile() async -> Bool {
        defer { signals.passed(.reconcile) }
        let live = liveHandlers.filter(\.isActive)
        guard !live.isEmpty else { return true }
        let pending: [HandlerID: [InboxEvent]]
        do {
            let ids = live.map(\.id)
            pending = try await storeCall { try await $0.pendingInbox(of: ids) }
        } catch is CancellationError {
            return false  // shutdown
        } catch {
            logger.warning(
                "inbox reconciliation failed", metadata: [LogKeys.count: "\(live.count)", LogKeys.error: "\(error)"])
            return false
        }
        for handler in live {
            guard let events = pending[handler.id], !events.isEmpty else { continue }
            handler.deliver(events)
        }
        return true
    }

    /// What `reload` found or did.
    enum ReloadOutcome {
        /// Not live here: not claimable (another replica runs it, or it finished), or shutting down.
        case notHere
        /// This call claimed it and launched it with the inbox its claim read.
        case launched
        /// Live here, launched by something else (already live, or another caller's reload).
        case live
    }

    /// Makes sure the handler runs somewhere: when it is claimable (hibernated with work, or
    /// orphaned), claims it here and starts it. Concurrent callers for one id share one load.
    @discardableResult
    func reload(_ id: HandlerID) async throws -> ReloadOutcome {
        switch beginLoad(id) {
        case .live:
            return .live
        case .follower(let load):
            // Waits for the load it followed to end, not for a moment with no load of the id (a
            // later load could otherwise keep it waiting; found by review). A cancelled follower
            // returns at once: what it answers is then only a guess.
            await loadFollowers.wait(for: id) { state.withLock { $0.loading[id] != load } }
            return handler(id) != nil ? .live : .notHere
        case .leader:
            defer { endLoad(id) }
            guard !isShuttingDown, keeper.leasesProvable else { return .notHere }
            let started = clock.now
            // Bounded: a claim stuck on a dead connection must not hold every follower (and the
            // wake-up consumer) forever; if it did commit, the lease lapses unrun and is released.
            let replica = replicaID
            let claimed = try await storeCall { try await $0.claim(replica, limit: 1, only: id) }
            guard let handler = claimed.first else { return .notHere }
            await launchReloaded(handler, since: started)
            return .launched
        }
    }

    private enum LoadRole {
        /// Live here already.
        case live
        /// Another load of it, with this number, is in progress here: wait for it (`loading`).
        case follower(UInt64)
        /// The one load of it here: end it with `endLoad`.
        case leader
    }

    /// Loads of one handler inside a replica are single-flight: the first caller leads, later
    /// ones follow until it ends.
    private func beginLoad(_ id: HandlerID) -> LoadRole {
        state.withLock { state -> LoadRole in
            if state.live[id] != nil { return .live }
            if let load = state.loading[id] { return .follower(load) }
            state.loads += 1
            state.loading[id] = state.loads
            return .leader
        }
    }

    private func endLoad(_ id: HandlerID) {
        _ = state.withLock { $0.loading.removeValue(forKey: id) }
        loadFollowers.wake(id)
    }

    private func launchReloaded(_ claimed: ClaimedHandler, since started: Duration) async {
        await launch(claimed, reason: claimed.acquired.rawValue)
        metrics.reloads.increment()
        metrics.reloadLatency.recordInterval(since: started, clock: clock)
    }

    /// Consumes inbox wake-ups and LISTEN (re)subscriptions from the store until cancelled.
    func runWakeups() async {
        await withDiscardingTaskGroup { group in
            group.addTask {
                for await id in self.store.signals.inboxWakeups {
                    await self.wake(HandlerID(id))
                }
            }
            group.addTask {
                for await _ in self.store.signals.resubscriptions {
                    await self.reconcile()
                }
            }
        }
    }
}
