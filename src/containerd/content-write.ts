/**
 * Storing a blob in containerd's content store through its Write stream (one ingest per stream,
 * named by a ref such as "layer-sha256:…"): STAT opens the ingest (AlreadyExists when the blob is
 * stored already), WRITE messages append from offset 0 (which also restarts an ingest an
 * interrupted pull left), COMMIT seals it with the expected size and digest and the blob's labels.
 * Every message is answered before the next is sent. The bytes are hashed on the way too: a source
 * that sends anything but the descriptor's bytes is DIGEST_MISMATCH, and the ingest is aborted.
 */
import { createHash } from "node:crypto";
import { status } from "@grpc/grpc-js";
import { DadiError } from "../errors.js";
import type { Descriptor } from "../oci/digest.js";
import type { ContainerdClient } from "./client.js";
import { fromGrpcError, grpcCode } from "./grpc-errors.js";

/** Bytes per WRITE message (containerd accepts messages up to 16 MiB). */
const PIECE = 1 << 20;
/** How long one message may wait for its answer. */
const ANSWER_MS = 5 * 60_000;
/** A ref another writer holds ("locked"): how often to look again, and how long. */
const LOCKED_RETRY_MS = 500;
const LOCKED_ATTEMPTS = 120;

// biome-ignore lint/suspicious/noExplicitAny: decoded protobuf messages are dynamic
type Msg = any;

export interface WriteBlobOptions {
	/** The ingest's name, as containerd's pull names it: "manifest-…", "config-…", "layer-…". */
	ref: string;
	desc: Descriptor;
	/** Labels the stored blob gets. */
	labels: Record<string, string>;
	/** The blob's bytes, from the start. */
	open: () => Promise<AsyncIterable<Buffer>> | AsyncIterable<Buffer>;
	/** Bytes accepted by containerd so far. */
	onProgress?: (bytes: number) => void;
}

/** "written", or "exists" when containerd has the blob already (then `labels` were not applied). */
export async function writeBlob(
	client: ContainerdClient,
	o: WriteBlobOptions,
): Promise<"written" | "exists"> {
	for (let attempt = 1; ; attempt++) {
		try {
			return await writeOnce(client, o);
		} catch (e) {
			const locked =
				grpcCode(e) === status.UNAVAILABLE &&
				/locked/i.test(String((e as { details?: string }).details));
			if (!locked || attempt >= LOCKED_ATTEMPTS)
				throw fromGrpcError(e, `storing ${o.desc.digest} in containerd`);
			// Another pull is writing the same blob: wait for it, then see whether it is stored.
			await new Promise((r) => setTimeout(r, LOCKED_RETRY_MS));
			if (await client.contentInfo(o.desc.digest)) return "exists";
		}
	}
}

async function writeOnce(
	client: ContainerdClient,
	o: WriteBlobOptions,
): Promise<"written" | "exists"> {
	const stream = client.duplex("content", "Write");
	const waiting: { resolve: (m: Msg) => void; reject: (e: unknown) => void }[] =
		[];
	let failure: unknown;
	stream.on("data", (m: Msg) => waiting.shift()?.resolve(m));
	stream.on("error", (e: unknown) => {
		failure = e;
		for (const w of waiting.splice(0)) w.reject(e);
	});
	stream.on("end", () => {
		const e = new DadiError(
			"REMOTE_PROTOCOL",
			`storing ${o.desc.digest}: containerd ended the write stream early`,
		);
		for (const w of waiting.splice(0)) w.reject(e);
	});
	const send = (m: Msg): Promise<Msg> => {
		if (failure) return Promise.reject(failure);
		return new Promise((resolve, reject) => {
			const timer = setTimeout(() => {
				stream.cancel();
				reject(
					new DadiError(
						"NETWORK",
						`storing ${o.desc.digest}: containerd did not answer for ${ANSWER_MS / 1000} s`,
					),
				);
			}, ANSWER_MS);
			waiting.push({
				resolve: (v) => {
					clearTimeout(timer);
					resolve(v);
				},
				reject: (e) => {
					clearTimeout(timer);
					reject(e);
				},
			});
			stream.write(m);
		});
	};
	let opened = false;
	try {
		await send({
			action: "STAT",
			ref: o.ref,
			total: o.desc.size,
			expected: o.desc.digest,
		});
		opened = true;
		const hash = createHash("sha256");
		let offset = 0;
		let pending: Buffer[] = [];
		let pendingBytes = 0;
		const flush = async () => {
			if (pendingBytes === 0) return;
			const data = Buffer.concat(pending, pendingBytes);
			pending = [];
			pendingBytes = 0;
			const r = await send({ action: "WRITE", offset, data });
			offset += data.length;
			if (Number(r.offset) !== offset)
				throw new DadiError(
					"REMOTE_PROTOCOL",
					`storing ${o.desc.digest}: containerd is at byte ${r.offset} after a write that should end at ${offset}`,
				);
			o.onProgress?.(offset);
		};
		for await (const chunk of await o.open()) {
			if (offset + pendingBytes + chunk.length > o.desc.size)
				throw new DadiError(
					"DIGEST_MISMATCH",
					`${o.desc.digest}: the source sent more than the ${o.desc.size} bytes its descriptor says`,
				);
			hash.update(chunk);
			pending.push(chunk);
			pendingBytes += chunk.length;
			if (pendingBytes >= PIECE) await flush();
		}
		await flush();
		const digest = `sha256:${hash.digest("hex")}`;
		if (offset !== o.desc.size || digest !== o.desc.digest)
			throw new DadiError(
				"DIGEST_MISMATCH",
				`${o.desc.digest}: the source sent ${offset} bytes hashing to ${digest}, not the descriptor's ${o.desc.size} bytes`,
			);
		await send({
			action: "COMMIT",
			offset,
			total: o.desc.size,
			expected: o.desc.digest,
			labels: o.labels,
		});
		stream.end();
		return "written";
	} catch (e) {
		stream.cancel();
		if (grpcCode(e) === status.ALREADY_EXISTS) return "exists";
		if (opened) await client.contentAbort(o.ref).catch(() => {});
		if (grpcCode(e) === status.FAILED_PRECONDITION)
			throw new DadiError(
				"DIGEST_MISMATCH",
				`${o.desc.digest}: containerd refused the bytes written: ${String((e as { details?: string }).details)}`,
				{ cause: e },
			);
		throw e;
	}
}
