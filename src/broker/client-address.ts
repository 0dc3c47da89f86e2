/**
 * Who a request is from, for the per-client limits (connections, request rate, sessions, body
 * memory) and the audit log.
 *
 * - The key a client is counted under: an IPv4 address, or the /64 prefix of an IPv6 address (one
 *   host usually holds a whole /64, so counting single IPv6 addresses would give it 2^64 shares).
 *   IPv4-mapped IPv6 addresses count as the IPv4 address.
 * - Behind a reverse proxy every client arrives from the proxy's address. Only for a peer that the
 *   operator named as a trusted proxy (`--trusted-proxy`), the client is taken from
 *   X-Forwarded-For: the rightmost entry that is not itself a trusted proxy. A header that does not
 *   parse leaves the request counted under the proxy (fail closed: a stricter, shared bucket).
 *
 * Pure; the header text is untrusted.
 */
import { BlockList, isIP } from "node:net";
import { DadiError } from "../errors.js";

/** The address without an IPv6 zone ("%eth0"), IPv4-mapped IPv6 as IPv4; undefined if not an IP. */
export function normalizeAddress(address: string): string | undefined {
	let a = address;
	const pct = a.indexOf("%");
	if (pct >= 0) a = a.slice(0, pct);
	const v = isIP(a);
	if (v === 4) return a;
	if (v !== 6) return undefined;
	const h = ipv6Hextets(a) as [
		number,
		number,
		number,
		number,
		number,
		number,
		number,
		number,
	];
	if (
		h[0] === 0 &&
		h[1] === 0 &&
		h[2] === 0 &&
		h[3] === 0 &&
		h[4] === 0 &&
		h[5] === 0xffff
	)
		return [h[6] >> 8, h[6] & 0xff, h[7] >> 8, h[7] & 0xff].join(".");
	return a.toLowerCase();
}

/** The key per-client limits count under: the IPv4 address, or "PREFIX::/64" for IPv6. */
export function clientKey(address: string): string {
	const a = normalizeAddress(address);
	if (a === undefined) return address.slice(0, 64);
	if (isIP(a) === 4) return a;
	const h = ipv6Hextets(a);
	return `${h
		.slice(0, 4)
		.map((x) => x.toString(16))
		.join(":")}::/64`;
}

/**
 * The eight 16-bit groups of a valid IPv6 address (already checked with isIP), with an embedded
 * IPv4 tail ("::ffff:1.2.3.4", "64:ff9b::1.2.3.4") as the last two.
 */
function ipv6Hextets(address: string): number[] {
	let a = address;
	const tail: number[] = [];
	const lastColon = a.lastIndexOf(":");
	if (a.slice(lastColon + 1).includes(".")) {
		const [p0, p1, p2, p3] = a
			.slice(lastColon + 1)
			.split(".")
			.map(Number) as [number, number, number, number];
		tail.push((p0 << 8) | p1, (p2 << 8) | p3);
		a = a.slice(0, lastColon + 1);
		if (!a.endsWith("::")) a = a.slice(0, -1); // "::ffff:" → "::ffff"; "64:ff9b::" stays
	}
	const parse = (s: string) =>
		s === "" ? [] : s.split(":").map((x) => Number.parseInt(x, 16));
	const dbl = a.indexOf("::");
	let groups: number[];
	if (dbl >= 0) {
		const left = parse(a.slice(0, dbl));
		const right = parse(a.slice(dbl + 2));
		const zeros = 8 - tail.length - left.length - right.length;
		groups = [
			...left,
			...new Array<number>(Math.max(0, zeros)).fill(0),
			...right,
		];
	} else groups = parse(a);
	return [...groups, ...tail];
}

/** The operator's list of trusted proxies: addresses and CIDR ranges, IPv4 or IPv6. */
export interface TrustedProxies {
	has(address: string): boolean;
	/** As given, for messages. */
	readonly text: string;
}

/** Parses "ADDR[/PREFIX][,ADDR[/PREFIX]…]"; USAGE naming the flag on anything else. */
export function parseTrustedProxies(
	text: string,
	flag = "--trusted-proxy",
): TrustedProxies {
	const list = new BlockList();
	const entries = text
		.split(",")
		.map((s) => s.trim())
		.filter(Boolean);
	if (entries.length === 0 || entries.length > 64)
		throw new DadiError(
			"USAGE",
			`${flag}: give 1 to 64 addresses or CIDR ranges, comma-separated`,
		);
	for (const e of entries) {
		const m = /^([^/]+)(?:\/(\d{1,3}))?$/.exec(e);
		const addr = m ? normalizeAddress(m[1] as string) : undefined;
		const type = addr === undefined ? 0 : isIP(addr);
		const prefix = m?.[2] === undefined ? undefined : Number(m[2]);
		if (
			addr === undefined ||
			(prefix !== undefined && prefix > (type === 4 ? 32 : 128))
		)
			throw new DadiError(
				"USAGE",
				`${flag} "${e.slice(0, 80)}": not an IP address or CIDR range (e.g. 10.0.0.5, 10.0.0.0/8, fd00::/64)`,
			);
		const family = type === 4 ? "ipv4" : "ipv6";
		if (prefix === undefined) list.addAddress(addr, family);
		else list.addSubnet(addr, prefix, family);
	}
	return {
		text: entries.join(","),
		has(address: string): boolean {
			const a = normalizeAddress(address);
			if (a === undefined) return false;
			return list.check(a, isIP(a) === 4 ? "ipv4" : "ipv6");
		},
	};
}

/** X-Forwarded-For is read only up to this length (longer: not trusted, the proxy counts). */
const MAX_FORWARDED_CHARS = 4096;
const MAX_FORWARDED_HOPS = 32;

/**
 * The client address of a request whose TCP peer is `peer`: from X-Forwarded-For when the peer is
 * a trusted proxy and the header parses (the rightmost entry that is not a trusted proxy, or the
 * leftmost if all are), else the peer.
 */
export function requestClient(
	peer: string,
	forwardedFor: string | string[] | undefined,
	trusted: TrustedProxies | undefined,
): string {
	if (!trusted || forwardedFor === undefined || !trusted.has(peer)) return peer;
	const text = Array.isArray(forwardedFor)
		? forwardedFor.join(",")
		: forwardedFor;
	if (text.length > MAX_FORWARDED_CHARS) return peer;
	const hops = text.split(",").map((s) => forwardedAddress(s.trim()));
	if (hops.length > MAX_FORWARDED_HOPS || hops.some((h) => h === undefined))
		return peer;
	for (let i = hops.length - 1; i >= 0; i--) {
		const h = hops[i] as string;
		if (!trusted.has(h) || i === 0) return h;
	}
	return peer;
}

/** One X-Forwarded-For entry: "1.2.3.4", "1.2.3.4:5678", "2001:db8::1", "[2001:db8::1]:443". */
function forwardedAddress(entry: string): string | undefined {
	let a = entry;
	const bracket = /^\[([^\]]+)\](?::\d{1,5})?$/.exec(a);
	if (bracket) a = bracket[1] as string;
	else if (/^[0-9.]+:\d{1,5}$/.test(a)) a = a.slice(0, a.lastIndexOf(":"));
	return normalizeAddress(a);
}
