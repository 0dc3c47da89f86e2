/**
 * Memory for request bodies being received, bounded in total and per client key. Each body being
 * read holds a reservation that grows with the bytes that arrived; a body that would take its
 * client beyond its share is refused (503, its connection closed), so slow or stalled uploads
 * hold at most `perClient` bytes per address until their timeouts. When the total is reached, the
 * client holding the most gives up its largest body (its connection is closed) — provided it holds
 * more than the asking client would — otherwise the asker is refused. Pure bookkeeping; each
 * reservation brings the `abort` that closes its connection.
 */
export interface BodyLimits {
	/** Bytes of all bodies being received. */
	total: number;
	/** Bytes of the bodies one client key is sending at once. */
	perClient: number;
}

export interface BodyReservation {
	/** Accounts `n` more bytes; false when they do not fit (the caller refuses the body). */
	grow(n: number): boolean;
	/** Gives everything back (idempotent): the body was read, refused or abandoned. */
	release(): void;
}

interface Entry {
	client: string;
	bytes: number;
	abort: () => void;
	done: boolean;
}

export class BodyBudget {
	readonly #byClient = new Map<string, Set<Entry>>();
	readonly #clientBytes = new Map<string, number>();
	#total = 0;

	constructor(private readonly limits: BodyLimits) {}

	/** Bytes held in all. */
	get total(): number {
		return this.#total;
	}

	heldBy(client: string): number {
		return this.#clientBytes.get(client) ?? 0;
	}

	open(client: string, abort: () => void): BodyReservation {
		const e: Entry = { client, bytes: 0, abort, done: false };
		let set = this.#byClient.get(client);
		if (!set) {
			set = new Set();
			this.#byClient.set(client, set);
		}
		set.add(e);
		return {
			grow: (n) => this.#grow(e, n),
			release: () => this.#release(e),
		};
	}

	#grow(e: Entry, n: number): boolean {
		if (e.done) return false;
		const mine = this.heldBy(e.client);
		if (mine + n > this.limits.perClient) return false;
		while (this.#total + n > this.limits.total) {
			const victim = this.#victim(e.client, mine + n);
			if (!victim) return false;
			this.#release(victim);
			victim.abort();
		}
		e.bytes += n;
		this.#clientBytes.set(e.client, mine + n);
		this.#total += n;
		return true;
	}

	/** The largest body of the client holding the most bytes, if it holds more than `than`. */
	#victim(except: string, than: number): Entry | undefined {
		let top: string | undefined;
		let topBytes = than;
		for (const [c, b] of this.#clientBytes)
			if (c !== except && b > topBytes) {
				top = c;
				topBytes = b;
			}
		if (top === undefined) return undefined;
		let best: Entry | undefined;
		for (const x of this.#byClient.get(top) ?? [])
			if (!best || x.bytes > best.bytes) best = x;
		return best;
	}

	#release(e: Entry): void {
		if (e.done) return;
		e.done = true;
		const set = this.#byClient.get(e.client);
		set?.delete(e);
		if (set && set.size === 0) this.#byClient.delete(e.client);
		const left = this.heldBy(e.client) - e.bytes;
		if (left > 0) this.#clientBytes.set(e.client, left);
		else this.#clientBytes.delete(e.client);
		this.#total -= e.bytes;
		e.bytes = 0;
	}
}
