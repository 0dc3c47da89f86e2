/**
 * The TDX CC event log (CCEL, the ACPI "CCEL" table's log area): a pure, bounds-checked parser.
 *
 * Format: TCG PC Client Platform Firmware Profile "crypto agile" log, as TDX firmware (TDVF/OVMF,
 * td-shim) writes it, all integers little-endian:
 *
 *   TCG_PCClientPCREvent (SHA-1 format; the first event):
 *     u32 pcrIndex, u32 eventType (3 = EV_NO_ACTION), 20-byte digest (zero), u32 eventSize,
 *     event = TCG_EfiSpecIDEvent: "Spec ID Event03\0", u32 platformClass, u8 specVersionMinor,
 *       u8 specVersionMajor, u8 specErrata, u8 uintnSize, u32 numberOfAlgorithms,
 *       {u16 algorithmId, u16 digestSize}[numberOfAlgorithms], u8 vendorInfoSize, vendorInfo
 *   then TCG_PCR_EVENT2 entries:
 *     u32 pcrIndex (in CCEL the measurement register: 0 MRTD, 1..4 RTMR0..3), u32 eventType,
 *     u32 digestCount, {u16 algorithmId, digest[size from the Spec ID event]}[digestCount],
 *     u32 eventSize, event[eventSize]
 *
 * The log ends at the end of the bytes or where an entry would begin with eight 0xFF or eight zero
 * bytes (the unused rest of the log area). Everything read is checked against the bytes left.
 * Nothing here is trusted: only a replay against the quote's RTMRs (ccel-replay.ts) makes the
 * digests meaningful.
 */
import { DadiError } from "../../errors.js";

export const EV_NO_ACTION = 3;
export const TPM_ALG_SHA384 = 0x000c;
/** At most this many events (a real boot log has a few hundred). */
export const MAX_EVENTS = 4096;
const MAX_ALGORITHMS = 8;
const SPEC_ID_SIGNATURE = "Spec ID Event03\0";

export interface CcelDigest {
	alg: number;
	digest: Buffer;
}

export interface CcelEvent {
	/** The log's register index: 0 MRTD, 1..4 RTMR0..3. */
	index: number;
	type: number;
	digests: CcelDigest[];
	/** The event data (a view of the input). */
	data: Buffer;
}

export interface CcelLog {
	/** Digest sizes by algorithm id, from the Spec ID event. */
	algorithms: Map<number, number>;
	events: CcelEvent[];
}

function invalid(detail: string): DadiError {
	return new DadiError("EVIDENCE_INVALID", `TDX event log: ${detail}`);
}

class Reader {
	pos = 0;
	constructor(readonly b: Buffer) {}
	left(): number {
		return this.b.length - this.pos;
	}
	need(n: number, what: string): void {
		if (n > this.left())
			throw invalid(
				`truncated: ${what} needs ${n} bytes at offset ${this.pos}, ${this.left()} left`,
			);
	}
	u8(what: string): number {
		this.need(1, what);
		return this.b[this.pos++] as number;
	}
	u16(what: string): number {
		this.need(2, what);
		const v = this.b.readUInt16LE(this.pos);
		this.pos += 2;
		return v;
	}
	u32(what: string): number {
		this.need(4, what);
		const v = this.b.readUInt32LE(this.pos);
		this.pos += 4;
		return v;
	}
	bytes(n: number, what: string): Buffer {
		this.need(n, what);
		const v = this.b.subarray(this.pos, this.pos + n);
		this.pos += n;
		return v;
	}
}

/**
 * The Spec ID event's digest table. Firmware writes the signature "Spec ID Event03" and version 2;
 * guest-components' attestation agent, when it sends only its own runtime events (no firmware
 * CCEL), writes a header of the same layout with a zero signature and version 0: both are accepted
 * (these fields carry no security meaning; the digest table does, and is checked).
 */
function parseSpecId(data: Buffer): Map<number, number> {
	const r = new Reader(data);
	const sig = r.bytes(16, "the Spec ID signature");
	const zeroHeader = sig.every((x) => x === 0);
	if (!zeroHeader && sig.toString("latin1") !== SPEC_ID_SIGNATURE)
		throw invalid('the first event is not a "Spec ID Event03" event');
	r.u32("platformClass");
	r.u8("specVersionMinor");
	const major = r.u8("specVersionMajor");
	if (major !== 2 && !(zeroHeader && major === 0))
		throw invalid(`Spec ID version ${major} is not 2 (crypto agile)`);
	r.u8("specErrata");
	r.u8("uintnSize");
	const n = r.u32("numberOfAlgorithms");
	if (n === 0 || n > MAX_ALGORITHMS)
		throw invalid(
			`the Spec ID event lists ${n} algorithms (1..${MAX_ALGORITHMS})`,
		);
	const algs = new Map<number, number>();
	for (let i = 0; i < n; i++) {
		const id = r.u16("an algorithm id");
		const size = r.u16("a digest size");
		if (size === 0 || size > 64)
			throw invalid(`algorithm 0x${id.toString(16)} has digest size ${size}`);
		if (algs.has(id))
			throw invalid(`algorithm 0x${id.toString(16)} is listed twice`);
		if (id === TPM_ALG_SHA384 && size !== 48)
			throw invalid(`SHA-384 is listed with digest size ${size}`);
		algs.set(id, size);
	}
	const vendor = r.u8("vendorInfoSize");
	r.bytes(vendor, "vendorInfo");
	if (r.left() !== 0)
		throw invalid("the Spec ID event has bytes after its vendor info");
	return algs;
}

function atEnd(r: Reader): boolean {
	if (r.left() === 0) return true;
	if (r.left() < 8) {
		// A tail shorter than an entry header must be padding.
		const tail = r.b.subarray(r.pos);
		if (tail.every((x) => x === 0xff) || tail.every((x) => x === 0))
			return true;
		throw invalid(`${r.left()} stray bytes at the end`);
	}
	const head = r.b.subarray(r.pos, r.pos + 8);
	return head.every((x) => x === 0xff) || head.every((x) => x === 0);
}

export function parseCcel(input: Uint8Array): CcelLog {
	if (!(input instanceof Uint8Array)) throw invalid("expected bytes");
	const b = Buffer.isBuffer(input)
		? input
		: Buffer.from(input.buffer, input.byteOffset, input.byteLength);
	const r = new Reader(b);
	r.u32("the first event's index");
	const firstType = r.u32("the first event's type");
	if (firstType !== EV_NO_ACTION)
		throw invalid(
			`the first event has type 0x${firstType.toString(16)}, expected EV_NO_ACTION (the Spec ID event)`,
		);
	r.bytes(20, "the first event's SHA-1 digest");
	const specSize = r.u32("the first event's size");
	const algorithms = parseSpecId(r.bytes(specSize, "the Spec ID event"));
	if (!algorithms.has(TPM_ALG_SHA384))
		throw invalid("the log does not record SHA-384 digests");

	const events: CcelEvent[] = [];
	while (!atEnd(r)) {
		if (events.length >= MAX_EVENTS)
			throw invalid(`more than ${MAX_EVENTS} events`);
		const at = `event ${events.length + 1}`;
		const index = r.u32(`${at}'s index`);
		const type = r.u32(`${at}'s type`);
		const count = r.u32(`${at}'s digest count`);
		if (count > algorithms.size)
			throw invalid(
				`${at} has ${count} digests, more than the ${algorithms.size} algorithms of the log`,
			);
		const digests: CcelDigest[] = [];
		for (let i = 0; i < count; i++) {
			const alg = r.u16(`${at}'s digest algorithm`);
			const size = algorithms.get(alg);
			if (size === undefined)
				throw invalid(
					`${at} has a digest of algorithm 0x${alg.toString(16)}, which the Spec ID event does not list`,
				);
			if (digests.some((d) => d.alg === alg))
				throw invalid(
					`${at} has two digests of algorithm 0x${alg.toString(16)}`,
				);
			digests.push({ alg, digest: r.bytes(size, `${at}'s digest`) });
		}
		const size = r.u32(`${at}'s event size`);
		const data = r.bytes(size, `${at}'s event data`);
		events.push({ index, type, digests, data });
	}
	return { algorithms, events };
}
