/** Test-only CC event logs: a Spec ID event (SHA-384 only) and the events given, with their RTMRs. */
import { createHash } from "node:crypto";

export interface SyntheticEvent {
	/** 1..4 = RTMR0..3 */
	index: number;
	type: number;
	data: Buffer;
	/** Defaults to SHA-384 of data. */
	digest?: Buffer;
}

export function specIdEvent(algs: [number, number][] = [[0x000c, 48]]): Buffer {
	const spec = Buffer.concat([
		Buffer.from("Spec ID Event03\0", "latin1"),
		Buffer.from([0, 0, 0, 0, 0, 2, 0, 2]), // platformClass, minor 0, major 2, errata 0, uintn 2
		u32(algs.length),
		...algs.map(([id, size]) =>
			Buffer.from([id & 0xff, id >> 8, size & 0xff, size >> 8]),
		),
		Buffer.from([0]),
	]);
	return Buffer.concat([
		u32(0),
		u32(3),
		Buffer.alloc(20),
		u32(spec.length),
		spec,
	]);
}

function u32(n: number): Buffer {
	const b = Buffer.alloc(4);
	b.writeUInt32LE(n >>> 0);
	return b;
}

export function eventBytes(e: SyntheticEvent): Buffer {
	const d = e.digest ?? createHash("sha384").update(e.data).digest();
	return Buffer.concat([
		u32(e.index),
		u32(e.type),
		u32(1),
		Buffer.from([0x0c, 0x00]),
		d,
		u32(e.data.length),
		e.data,
	]);
}

/** A tagged event (EV_EVENT_TAG) whose data names `label`. */
export function taggedData(label: string): Buffer {
	const l = Buffer.from(label, "latin1");
	return Buffer.concat([u32(0x8f3b22ed), u32(l.length), l]);
}

export function syntheticCcel(events: SyntheticEvent[]): {
	log: Buffer;
	rtmrs: [Buffer, Buffer, Buffer, Buffer];
} {
	const rtmrs: [Buffer, Buffer, Buffer, Buffer] = [
		Buffer.alloc(48),
		Buffer.alloc(48),
		Buffer.alloc(48),
		Buffer.alloc(48),
	];
	for (const e of events) {
		if (e.type === 3) continue;
		const d = e.digest ?? createHash("sha384").update(e.data).digest();
		const k = e.index - 1;
		rtmrs[k] = createHash("sha384")
			.update(rtmrs[k] as Buffer)
			.update(d)
			.digest();
	}
	return {
		log: Buffer.concat([
			specIdEvent(),
			...events.map(eventBytes),
			Buffer.alloc(16, 0xff),
		]),
		rtmrs,
	};
}
