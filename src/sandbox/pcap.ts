/**
 * A pcap capture file (the classic libpcap format QEMU's `filter-dump` writes) parsed into TCP and
 * UDP payloads (pure: bytes in, segments out). Only what the leak scan needs: Ethernet II (and
 * 802.1Q) frames carrying IPv4 or IPv6, TCP and UDP. Every length is checked before it is used;
 * a truncated last record (QEMU killed mid-write) ends the capture rather than failing it.
 */
import { DadiError } from "../errors.js";

export interface Segment {
	/** "SRC:PORT>DST:PORT/tcp" — one direction of one connection. */
	flow: string;
	proto: "tcp" | "udp";
	/** TCP sequence number of the first payload byte (0 for UDP). */
	seq: number;
	/** SYN seen on this segment (the payload then starts at seq + 1). */
	syn: boolean;
	payload: Buffer;
}

export interface Capture {
	linkType: number;
	records: number;
	/** Frames that were not Ethernet/IP/TCP|UDP (ARP, ICMP, …), counted, not parsed. */
	otherFrames: number;
	segments: Segment[];
	/** The file ended inside a record. */
	truncated: boolean;
}

const LINKTYPE_ETHERNET = 1;
const E = (msg: string) => new DadiError("FORMAT_INVALID", `pcap: ${msg}`);

export function parsePcap(buf: Buffer): Capture {
	if (buf.length < 24) throw E(`${buf.length} bytes, shorter than the header`);
	const magic = buf.readUInt32LE(0);
	let le: boolean;
	if (magic === 0xa1b2c3d4 || magic === 0xa1b23c4d) le = true;
	else if (magic === 0xd4c3b2a1 || magic === 0x4d3cb2a1) le = false;
	else throw E(`bad magic 0x${magic.toString(16)}`);
	const u32 = (o: number) => (le ? buf.readUInt32LE(o) : buf.readUInt32BE(o));
	const linkType = u32(20) & 0x0fffffff;
	if (linkType !== LINKTYPE_ETHERNET)
		throw E(`link type ${linkType}: only Ethernet (1) is read`);
	const out: Capture = {
		linkType,
		records: 0,
		otherFrames: 0,
		segments: [],
		truncated: false,
	};
	let at = 24;
	while (at < buf.length) {
		if (buf.length - at < 16) {
			out.truncated = true;
			break;
		}
		const incl = u32(at + 8);
		if (incl > buf.length - at - 16) {
			out.truncated = true;
			break;
		}
		const frame = buf.subarray(at + 16, at + 16 + incl);
		at += 16 + incl;
		out.records++;
		const seg = frameSegment(frame);
		if (seg) out.segments.push(seg);
		else out.otherFrames++;
	}
	return out;
}

/** One Ethernet frame's TCP/UDP payload, or undefined for anything else or anything malformed. */
export function frameSegment(f: Buffer): Segment | undefined {
	if (f.length < 14) return undefined;
	const b = (i: number) => f[i] ?? 0;
	let type = f.readUInt16BE(12);
	let at = 14;
	if (type === 0x8100) {
		if (f.length < 18) return undefined;
		type = f.readUInt16BE(16);
		at = 18;
	}
	let src: string;
	let dst: string;
	let proto: number;
	let end: number;
	if (type === 0x0800) {
		if (f.length < at + 20 || b(at) >> 4 !== 4) return undefined;
		const ihl = (b(at) & 0x0f) * 4;
		const total = f.readUInt16BE(at + 2);
		if (ihl < 20 || total < ihl || f.length < at + ihl) return undefined;
		// Fragments other than the first carry no transport header; the scan sees only
		// unfragmented traffic (slirp does not fragment on its virtual link).
		if ((f.readUInt16BE(at + 6) & 0x1fff) !== 0) return undefined;
		proto = b(at + 9);
		src = [...f.subarray(at + 12, at + 16)].join(".");
		dst = [...f.subarray(at + 16, at + 20)].join(".");
		end = Math.min(f.length, at + total);
		at += ihl;
	} else if (type === 0x86dd) {
		if (f.length < at + 40) return undefined;
		proto = b(at + 6);
		const hex = (b: Buffer) => b.toString("hex").replace(/(.{4})(?!$)/g, "$1:");
		src = `[${hex(f.subarray(at + 8, at + 24))}]`;
		dst = `[${hex(f.subarray(at + 24, at + 40))}]`;
		end = Math.min(f.length, at + 40 + f.readUInt16BE(at + 4));
		at += 40;
	} else return undefined;
	if (proto === 6) {
		if (end < at + 20) return undefined;
		const off = (b(at + 12) >> 4) * 4;
		if (off < 20 || end < at + off) return undefined;
		return {
			flow: `${src}:${f.readUInt16BE(at)}>${dst}:${f.readUInt16BE(at + 2)}/tcp`,
			proto: "tcp",
			seq: f.readUInt32BE(at + 4),
			syn: (b(at + 13) & 0x02) !== 0,
			payload: f.subarray(at + off, end),
		};
	}
	if (proto === 17) {
		if (end < at + 8) return undefined;
		return {
			flow: `${src}:${f.readUInt16BE(at)}>${dst}:${f.readUInt16BE(at + 2)}/udp`,
			proto: "udp",
			seq: 0,
			syn: false,
			payload: f.subarray(at + 8, end),
		};
	}
	return undefined;
}
