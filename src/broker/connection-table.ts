/**
 * Open connections per client key, bounded in total and per client. Pure bookkeeping over opaque
 * connections (the listener gives each a `drop` that destroys its socket).
 *
 * A new connection from a client at its own bound replaces that client's oldest idle connection
 * (no request in flight), or is refused. When the listener is full, the client holding the most
 * connections gives up its oldest idle connection — or its oldest one, if none is idle — provided
 * it holds at least two more than the newcomer's client; otherwise the newcomer is refused. So idle
 * or slow connections from a few addresses cannot keep everyone else out: they cost the flooder its
 * own connections. Exempt clients (trusted proxies, which carry many clients) have no per-client
 * bound and are never chosen to give up room.
 */
import { Tally } from "./tally.js";

export interface ConnectionLimits {
	/** All connections of the listener. */
	max: number;
	/** Connections one client key may hold. */
	perClient: number;
}

export interface Connection {
	readonly client: string;
	/** A request is in flight on it. */
	busy: boolean;
	/** Closes it (for good; the table has already forgotten it). */
	readonly drop: () => void;
}

export type AdmitResult =
	| { ok: true; connection: Connection; dropped?: Connection }
	| { ok: false; reason: "full" | "client-full" };

export class ConnectionTable {
	/** Per client key, oldest first. */
	readonly #byClient = new Map<string, Set<Connection>>();
	readonly #tally = new Tally();
	/** Client keys admitted as exempt (trusted proxies). */
	readonly #exempt = new Set<string>();
	#size = 0;

	constructor(private readonly limits: ConnectionLimits) {}

	get size(): number {
		return this.#size;
	}

	heldBy(client: string): number {
		return this.#tally.get(client);
	}

	/**
	 * Admits a new connection from `client`, possibly dropping another one to make room. `exempt`:
	 * the peer is a trusted proxy (no per-client bound; never made to give up room).
	 */
	admit(client: string, drop: () => void, exempt = false): AdmitResult {
		if (exempt) this.#exempt.add(client);
		let dropped: Connection | undefined;
		if (!exempt && this.#tally.get(client) >= this.limits.perClient) {
			const idle = this.#oldest(client, true);
			if (!idle) return { ok: false, reason: "client-full" };
			this.#evict(idle);
			dropped = idle;
		}
		if (this.#size >= this.limits.max) {
			const top = this.#tally.heaviest((k) => this.#exempt.has(k));
			if (!top || top[1] < this.#tally.get(client) + 2)
				return { ok: false, reason: "full" };
			const victim = this.#oldest(top[0], true) ?? this.#oldest(top[0], false);
			if (!victim) return { ok: false, reason: "full" };
			this.#evict(victim);
			dropped = victim;
		}
		const connection: Connection = { client, busy: false, drop };
		let set = this.#byClient.get(client);
		if (!set) {
			set = new Set();
			this.#byClient.set(client, set);
		}
		set.add(connection);
		this.#tally.add(client);
		this.#size++;
		return dropped
			? { ok: true, connection, dropped }
			: { ok: true, connection };
	}

	/** Forgets a connection that closed (idempotent). */
	closed(c: Connection): void {
		const set = this.#byClient.get(c.client);
		if (!set?.delete(c)) return;
		if (set.size === 0) {
			this.#byClient.delete(c.client);
			this.#exempt.delete(c.client);
		}
		this.#tally.sub(c.client);
		this.#size--;
	}

	#oldest(client: string, idleOnly: boolean): Connection | undefined {
		for (const c of this.#byClient.get(client) ?? [])
			if (!idleOnly || !c.busy) return c;
		return undefined;
	}

	#evict(c: Connection): void {
		this.closed(c);
		c.drop();
	}
}
