/// The faults of one seed, drawn up front: what happens, to which replica, when and for how
/// long. All end by `healedAt`; after it the wire loses nothing and every handler must finish.
public struct FaultPlan: Sendable, CustomStringConvertible {
    /// What a fault does.
    public enum Kind: Sendable, Equatable {
        /// The process dies at once (nothing it sends lands any more) and restarts after `for`.
        case crash
        /// The process stops for `for`; what it had sent lands after.
        case pause
        /// The replica cannot reach the database for `for`.
        case partition
        /// The database restarts: every session drops, nobody reaches it for `for`.
        case databaseRestart
        /// The replica's writes never answer (until cancelled) for `for`.
        case stuckWrites
        /// The replica's wall clock steps by `for` (forward).
        case wallClockStep
        /// The database's notifications do not reach the replica for `for` (silently: no
        /// reconnect tells it so).
        case notificationsLost
        /// The database fails over to a standby that lagged by `for`: what was written in the
        /// last `for` is lost (time goes back), every session drops, the timeline moves.
        case failoverLosingWrites
    }

    /// One fault of the plan.
    public struct Fault: Sendable, Equatable {
        /// What it does.
        public var kind: Kind
        /// To which replica (its slot, from 0; ignored by a database restart).
        public var replica: Int
        /// When it starts (simulated time since the start).
        public var at: Duration
        /// How long it lasts (for a clock step: by how much).
        public var `for`: Duration
    }

    /// The faults, in order of start.
    public var faults: [Fault]
    /// When the last fault ended (at least the end of the workload's window).
    public var healedAt: Duration

    /// `count` faults over `window`, each drawn from `random`.
    static func draw(count: Int, replicas: Int, window: Duration, using random: inout SeededRandom) -> FaultPlan {
        let kinds: [Kind] = [
            .crash, .pause, .partition, .databaseRestart, .stuckWrites, .wallClockStep, .notificationsLost,
            .failoverLosingWrites,
        ]
        var faults: [Fault] = []
        for _ in 0..<count {
            let kind = kinds[Int(random.next() % UInt64(kinds.count))]
            let at = random.duration(.seconds(5), window - .seconds(20))
            let length: Duration =
                switch kind {
                case .crash: random.duration(.seconds(1), .seconds(10))
                case .pause: random.duration(.milliseconds(500), .seconds(6))
                case .partition: random.duration(.milliseconds(500), .seconds(8))
                case .databaseRestart: random.duration(.milliseconds(200), .seconds(3))
                case .stuckWrites: random.duration(.seconds(1), .seconds(6))
                case .wallClockStep: random.duration(.seconds(1), .seconds(30))
                case .notificationsLost: random.duration(.seconds(5), .seconds(60))
                case .failoverLosingWrites: random.duration(.milliseconds(200), .seconds(3))
                }
            faults.append(Fault(kind: kind, replica: Int(random.next() % UInt64(replicas)), at: at, for: length))
        }
        faults.sort { ($0.at, $0.replica) < ($1.at, $1.replica) }
        let healedAt =
            faults.map {
                $0.at + ($0.kind == .wallClockStep || $0.kind == .failoverLosingWrites ? .seconds(1) : $0.for)
            }
            .max() ?? .zero
        return FaultPlan(faults: faults, healedAt: max(healedAt, window))
    }

    /// One line per fault.
    public var description: String {
        faults.map { "\($0.at) r\($0.replica + 1) \($0.kind) \($0.for)" }.joined(separator: "\n")
    }
}
