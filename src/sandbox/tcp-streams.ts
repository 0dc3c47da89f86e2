/**
 * TCP payloads put back in stream order per direction (pure), so a scan finds a string that a
 * sender split across segments, and a retransmission is counted once. Sequence numbers are
 * taken relative to the SYN (or to the first segment seen), modulo 2^32; a segment that would
 * land more than 2^31 before that start or past the size bound is dropped and counted. UDP
 * datagrams are kept one by one.
 */
import type { Segment } from "./pcap.js";

export interface Stream {
	flow: string;
	bytes: Buffer;
	/** Bytes of the stream that no captured segment covered (left zero). */
	gaps: number;
}

export interface Reassembly {
	streams: Stream[];
	/** Segments dropped as out of window or beyond the bound. */
	dropped: number;
}

export function reassemble(
	segments: readonly Segment[],
	maxStreamBytes = 512 << 20,
): Reassembly {
	const byFlow = new Map<string, Segment[]>();
	const streams: Stream[] = [];
	let dropped = 0;
	for (const s of segments) {
		if (s.proto === "udp") {
			if (s.payload.length > 0)
				streams.push({ flow: s.flow, bytes: s.payload, gaps: 0 });
			continue;
		}
		const list = byFlow.get(s.flow);
		if (list) list.push(s);
		else byFlow.set(s.flow, [s]);
	}
	for (const [flow, list] of byFlow) {
		const syn = list.find((s) => s.syn);
		const base = syn ? (syn.seq + 1) >>> 0 : (list[0] as Segment).seq;
		const placed: { at: number; payload: Buffer }[] = [];
		let size = 0;
		for (const s of list) {
			if (s.payload.length === 0) continue;
			const first = s.syn ? (s.seq + 1) >>> 0 : s.seq;
			const at = (first - base) >>> 0;
			if (at >= 2 ** 31 || at + s.payload.length > maxStreamBytes) {
				dropped++;
				continue;
			}
			placed.push({ at, payload: s.payload });
			size = Math.max(size, at + s.payload.length);
		}
		if (size === 0) continue;
		const bytes = Buffer.alloc(size);
		const covered = new Uint8Array(size);
		for (const p of placed) {
			p.payload.copy(bytes, p.at);
			covered.fill(1, p.at, p.at + p.payload.length);
		}
		let gaps = 0;
		for (const c of covered) if (c === 0) gaps++;
		streams.push({ flow, bytes, gaps });
	}
	return { streams, dropped };
}
