/**
 * The broker's core: the three KBS exchanges (auth, attest, resource) and the admin operations,
 * over the session table, the verifiers, the policies and the persistent state. HTTP-free so
 * that the listeners, tests and benchmarks all drive the same logic.
 *
 * Order of checks on a resource request: who is asking (session cookie or token; 401), may they
 * have it (policy; 403, audited), does it exist (404, audited), then release (audited before the
 * response is sent).
 */
import { createHash, timingSafeEqual } from "node:crypto";
import type { TeeType, Verifier } from "../attest/claims.js";
import { VERSION } from "../cli/version.js";
import { DadiError } from "../errors.js";
import { canonicalJson } from "../kbs/canonical-json.js";
import { encryptToTeeKey, type FlattenedJwe } from "../kbs/jwe.js";
import {
	type AttestRequest,
	challengeBody,
	parseAttestRequest,
	parseAuthRequest,
	resourcePathFromUrl,
} from "../kbs/protocol.js";
import { reportDataDigest } from "../kbs/report-data.js";
import { parseTeePubKey } from "../kbs/tee-pubkey.js";
import type { CompiledPolicy } from "../policy/document.js";
import { decide } from "../policy/evaluate.js";
import type { AuditRecord } from "./audit-record.js";
import { clientKey } from "./client-address.js";
import type { CryptoOffload } from "./crypto-offload.js";
import {
	type CoalescerOptions,
	DEFAULT_COALESCING,
	DenialCoalescer,
} from "./denial-coalescer.js";
import { HttpProblem } from "./http.js";
import { type Attested, type Session, SessionTable } from "./sessions.js";
import type { BrokerState } from "./state-dir.js";
import type { TokenSigner } from "./token.js";

export interface BrokerOptions {
	state: BrokerState;
	signer: TokenSigner;
	verifiers: Verifier[];
	/** Policies from --policies DIR (read-only) and from the state dir (admin uploads). */
	policies: CompiledPolicy[];
	insecureDev: boolean;
	sessionTtlMs?: number;
	/** How long a session may wait for its attest (default 60 s, at most the session TTL). */
	challengeTtlMs?: number;
	tokenTtlSeconds?: number;
	maxSessions?: number;
	maxSessionsPerClient?: number;
	now?: () => number;
	log?: (line: string) => void;
	/** Worker threads for the JWE and token signature (none: inline). */
	offload?: CryptoOffload;
	/** How denials are coalesced in the audit log (denial-coalescer.ts). */
	coalescing?: CoalescerOptions;
}

export interface AuthResult {
	sessionId: string;
	expiresMs: number;
	body: Record<string, unknown>;
}

export interface ResourceRequest {
	client: string;
	sessionId?: string;
	token?: string;
	/** The URL tail after /kbs/v0/resource/. */
	path: string;
	/** The image the guest says it is opening (?image=), for policies; "" if none. */
	image: string;
}

function unauth(detail: string): DadiError {
	return new DadiError("SESSION_INVALID", detail);
}

export class Broker {
	readonly sessions: SessionTable;
	readonly #verifiers = new Map<TeeType, Verifier>();
	#policies: CompiledPolicy[];
	readonly #now: () => number;
	readonly #sessionTtlMs: number;
	readonly #tokenTtl: number;
	readonly #denials: DenialCoalescer;
	readonly #summaries: NodeJS.Timeout;

	constructor(private readonly o: BrokerOptions) {
		this.#now = o.now ?? Date.now;
		this.#sessionTtlMs = o.sessionTtlMs ?? 5 * 60_000;
		this.#tokenTtl = o.tokenTtlSeconds ?? 5 * 60;
		for (const v of o.verifiers) {
			if (v.tee === "sample" && !o.insecureDev)
				throw new DadiError(
					"USAGE",
					"the sample TEE verifier proves nothing and is only available with --insecure-dev",
				);
			this.#verifiers.set(v.tee, v);
		}
		this.#policies = [...o.policies];
		this.#denials = new DenialCoalescer(o.coalescing ?? DEFAULT_COALESCING);
		// summaries of coalesced denials are written when their window ends
		this.#summaries = setInterval(
			() => {
				for (const r of this.#denials.due(this.#now()))
					this.#write(r).catch((e: unknown) =>
						this.o.log?.(
							`audit: a denial summary was not written: ${(e as Error).message}`,
						),
					);
			},
			Math.max(100, (o.coalescing ?? DEFAULT_COALESCING).windowMs / 2),
		);
		this.#summaries.unref();
		this.sessions = new SessionTable({
			max: o.maxSessions ?? 10_000,
			perClient: o.maxSessionsPerClient ?? 256,
			ttlMs: this.#sessionTtlMs,
			challengeTtlMs: o.challengeTtlMs,
		});
	}

	get policies(): readonly CompiledPolicy[] {
		return this.#policies;
	}

	setPolicies(p: CompiledPolicy[]): void {
		this.#policies = [...p];
	}

	get insecureDev(): boolean {
		return this.o.insecureDev;
	}

	get tees(): TeeType[] {
		return [...this.#verifiers.keys()];
	}

	/** POST /kbs/v0/auth */
	auth(client: string, body: unknown): AuthResult {
		const req = parseAuthRequest(body);
		const verifier = this.#verifiers.get(req.tee as TeeType);
		if (!verifier)
			throw unauth(
				req.tee === "sample"
					? "the sample TEE is for development only and this broker runs without --insecure-dev"
					: `this broker has no verifier for TEE "${req.tee}" (it verifies: ${this.tees.join(", ") || "none"})`,
			);
		const now = this.#now();
		const made = this.sessions.create(
			clientKey(client),
			verifier.tee,
			req.hash,
			now,
		);
		if (!made.ok)
			throw new HttpProblem(
				503,
				"ServiceUnavailable",
				made.reason === "full"
					? "the broker's session table is full; retry shortly"
					: "this client holds too many open sessions; finish or let them expire",
				{ "retry-after": "1" },
			);
		return {
			sessionId: made.session.id,
			// the cookie outlives the challenge: it also fetches resources once attested
			expiresMs: now + this.#sessionTtlMs,
			body: challengeBody(made.session.nonce, req),
		};
	}

	/** POST /kbs/v0/attest: the attestation token, or an error (the nonce is spent either way). */
	async attest(
		client: string,
		sessionId: string | undefined,
		body: unknown,
	): Promise<string> {
		const session = this.attestSession(sessionId);
		this.beginAttest(session);
		return this.finishAttest(client, session, body);
	}

	/**
	 * The session an attest names, which must be waiting for its attest; 401 otherwise. The cheap
	 * check, made before the request body is read: nothing is spent yet.
	 */
	attestSession(sessionId: string | undefined): Session {
		const session = this.#session(sessionId);
		if (session.state !== "challenged")
			throw unauth(
				"this session's nonce was already used; start again with /kbs/v0/auth",
			);
		return session;
	}

	/** The attest's one use of the session's nonce begins (401 if another attest took it). */
	beginAttest(session: Session): void {
		if (!this.sessions.beginAttest(session))
			throw unauth(
				"this session's nonce was already used; start again with /kbs/v0/auth",
			);
	}

	/** An attest that began and will not finish (its body was refused or cut off): spent. */
	abandonAttest(session: Session): void {
		this.sessions.drop(session);
	}

	/** The rest of an attest that began: parse, bind, verify; the token, or the session is dropped. */
	async finishAttest(
		client: string,
		session: Session,
		body: unknown,
	): Promise<string> {
		try {
			const { attested, token } = await this.#verifyAttest(
				client,
				session,
				body,
			);
			this.sessions.attest(session, attested, this.#now());
			return await token;
		} catch (e) {
			this.sessions.drop(session);
			throw e;
		}
	}

	async #verifyAttest(
		client: string,
		session: Session,
		body: unknown,
	): Promise<{ attested: Attested; token: Promise<string> }> {
		let req: AttestRequest;
		try {
			req = parseAttestRequest(body);
		} catch (e) {
			await this.#audit({
				event: "deny",
				client,
				tee: session.tee,
				status: 400,
				detail: (e as Error).message,
			});
			throw e;
		}
		let evidenceDigest = "";
		try {
			evidenceDigest = createHash("sha384")
				.update(
					canonicalJson({
						primary: req.evidence,
						additional: req.additionalEvidence,
					}),
				)
				.digest("hex");
		} catch {
			const e = new DadiError(
				"INPUT_INVALID",
				"tee-evidence cannot be digested (nested too deeply or not JSON data)",
			);
			await this.#audit({
				event: "deny",
				client,
				tee: session.tee,
				status: 400,
				detail: e.message,
			});
			throw e;
		}
		const deny = async (e: DadiError): Promise<never> => {
			await this.#audit({
				event: "deny",
				client,
				tee: session.tee,
				evidenceDigest,
				status: e.code === "INPUT_INVALID" ? 400 : 401,
				detail: e.message,
			});
			throw e;
		};
		const a = Buffer.from(req.nonce);
		const b = Buffer.from(session.nonce);
		if (a.length !== b.length || !timingSafeEqual(a, b))
			return deny(
				new DadiError(
					"EVIDENCE_INVALID",
					"runtime-data.nonce is not this session's nonce",
				),
			);
		let teePubKey: ReturnType<typeof parseTeePubKey>;
		try {
			teePubKey = parseTeePubKey(req.teePubKey, "runtime-data.tee-pubkey");
		} catch (e) {
			return deny(e as DadiError);
		}
		const expectedReportData = reportDataDigest({
			nonce: req.nonce,
			teePubKey: req.teePubKey,
			additionalEvidence: req.additionalEvidence,
			hash: session.hash,
		});
		const expectedInitData = req.initData
			? createHash(session.hash).update(req.initData.body).digest()
			: undefined;
		const verifier = this.#verifiers.get(session.tee);
		if (!verifier) return deny(unauth("no verifier for this TEE"));
		let claims: Awaited<ReturnType<Verifier["verify"]>>;
		try {
			claims = await verifier.verify({
				evidence: req.evidence,
				expectedReportData,
				expectedInitData,
				now: new Date(this.#now()),
			});
		} catch (e) {
			if (e instanceof DadiError) return deny(e);
			return deny(
				new DadiError("EVIDENCE_INVALID", "the evidence could not be verified"),
			);
		}
		const token = this.o.signer.issueAsync(
			{
				claims,
				teePubKey: teePubKey.jwk,
				evidenceDigest,
				nowMs: this.#now(),
				ttlSeconds: this.#tokenTtl,
				build: `dadi-broker ${VERSION}`,
			},
			this.o.offload
				? (input) => (this.o.offload as CryptoOffload).sign(input)
				: undefined,
		);
		return { attested: { claims, teePubKey, evidenceDigest }, token };
	}

	/** GET /kbs/v0/resource/REPO/TYPE/TAG */
	async resource(r: ResourceRequest): Promise<FlattenedJwe> {
		const who = this.#whoIsAsking(r);
		const path = resourcePathFromUrl(r.path);
		const base = {
			client: r.client,
			tee: who.claims.tee,
			evidenceDigest: who.evidenceDigest,
			resource: path,
		};
		const d = decide(
			this.#policies,
			{ claims: who.claims, resource: path, request: { image: r.image } },
			{ insecureDev: this.o.insecureDev },
		);
		if (!d.allow) {
			await this.#audit({
				...base,
				event: "deny",
				decision: "deny",
				reasons: d.reasons,
				status: 403,
			});
			throw new DadiError(
				"POLICY_DENIED",
				`policy denies ${path}: ${d.reasons.join("; ")}`,
			);
		}
		const value = await this.o.state.keystore.get(path);
		if (value === undefined) {
			await this.#audit({
				...base,
				event: "deny",
				decision: "deny",
				policy: d.policy,
				reasons: ["no such resource"],
				status: 404,
			});
			throw new DadiError("INPUT_NOT_FOUND", `resource ${path} does not exist`);
		}
		const jwe = this.o.offload
			? await this.o.offload.jwe(value, who.teePubKey)
			: encryptToTeeKey(value, who.teePubKey);
		await this.#audit({
			...base,
			event: "release",
			decision: "allow",
			policy: d.policy,
			status: 200,
		});
		return jwe;
	}

	#session(id: string | undefined): Session {
		if (!id)
			throw unauth("no kbs-session-id cookie; start with POST /kbs/v0/auth");
		const s = this.sessions.get(id, this.#now());
		if (!s)
			throw unauth(
				"unknown or expired session; start again with POST /kbs/v0/auth",
			);
		return s;
	}

	#whoIsAsking(r: ResourceRequest) {
		let fromSession: Session["attested"];
		if (r.sessionId !== undefined && r.token === undefined) {
			const s = this.#session(r.sessionId);
			if (s.state !== "attested" || !s.attested)
				throw unauth(
					"this session has not attested; POST /kbs/v0/attest first",
				);
			fromSession = s.attested;
		}
		if (r.token !== undefined) {
			const t = this.o.signer.check(r.token, this.#now());
			const sub = Object.values(t.submods)[0];
			const claims = sub?.["dadi.claims"];
			if (!claims) throw unauth("the attestation token carries no claims");
			const teePubKey = parseTeePubKey(
				t["tee-pubkey"],
				"the token's tee-pubkey",
			);
			if (r.sessionId !== undefined) {
				const s = this.#session(r.sessionId);
				if (
					s.attested &&
					s.attested.teePubKey.thumbprint !== teePubKey.thumbprint
				)
					throw unauth(
						"the token and the session belong to different tee-pubkeys",
					);
			}
			return { claims, teePubKey, evidenceDigest: t["evidence-digest"] };
		}
		if (!fromSession)
			throw unauth("no session cookie or attestation token; attest first");
		return fromSession;
	}

	/**
	 * Records a decision (durably, before the caller answers) and logs it. A denial may only be
	 * counted, for a summary record later: a client being refused cannot grow the log at will.
	 */
	async #audit(r: AuditRecord): Promise<void> {
		const now =
			r.event === "deny"
				? this.#denials.offer(clientKey(r.client), r, this.#now())
				: [r];
		await Promise.all(now.map((x) => this.#write(x)));
	}

	async #write(r: AuditRecord): Promise<void> {
		await this.o.state.audit.append(r);
		this.o.log?.(
			[
				r.event,
				r.resource,
				`client=${r.client}`,
				r.tee ? `tee=${r.tee}` : "",
				r.policy ? `policy=${r.policy}` : "",
				r.status ? `status=${r.status}` : "",
				r.count ? `count=${r.count}` : "",
				r.detail ? `(${r.detail})` : "",
				r.reasons?.length ? `(${r.reasons.join("; ")})` : "",
			]
				.filter(Boolean)
				.join(" "),
		);
	}

	async audit(r: AuditRecord): Promise<void> {
		await this.#audit(r);
	}

	/** Stops the summary timer and writes the summaries of open denial windows. */
	async close(): Promise<void> {
		clearInterval(this.#summaries);
		await Promise.all(this.#denials.drain().map((r) => this.#write(r)));
	}
}
