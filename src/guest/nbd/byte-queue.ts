/**
 * Bytes received from a socket and not yet parsed. Chunks are kept as they arrived; `take` copies
 * only when the bytes asked for span chunks, so a request header inside one chunk is a view.
 */
export class ByteQueue {
	private chunks: Buffer[] = [];
	/** Bytes of chunks[0] already consumed. */
	private head = 0;
	private total = 0;

	get length(): number {
		return this.total;
	}

	push(b: Buffer): void {
		if (b.length === 0) return;
		this.chunks.push(b);
		this.total += b.length;
	}

	/** Removes and returns the next `n` bytes; the caller checks `length >= n` first. */
	take(n: number): Buffer {
		if (n > this.total)
			throw new RangeError("ByteQueue.take beyond its length");
		if (n === 0) return Buffer.alloc(0);
		const first = this.chunks[0] as Buffer;
		if (first.length - this.head >= n) {
			const out = first.subarray(this.head, this.head + n);
			this.advance(n);
			return out;
		}
		const out = Buffer.allocUnsafe(n);
		let filled = 0;
		while (filled < n) {
			const c = this.chunks[0] as Buffer;
			const k = Math.min(n - filled, c.length - this.head);
			c.copy(out, filled, this.head, this.head + k);
			filled += k;
			this.advance(k);
		}
		return out;
	}

	/** Drops up to `n` bytes; returns how many were dropped. */
	skip(n: number): number {
		const k = Math.min(n, this.total);
		let left = k;
		while (left > 0) {
			const c = this.chunks[0] as Buffer;
			const d = Math.min(left, c.length - this.head);
			this.advance(d);
			left -= d;
		}
		return k;
	}

	clear(): void {
		this.chunks = [];
		this.head = 0;
		this.total = 0;
	}

	private advance(n: number): void {
		this.head += n;
		this.total -= n;
		if (this.head === (this.chunks[0] as Buffer).length) {
			this.chunks.shift();
			this.head = 0;
		}
	}
}
