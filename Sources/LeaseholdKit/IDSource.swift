/// Where a replica's random ids come from (server-chosen handler ids, run ids): the system's
/// generator in production, a seeded one in the simulator, so that a seed replays the same ids.
public struct IDSource: Sendable {
    private let draw: @Sendable () -> UInt64

    /// Ids from `draw`, called once per 64 random bits.
    public init(_ draw: @escaping @Sendable () -> UInt64) { self.draw = draw }

    /// The system's generator.
    public static let system = IDSource {
        var generator = SystemRandomNumberGenerator()
        return generator.next()
    }

    /// 64 random bits.
    public func next() -> UInt64 { draw() }

    /// A random id in the layout of a lowercase version-4 UUID.
    public func uuidString() -> String {
        var high = next()
        var low = next()
        high = (high & ~0xF000) | 0x4000  // version 4
        low = (low & ~(0xC << 60)) | (0x8 << 60)  // RFC 4122 variant
        let hex = String(high, radix: 16).leftPadded(to: 16) + String(low, radix: 16).leftPadded(to: 16)
        let c = Array(hex)
        return [c[0..<8], c[8..<12], c[12..<16], c[16..<20], c[20..<32]].map { String($0) }.joined(separator: "-")
    }
}

extension String {
    fileprivate func leftPadded(to length: Int) -> String {
        count >= length ? self : String(repeating: "0", count: length - count) + self
    }
}
