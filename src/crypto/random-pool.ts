/**
 * Random bytes for hot paths that need many small values (session ids, nonces, token ids, JWE
 * keys and IVs): one `randomFillSync` of 4 KiB from OpenSSL's CSPRNG, handed out in slices, each
 * byte once, each value a fresh copy (a later refill never changes a value already handed out).
 * `randomBytes` costs a few microseconds per call from its fixed overhead; this costs well under one.
 */
import { randomFillSync } from "node:crypto";

const POOL = 4096;
const pool = Buffer.allocUnsafeSlow(POOL);
let used = POOL;

export function randomFromPool(n: number): Buffer {
	if (n > POOL / 4) return randomFillSync(Buffer.allocUnsafe(n));
	if (used + n > POOL) {
		randomFillSync(pool);
		used = 0;
	}
	const out = Buffer.from(pool.subarray(used, used + n));
	pool.fill(0, used, used + n);
	used += n;
	return out;
}
