/**
 * Reading blobs: byte ranges (the lazy reader's only request) with the answer's Content-Range and
 * length checked, and whole blobs as a stream that resumes with a Range request where a broken
 * connection left off. Integrity is the caller's: ranges are authenticated by the sealed format's
 * AEAD, whole blobs by hashing what arrives.
 */
import { DadiError } from "../errors.js";
import type { Descriptor } from "../oci/digest.js";
import { pullScope, type RegistryClient, unexpected } from "./client.js";
import {
	discardBody,
	enforceRateFloor,
	type HttpResponse,
	header,
	networkError,
	readBody,
} from "./http.js";
import { backoffMs, isTransient, TransientError } from "./retry.js";

/** Bytes one attempt must deliver before its failures stop counting against the resume limit. */
const PROGRESS_BYTES = 1 << 20;

/** A registry that ignores Range may send a whole blob this small; we slice it. */
const WHOLE_BLOB_FALLBACK = 1 << 20;

export interface RangeOptions {
	/** Aborts the request. */
	signal?: AbortSignal;
	/** Called when the answer's headers arrive and for every piece of its body. */
	progress?: () => void;
	/** One attempt: transient errors go to the caller (which hedges and retries itself). */
	once?: boolean;
}

/** `length` bytes of a blob at `offset`, exactly, or an error after bounded retries. */
export async function readRange(
	client: RegistryClient,
	repo: string,
	blob: Descriptor,
	offset: number,
	length: number,
	o: RangeOptions = {},
): Promise<Buffer> {
	if (
		!Number.isSafeInteger(offset) ||
		!Number.isSafeInteger(length) ||
		offset < 0 ||
		length < 1 ||
		offset + length > blob.size
	)
		throw new DadiError(
			"INTERNAL",
			`range ${offset}+${length} outside blob ${blob.digest} (${blob.size} bytes)`,
		);
	const last = offset + length - 1;
	return client.exchange({
		what: "range",
		scopes: [pullScope(repo)],
		once: o.once,
		build: () => ({
			method: "GET",
			url: client.url(`${repo}/blobs/${blob.digest}`),
			headers: { range: `bytes=${offset}-${last}` },
			signal: o.signal,
		}),
		handle: async (res) => {
			o.progress?.();
			const what = `blob ${blob.digest.slice(0, 19)}… bytes ${offset}-${last}`;
			if (res.status === 200) {
				// The whole blob: acceptable only when small; otherwise someone strips Range.
				if (blob.size > WHOLE_BLOB_FALLBACK) {
					discardBody(res);
					throw new TransientError(
						"REMOTE_PROTOCOL",
						`${what}: the registry ignored the Range header and sent the whole ${blob.size}-byte blob; lazy reads need range support`,
					);
				}
				const all = await readBody(res, blob.size, what, undefined, o.progress);
				if (all.length !== blob.size)
					throw new TransientError(
						"NETWORK",
						`${what}: the whole-blob answer has ${all.length} bytes, not ${blob.size}`,
					);
				return Buffer.from(all.subarray(offset, offset + length));
			}
			if (res.status !== 206) throw await unexpected(res, what);
			const cr = parseContentRange(header(res, "content-range"));
			if (
				!cr ||
				cr.start !== offset ||
				cr.end !== last ||
				(cr.total !== undefined && cr.total !== blob.size)
			) {
				discardBody(res);
				throw new TransientError(
					"REMOTE_PROTOCOL",
					`${what}: the answer's Content-Range (${(header(res, "content-range") ?? "none").slice(0, 80)}) is not the range asked for`,
				);
			}
			const bytes = await readBody(res, length, what, undefined, o.progress);
			if (bytes.length !== length)
				throw new TransientError(
					"NETWORK",
					`${what}: the answer has ${bytes.length} bytes, not ${length}`,
				);
			return bytes;
		},
	});
}

/** `bytes START-END/TOTAL` (TOTAL may be `*`). */
export function parseContentRange(
	v: string | undefined,
): { start: number; end: number; total?: number } | undefined {
	if (v === undefined) return undefined;
	const m = /^\s*bytes\s+(\d{1,15})-(\d{1,15})\/(\d{1,15}|\*)\s*$/i.exec(v);
	if (!m) return undefined;
	const start = Number(m[1]);
	const end = Number(m[2]);
	if (end < start) return undefined;
	const total = m[3] === "*" ? undefined : Number(m[3]);
	if (total !== undefined && end >= total) return undefined;
	return total === undefined ? { start, end } : { start, end, total };
}

/**
 * The whole blob as a stream of buffers. A connection that breaks mid-body is resumed with a
 * Range request from the byte reached (bounded attempts without progress); bytes are never
 * repeated or skipped. The caller hashes what it receives.
 */
export async function* blobStream(
	client: RegistryClient,
	repo: string,
	blob: Descriptor,
): AsyncGenerator<Buffer> {
	let got = 0;
	let failures = 0;
	const what = `blob ${blob.digest.slice(0, 19)}… of ${client.registry}/${repo}`;
	while (got < blob.size || (blob.size === 0 && got === 0 && failures === 0)) {
		const from = got;
		const res: HttpResponse = await client.exchange<HttpResponse>({
			what: "blob",
			scopes: [pullScope(repo)],
			build: () => ({
				method: "GET",
				url: client.url(`${repo}/blobs/${blob.digest}`),
				headers:
					from > 0
						? { range: `bytes=${from}-` }
						: ({} as Record<string, string>),
				deadline: false,
			}),
			handle: async (r) => {
				if (r.status === 200 || (r.status === 206 && from > 0)) return r;
				throw await unexpected(r, what);
			},
		});
		let skip = 0;
		if (res.status === 206) {
			const cr = parseContentRange(header(res, "content-range"));
			if (!cr || cr.start !== from) {
				discardBody(res);
				throw new DadiError(
					"REMOTE_PROTOCOL",
					`${what}: resumed at the wrong offset`,
				);
			}
		} else skip = from; // the registry restarted from 0: drop what we already have
		const floor = enforceRateFloor(res, what, blob.size - from);
		try {
			for await (const chunk of res.body as AsyncIterable<Buffer>) {
				floor.add(chunk.length);
				let c = chunk;
				if (skip > 0) {
					const n = Math.min(skip, c.length);
					skip -= n;
					c = c.subarray(n);
					if (c.length === 0) continue;
				}
				if (got + c.length > blob.size) {
					discardBody(res);
					throw new DadiError(
						"DIGEST_MISMATCH",
						`${what}: more bytes than the ${blob.size} its descriptor says`,
					);
				}
				got += c.length;
				// An attempt that moved a real amount is progress; a drip is not.
				if (got - from >= PROGRESS_BYTES) failures = 0;
				yield c;
			}
			if (blob.size === 0) return;
			if (got < blob.size)
				throw new TransientError(
					"NETWORK",
					`${what}: the body ended early at byte ${got}`,
				);
		} catch (e) {
			const err = networkError(e, what);
			if (!isTransient(err)) throw err;
			failures++;
			if (failures >= client.retry.attempts)
				throw new DadiError(
					err.code,
					`${err.message} (gave up after ${failures} attempts)`,
					{ cause: err },
				);
			await new Promise((r) =>
				setTimeout(r, backoffMs(client.retry, failures)),
			);
		} finally {
			floor.stop();
		}
	}
}
