/**
 * The RCAR session table: one entry per auth request, bounded in total and per client, expiring
 * after a fixed time. A session's nonce is single use: the first attest on it, successful or not,
 * spends it. Pure bookkeeping; the clock comes in.
 */

import type { Claims, TeeType } from "../attest/claims.js";
import { randomFromPool } from "../crypto/random-pool.js";
import type { HashAlgorithm } from "../kbs/report-data.js";
import type { ParsedTeePubKey } from "../kbs/tee-pubkey.js";

export interface Attested {
	claims: Claims;
	teePubKey: ParsedTeePubKey;
	evidenceDigest: string;
}

export interface Session {
	readonly id: string;
	readonly client: string;
	readonly tee: TeeType;
	readonly nonce: string;
	readonly hash: HashAlgorithm;
	readonly expiresMs: number;
	state: "challenged" | "attested" | "spent";
	attested?: Attested;
}

export interface SessionLimits {
	/** All sessions, attested or not. */
	max: number;
	/** Sessions one client address may hold at once. */
	perClient: number;
	ttlMs: number;
}

export type CreateResult =
	| { ok: true; session: Session }
	| { ok: false; reason: "full" | "client-full" };

export class SessionTable {
	/** Insertion order is expiry order (one TTL for all), so expired entries sit at the front. */
	readonly #byId = new Map<string, Session>();
	readonly #perClient = new Map<string, number>();

	constructor(private readonly limits: SessionLimits) {}

	get size(): number {
		return this.#byId.size;
	}

	create(
		client: string,
		tee: TeeType,
		hash: HashAlgorithm,
		nowMs: number,
	): CreateResult {
		this.sweep(nowMs);
		if (this.#byId.size >= this.limits.max)
			return { ok: false, reason: "full" };
		const held = this.#perClient.get(client) ?? 0;
		if (held >= this.limits.perClient)
			return { ok: false, reason: "client-full" };
		const session: Session = {
			id: randomFromPool(24).toString("base64url"),
			client,
			tee,
			nonce: randomFromPool(32).toString("base64"),
			hash,
			expiresMs: nowMs + this.limits.ttlMs,
			state: "challenged",
		};
		this.#byId.set(session.id, session);
		this.#perClient.set(client, held + 1);
		return { ok: true, session };
	}

	/** The live session with this id, or undefined (unknown or expired). */
	get(id: string, nowMs: number): Session | undefined {
		const s = this.#byId.get(id);
		if (!s) return undefined;
		if (nowMs >= s.expiresMs) {
			this.#remove(s);
			return undefined;
		}
		return s;
	}

	sweep(nowMs: number): void {
		for (const s of this.#byId.values()) {
			if (s.expiresMs > nowMs) break;
			this.#remove(s);
		}
	}

	#remove(s: Session): void {
		if (!this.#byId.delete(s.id)) return;
		const n = (this.#perClient.get(s.client) ?? 1) - 1;
		if (n <= 0) this.#perClient.delete(s.client);
		else this.#perClient.set(s.client, n);
	}
}
