/**
 * The RCAR session table: one entry per auth request, bounded in total and per client key (an
 * IPv4 address or an IPv6 /64, client-address.ts). Pure bookkeeping; the clock comes in.
 *
 * Life of a session:
 * - **challenged** (after auth): lives `challengeTtlMs` (default 60 s, at most the session TTL) —
 *   a guest attests within seconds of its auth, so a session that never attests is dropped early.
 * - **verifying**: its one attest has begun (the nonce is spent from here on); never evicted.
 * - **attested**: lives `ttlMs` from the attest; its cookie fetches resources.
 * A failed attest removes the session at once: a spent nonce holds no room.
 *
 * When a client is at its own bound, its oldest attested session makes room (its token still
 * fetches resources); a client whose sessions are all still attesting is refused. When the table
 * is full, room is taken from the client holding the most sessions — its oldest challenged
 * session, else its oldest attested one — provided it holds at least two more than the asking
 * client; otherwise the asker is refused. So a flood from some addresses only ever refuses those
 * addresses, while a client with few sessions always gets one.
 */

import type { Claims, TeeType } from "../attest/claims.js";
import { randomFromPool } from "../crypto/random-pool.js";
import type { HashAlgorithm } from "../kbs/report-data.js";
import type { ParsedTeePubKey } from "../kbs/tee-pubkey.js";
import { Tally } from "./tally.js";

export interface Attested {
	claims: Claims;
	teePubKey: ParsedTeePubKey;
	evidenceDigest: string;
}

export type SessionState = "challenged" | "verifying" | "attested";

export interface Session {
	readonly id: string;
	/** The client key it counts under. */
	readonly client: string;
	readonly tee: TeeType;
	readonly nonce: string;
	readonly hash: HashAlgorithm;
	expiresMs: number;
	state: SessionState;
	attested?: Attested;
}

export interface SessionLimits {
	/** All sessions, in any state. */
	max: number;
	/** Sessions one client key may hold at once. */
	perClient: number;
	/** Lifetime of an attested session (from its attest). */
	ttlMs: number;
	/** Lifetime of a session that has not attested (default min(60 s, ttlMs)). */
	challengeTtlMs?: number;
}

export type CreateResult =
	| { ok: true; session: Session; evicted?: Session }
	| { ok: false; reason: "full" | "client-full" };

interface Held {
	/** challenged and verifying sessions, oldest first */
	pending: Set<Session>;
	/** attested sessions, oldest first */
	attested: Set<Session>;
}

export class SessionTable {
	readonly #byId = new Map<string, Session>();
	/** Not yet attested, in creation order = expiry order (one challenge TTL for all). */
	readonly #pending = new Map<string, Session>();
	/** Attested, in attest order = expiry order (one TTL for all). */
	readonly #attested = new Map<string, Session>();
	readonly #held = new Map<string, Held>();
	readonly #tally = new Tally();
	readonly #challengeTtlMs: number;

	constructor(private readonly limits: SessionLimits) {
		this.#challengeTtlMs = Math.min(
			limits.challengeTtlMs ?? 60_000,
			limits.ttlMs,
		);
	}

	get size(): number {
		return this.#byId.size;
	}

	/** Sessions held by one client key. */
	heldBy(client: string): number {
		return this.#tally.get(client);
	}

	create(
		client: string,
		tee: TeeType,
		hash: HashAlgorithm,
		nowMs: number,
	): CreateResult {
		this.sweep(nowMs);
		let evicted: Session | undefined;
		if (this.#tally.get(client) >= this.limits.perClient) {
			const own = first(this.#held.get(client)?.attested);
			if (!own) return { ok: false, reason: "client-full" };
			this.#remove(own);
			evicted = own;
		}
		if (this.#byId.size >= this.limits.max) {
			const victim = this.#victim(this.#tally.get(client));
			if (!victim) return { ok: false, reason: "full" };
			this.#remove(victim);
			evicted = victim;
		}
		const session: Session = {
			id: randomFromPool(24).toString("base64url"),
			client,
			tee,
			nonce: randomFromPool(32).toString("base64"),
			hash,
			expiresMs: nowMs + this.#challengeTtlMs,
			state: "challenged",
		};
		this.#byId.set(session.id, session);
		this.#pending.set(session.id, session);
		this.#heldOf(client).pending.add(session);
		this.#tally.add(client);
		return evicted ? { ok: true, session, evicted } : { ok: true, session };
	}

	/** The live session with this id, or undefined (unknown, expired or evicted). */
	get(id: string, nowMs: number): Session | undefined {
		const s = this.#byId.get(id);
		if (!s) return undefined;
		if (nowMs >= s.expiresMs) {
			this.#remove(s);
			return undefined;
		}
		return s;
	}

	/** challenged → verifying: its one attest has begun. False for any other state. */
	beginAttest(s: Session): boolean {
		if (s.state !== "challenged" || !this.#byId.has(s.id)) return false;
		s.state = "verifying";
		return true;
	}

	/** verifying → attested, living `ttlMs` from now. */
	attest(s: Session, a: Attested, nowMs: number): void {
		if (s.state !== "verifying" || !this.#byId.has(s.id)) return;
		this.#pending.delete(s.id);
		this.#held.get(s.client)?.pending.delete(s);
		s.state = "attested";
		s.attested = a;
		s.expiresMs = nowMs + this.limits.ttlMs;
		this.#attested.set(s.id, s);
		this.#heldOf(s.client).attested.add(s);
	}

	/** Removes a session (a failed attest: its nonce is spent, its room is free). */
	drop(s: Session): void {
		this.#remove(s);
	}

	sweep(nowMs: number): void {
		for (const m of [this.#pending, this.#attested])
			for (const s of m.values()) {
				if (s.expiresMs > nowMs) break;
				this.#remove(s);
			}
	}

	/**
	 * The session to give up for a client holding `held` when the table is full: from the heaviest
	 * client, if it holds at least two more, its oldest challenged, else its oldest attested one.
	 */
	#victim(held: number): Session | undefined {
		const top = this.#tally.heaviest();
		if (!top || top[1] < held + 2) return undefined;
		const h = this.#held.get(top[0]);
		if (!h) return undefined;
		for (const s of h.pending) if (s.state === "challenged") return s;
		return first(h.attested);
	}

	#heldOf(client: string): Held {
		let h = this.#held.get(client);
		if (!h) {
			h = { pending: new Set(), attested: new Set() };
			this.#held.set(client, h);
		}
		return h;
	}

	#remove(s: Session): void {
		if (!this.#byId.delete(s.id)) return;
		this.#pending.delete(s.id);
		this.#attested.delete(s.id);
		const h = this.#held.get(s.client);
		if (h) {
			h.pending.delete(s);
			h.attested.delete(s);
			if (h.pending.size === 0 && h.attested.size === 0)
				this.#held.delete(s.client);
		}
		this.#tally.sub(s.client);
	}
}

function first<T>(set: Set<T> | undefined): T | undefined {
	if (!set) return undefined;
	for (const x of set) return x;
	return undefined;
}
