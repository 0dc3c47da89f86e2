/**
 * A start-up trace sealed to one image (docs/format.md §10.2). The trace is padded (padding.ts),
 * then encrypted with AES-256-GCM under a key derived from the image key, with a random nonce:
 *
 *   blob = "DTRE" | version u8 (1) | 3 zero bytes | nonce (12) | ciphertext | tag (16)
 *   AAD  = blob[0..20) | "dadi/v1/trace" 0x00 manifest digest 0x00 seal id 0x00 layer ids (comma-separated)
 *
 * The AAD binds it to the image manifest it was attached to: a trace copied onto another image,
 * or changed in any byte, does not authenticate (AUTH_FAILED) and is never used.
 */
import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto";
import { authFailed, DadiError } from "../errors.js";
import { MAX_TRACE_BYTES } from "../format/trace.js";
import { hkdf32, LABELS } from "./kdf.js";
import { pad, paddedLength, unpad } from "./padding.js";

export const SEALED_TRACE_MAGIC = Buffer.from("DTRE", "latin1");
export const SEALED_TRACE_VERSION = 1;
const HEADER = 20;
const TAG = 16;
/** The largest sealed trace a reader accepts. */
export const MAX_SEALED_TRACE_BYTES =
	HEADER + paddedLength(MAX_TRACE_BYTES) + TAG;

/** What a trace is bound to: the image manifest it describes. */
export interface TraceBinding {
	manifestDigest: string;
	sealId: string;
	layerIds: readonly string[];
}

export function traceAad(header: Buffer, b: TraceBinding): Buffer {
	return Buffer.concat([
		header,
		Buffer.from(
			`dadi/v1/trace\0${b.manifestDigest}\0${b.sealId}\0${b.layerIds.join(",")}`,
			"latin1",
		),
	]);
}

function traceKey(imageKey: Buffer): Buffer {
	return hkdf32(imageKey, Buffer.alloc(0), LABELS.traceKey);
}

export function sealTrace(
	imageKey: Buffer,
	binding: TraceBinding,
	plain: Buffer,
	nonce: Buffer = randomBytes(12),
): Buffer {
	const header = Buffer.alloc(HEADER);
	SEALED_TRACE_MAGIC.copy(header, 0);
	header.writeUInt8(SEALED_TRACE_VERSION, 4);
	nonce.copy(header, 8);
	const c = createCipheriv("aes-256-gcm", traceKey(imageKey), nonce);
	c.setAAD(traceAad(header, binding));
	const body = Buffer.concat([c.update(pad(plain)), c.final()]);
	return Buffer.concat([header, body, c.getAuthTag()]);
}

/**
 * The plaintext trace bytes: FORMAT_INVALID / FORMAT_UNSUPPORTED for a blob that is not a sealed
 * trace at all, AUTH_FAILED for one that does not authenticate under this key and binding.
 */
export function openTrace(
	imageKey: Buffer,
	binding: TraceBinding,
	blob: Buffer,
): Buffer {
	if (blob.length > MAX_SEALED_TRACE_BYTES)
		throw new DadiError(
			"FORMAT_INVALID",
			`sealed trace: ${blob.length} bytes is more than the ${MAX_SEALED_TRACE_BYTES} allowed`,
		);
	if (
		blob.length < HEADER + TAG ||
		!blob.subarray(0, 4).equals(SEALED_TRACE_MAGIC)
	)
		throw new DadiError(
			"FORMAT_INVALID",
			"sealed trace: not a dadi sealed trace (bad magic or too short)",
		);
	if (blob.readUInt8(4) !== SEALED_TRACE_VERSION)
		throw new DadiError(
			"FORMAT_UNSUPPORTED",
			`sealed trace: version ${blob.readUInt8(4)} is not supported (this build reads version ${SEALED_TRACE_VERSION})`,
		);
	const header = blob.subarray(0, HEADER);
	if (header.readUIntBE(5, 3) !== 0) throw authFailed("sealed trace");
	let padded: Buffer;
	try {
		const d = createDecipheriv(
			"aes-256-gcm",
			traceKey(imageKey),
			header.subarray(8, 20),
		);
		d.setAAD(traceAad(header, binding));
		d.setAuthTag(blob.subarray(blob.length - TAG));
		padded = Buffer.concat([
			d.update(blob.subarray(HEADER, blob.length - TAG)),
			d.final(),
		]);
	} catch {
		throw authFailed("sealed trace");
	}
	return unpad(padded, "sealed trace");
}
