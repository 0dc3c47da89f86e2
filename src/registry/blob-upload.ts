/**
 * Writing blobs: skipped when the repository has them, mounted from another repository of the same
 * registry when possible (placeBlob), else uploaded (uploadBlob) — monolithically (POST, then PUT with the body) or in
 * chunks (POST, PATCH per chunk with Content-Range, PUT to finish). An upload that fails part way
 * starts over from a fresh session, within the retry budget.
 */
import type { Readable } from "node:stream";
import { DadiError } from "../errors.js";
import type { Descriptor } from "../oci/digest.js";
import { pushScope, type RegistryClient, unexpected } from "./client.js";
import { type HttpResponse, header } from "./http.js";
import { withRetries } from "./retry.js";

export interface UploadOptions {
	/** Upload in PATCH chunks of this size when the blob is larger; monolithic otherwise. */
	chunkSize?: number;
	/**
	 * Bytes of this blob the registry has acknowledged so far: called after each PATCH the
	 * registry accepted, and with the whole size once the upload is committed. Bytes handed to the
	 * socket but not yet acknowledged are not counted, so this never runs ahead of what arrived.
	 */
	onProgress?: (bytes: number) => void;
}

export type PushOutcome = "exists" | "mounted" | "uploaded";

export const DEFAULT_UPLOAD_CHUNK = 64 << 20;

/**
 * Makes the repository hold the blob without sending its bytes, when it can: "exists" when it
 * already has it, "mounted" when a cross-repository mount from one of `mountFrom` (repositories of
 * the same registry) worked; undefined when the bytes must be uploaded.
 */
export async function placeBlob(
	client: RegistryClient,
	repo: string,
	blob: Descriptor,
	mountFrom: readonly string[] = [],
): Promise<"exists" | "mounted" | undefined> {
	if (await client.hasBlob(repo, blob)) return "exists";
	for (const from of mountFrom) {
		if (from === repo) continue;
		const r = await startUpload(client, repo, { digest: blob.digest, from });
		if (r.mounted) return "mounted";
		// The registry could not mount but opened an upload session: close it.
		await cancelUpload(client, repo, r.location);
	}
	return undefined;
}

/**
 * Uploads the blob's bytes. `open` gives them from the start; it is called again for each
 * attempt (a failed upload starts over in a new session, within the retry budget).
 */
export async function uploadBlob(
	client: RegistryClient,
	repo: string,
	blob: Descriptor,
	open: () => Promise<Readable | Buffer>,
	o: UploadOptions = {},
): Promise<void> {
	const chunk = o.chunkSize ?? DEFAULT_UPLOAD_CHUNK;
	await withRetries(client.retry, async () => {
		o.onProgress?.(0);
		const { location } = await startUpload(client, repo);
		if (blob.size <= chunk) await putWhole(client, repo, blob, location, open);
		else
			await putChunked(client, repo, blob, location, open, chunk, o.onProgress);
	});
	o.onProgress?.(blob.size);
}

/** Opens an upload session (POST …/uploads/), or asks for a cross-repository mount. */
export async function startUpload(
	client: RegistryClient,
	repo: string,
	mount?: { digest: string; from: string },
): Promise<{ mounted: boolean; location: URL }> {
	const scopes = [pushScope(repo)];
	if (mount) scopes.push(`repository:${mount.from}:pull`);
	return client.exchange({
		what: "upload",
		scopes,
		build: () => {
			const url = client.url(`${repo}/blobs/uploads/`);
			if (mount) {
				url.searchParams.set("mount", mount.digest);
				url.searchParams.set("from", mount.from);
			}
			return { method: "POST", url, headers: { "content-length": "0" } };
		},
		handle: async (res) => {
			await res.body.dump().catch(() => {});
			if (res.status === 201 && mount)
				return { mounted: true, location: res.url };
			if (res.status !== 202)
				throw await unexpected(res, `starting an upload to ${repo}`);
			return { mounted: false, location: uploadLocation(res, repo) };
		},
	});
}

/** Best effort: a registry that cannot cancel lets the idle session expire on its own. */
export async function cancelUpload(
	client: RegistryClient,
	repo: string,
	location: URL,
): Promise<void> {
	await client
		.exchange({
			what: "upload",
			scopes: [pushScope(repo)],
			build: () => ({ method: "DELETE", url: location }),
			handle: async (res) => {
				await res.body.dump().catch(() => {});
			},
			once: true,
		})
		.catch(() => {});
}

function uploadLocation(res: HttpResponse, repo: string): URL {
	const loc = header(res, "location");
	if (!loc)
		throw new DadiError(
			"REMOTE_PROTOCOL",
			`upload to ${repo}: the registry gave no Location for the upload session`,
		);
	try {
		return new URL(loc, res.url);
	} catch {
		throw new DadiError(
			"REMOTE_PROTOCOL",
			`upload to ${repo}: the upload Location is not a URL`,
		);
	}
}

function withDigest(location: URL, digest: string): URL {
	const u = new URL(location);
	u.searchParams.set("digest", digest);
	return u;
}

async function putWhole(
	client: RegistryClient,
	repo: string,
	blob: Descriptor,
	location: URL,
	open: () => Promise<Readable | Buffer>,
): Promise<void> {
	// One attempt per session: a retry starts a new session (the caller's loop).
	await client.exchange({
		what: "upload",
		scopes: [pushScope(repo)],
		build: async () => ({
			method: "PUT",
			url: withDigest(location, blob.digest),
			headers: {
				"content-type": "application/octet-stream",
				"content-length": String(blob.size),
			},
			body: await open(),
			deadline: false,
		}),
		handle: async (res) => finishAnswer(res, repo, blob),
		once: true,
	});
}

async function putChunked(
	client: RegistryClient,
	repo: string,
	blob: Descriptor,
	start: URL,
	open: () => Promise<Readable | Buffer>,
	chunkSize: number,
	onProgress?: (bytes: number) => void,
): Promise<void> {
	let location = start;
	let sent = 0;
	const source = await open();
	for await (const piece of rechunk(source, chunkSize)) {
		const from = sent;
		const url = location;
		location = await client.exchange({
			what: "upload",
			scopes: [pushScope(repo)],
			build: () => ({
				method: "PATCH",
				url,
				headers: {
					"content-type": "application/octet-stream",
					"content-length": String(piece.length),
					"content-range": `${from}-${from + piece.length - 1}`,
				},
				body: piece,
			}),
			handle: async (res) => {
				await res.body.dump().catch(() => {});
				if (res.status !== 202)
					throw await unexpected(res, `uploading to ${repo}`);
				const range = header(res, "range");
				if (range !== undefined && range !== `0-${from + piece.length - 1}`)
					throw new DadiError(
						"REMOTE_PROTOCOL",
						`uploading to ${repo}: the registry holds ${range}, expected 0-${from + piece.length - 1}`,
					);
				return uploadLocation(res, repo);
			},
			once: true,
		});
		sent += piece.length;
		onProgress?.(sent);
	}
	if (sent !== blob.size)
		throw new DadiError(
			"DIGEST_MISMATCH",
			`uploading ${blob.digest}: the source gave ${sent} bytes, the descriptor says ${blob.size}`,
		);
	const done = location;
	await client.exchange({
		what: "upload",
		scopes: [pushScope(repo)],
		build: () => ({
			method: "PUT",
			url: withDigest(done, blob.digest),
			headers: { "content-length": "0" },
		}),
		handle: async (res) => finishAnswer(res, repo, blob),
		once: true,
	});
}

async function finishAnswer(
	res: HttpResponse,
	repo: string,
	blob: Descriptor,
): Promise<void> {
	if (res.status === 201 || res.status === 204) {
		await res.body.dump().catch(() => {});
		return;
	}
	const e = await unexpected(
		res,
		`finishing the upload of ${blob.digest} to ${repo}`,
	);
	if (res.status === 400 && /DIGEST_INVALID/.test(e.message))
		throw new DadiError(
			"DIGEST_MISMATCH",
			`uploading ${blob.digest} to ${repo}: the registry computed another digest for the bytes sent`,
		);
	throw e;
}

/** Re-cuts a byte stream into pieces of exactly `size` bytes (the last may be shorter). */
export async function* rechunk(
	source: Readable | Buffer,
	size: number,
): AsyncGenerator<Buffer> {
	if (Buffer.isBuffer(source)) {
		for (let i = 0; i < source.length; i += size)
			yield source.subarray(i, Math.min(source.length, i + size));
		return;
	}
	let parts: Buffer[] = [];
	let n = 0;
	for await (const chunk of source as AsyncIterable<Buffer>) {
		let c = chunk;
		while (c.length > 0) {
			const take = Math.min(size - n, c.length);
			parts.push(c.subarray(0, take));
			n += take;
			c = c.subarray(take);
			if (n === size) {
				yield Buffer.concat(parts, n);
				parts = [];
				n = 0;
			}
		}
	}
	if (n > 0) yield Buffer.concat(parts, n);
}
