/**
 * The SEV-SNP attestation report as Confidential Containers guests send it: the `sev` crate's serde
 * form of `AttestationReport` (virtee/sev 6.x and 7.x serialise the same JSON), inside Trustee's
 * SnpEvidence `{"attestation_report": {...}, "cert_chain": [...] | null}`. Pure.
 *
 * `reportFromSerde` rebuilds the exact 1184 firmware bytes, so the signature is checked over the
 * real signed region. The serde form drops reserved bytes (and the TCB bytes a product leaves
 * reserved); they are rebuilt as zero, which is what firmware writes: a report whose reserved
 * bytes were not zero cannot travel in this form (its signature will not verify).
 *
 * Shape (JSON numbers are integers; byte arrays are JSON arrays of 0..255 of exactly that length):
 *
 *   version u32, guest_svn u32, policy u64, family_id [16], image_id [16], vmpl u32, sig_algo u32,
 *   current_tcb TCB, plat_info u64, key_info u32, report_data [64], measurement [48],
 *   host_data [32], id_key_digest [48], author_key_digest [48], report_id [32], report_id_ma [32],
 *   reported_tcb TCB, cpuid_fam_id/cpuid_mod_id/cpuid_step u8 (null on version 2), chip_id [64],
 *   committed_tcb TCB, current {major, minor, build}, committed {major, minor, build},
 *   launch_tcb TCB, launch_mit_vector/current_mit_vector u64 (null before version 5),
 *   signature {r: [72], s: [72]}
 *
 *   TCB = {fmc: u8 | null, bootloader, tee, snp, microcode}: fmc is a number exactly on Turin.
 *
 * u64 values must be below 2^53 (JSON numbers here are doubles): larger ones are refused rather
 * than rounded. Every member is required (null Options may be omitted, as serde allows); unknown
 * members are refused.
 */
import { DadiError } from "../../errors.js";
import { productFromCpuid, REPORT_SIZE } from "./report.js";

function invalid(detail: string): DadiError {
	return new DadiError(
		"EVIDENCE_INVALID",
		`SEV-SNP evidence: attestation_report${detail}`,
	);
}

type Obj = Record<string, unknown>;

function object(v: unknown, at: string, members: readonly string[]): Obj {
	if (typeof v !== "object" || v === null || Array.isArray(v))
		throw invalid(`${at} must be an object`);
	const o = v as Obj;
	for (const k of Object.keys(o))
		if (!members.includes(k))
			throw invalid(`${at} has an unknown member "${k.slice(0, 64)}"`);
	return o;
}

function int(v: unknown, at: string, max: number): number {
	if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0 || v > max)
		throw invalid(
			`${at} must be an integer from 0 to ${max === Number.MAX_SAFE_INTEGER ? "2^53-1" : max}`,
		);
	return v;
}

const U8 = 0xff;
const U32 = 0xffff_ffff;
const U64_SAFE = Number.MAX_SAFE_INTEGER;

function bytes(v: unknown, at: string, len: number): Buffer {
	if (!Array.isArray(v) || v.length !== len)
		throw invalid(`${at} must be an array of ${len} bytes`);
	const out = Buffer.alloc(len);
	for (let i = 0; i < len; i++) out[i] = int(v[i], `${at}[${i}]`, U8);
	return out;
}

function optional(o: Obj, k: string): unknown {
	return o[k] === undefined ? null : o[k];
}

const REPORT_MEMBERS = [
	"version",
	"guest_svn",
	"policy",
	"family_id",
	"image_id",
	"vmpl",
	"sig_algo",
	"current_tcb",
	"plat_info",
	"key_info",
	"report_data",
	"measurement",
	"host_data",
	"id_key_digest",
	"author_key_digest",
	"report_id",
	"report_id_ma",
	"reported_tcb",
	"cpuid_fam_id",
	"cpuid_mod_id",
	"cpuid_step",
	"chip_id",
	"committed_tcb",
	"current",
	"committed",
	"launch_tcb",
	"launch_mit_vector",
	"current_mit_vector",
	"signature",
] as const;

const OPTIONAL_MEMBERS: readonly string[] = [
	"cpuid_fam_id",
	"cpuid_mod_id",
	"cpuid_step",
	"launch_mit_vector",
	"current_mit_vector",
];

/** The 8 TCB bytes; `turin` selects the layout (and whether fmc must be a number or null). */
function tcb(v: unknown, at: string, turin: boolean): Buffer {
	const o = object(v, at, ["fmc", "bootloader", "tee", "snp", "microcode"]);
	for (const k of ["bootloader", "tee", "snp", "microcode"])
		if (!(k in o)) throw invalid(`${at} has no "${k}"`);
	const fmc = optional(o, "fmc");
	const bl = int(o.bootloader, `${at}.bootloader`, U8);
	const tee = int(o.tee, `${at}.tee`, U8);
	const snp = int(o.snp, `${at}.snp`, U8);
	const ucode = int(o.microcode, `${at}.microcode`, U8);
	const out = Buffer.alloc(8);
	if (turin) {
		out[0] = int(fmc, `${at}.fmc (Turin)`, U8);
		out[1] = bl;
		out[2] = tee;
		out[3] = snp;
	} else {
		if (fmc !== null)
			throw invalid(`${at}.fmc must be null on Milan and Genoa reports`);
		out[0] = bl;
		out[1] = tee;
		out[6] = snp;
	}
	out[7] = ucode;
	return out;
}

/** A firmware version {major, minor, build}, written build, minor, major. */
function version(v: unknown, at: string): Buffer {
	const o = object(v, at, ["major", "minor", "build"]);
	return Buffer.from([
		int(o.build, `${at}.build`, U8),
		int(o.minor, `${at}.minor`, U8),
		int(o.major, `${at}.major`, U8),
	]);
}

/** Rebuilds the 1184-byte ATTESTATION_REPORT from its serde object. */
export function reportFromSerde(v: unknown): Buffer {
	const o = object(v, "", REPORT_MEMBERS);
	for (const k of REPORT_MEMBERS)
		if (!(k in o) && !OPTIONAL_MEMBERS.includes(k))
			throw invalid(` has no "${k}"`);
	const b = Buffer.alloc(REPORT_SIZE);
	const ver = int(o.version, ".version", U32);
	if (ver < 2) throw invalid(`.version ${ver} is not a report version`);
	b.writeUInt32LE(ver, 0x00);
	b.writeUInt32LE(int(o.guest_svn, ".guest_svn", U32), 0x04);
	b.writeBigUInt64LE(BigInt(int(o.policy, ".policy", U64_SAFE)), 0x08);
	bytes(o.family_id, ".family_id", 16).copy(b, 0x10);
	bytes(o.image_id, ".image_id", 16).copy(b, 0x20);
	b.writeUInt32LE(int(o.vmpl, ".vmpl", U32), 0x30);
	b.writeUInt32LE(int(o.sig_algo, ".sig_algo", U32), 0x34);
	b.writeBigUInt64LE(BigInt(int(o.plat_info, ".plat_info", U64_SAFE)), 0x40);
	b.writeUInt32LE(int(o.key_info, ".key_info", U32), 0x48);
	bytes(o.report_data, ".report_data", 64).copy(b, 0x50);
	bytes(o.measurement, ".measurement", 48).copy(b, 0x90);
	bytes(o.host_data, ".host_data", 32).copy(b, 0xc0);
	bytes(o.id_key_digest, ".id_key_digest", 48).copy(b, 0xe0);
	bytes(o.author_key_digest, ".author_key_digest", 48).copy(b, 0x110);
	bytes(o.report_id, ".report_id", 32).copy(b, 0x140);
	bytes(o.report_id_ma, ".report_id_ma", 32).copy(b, 0x160);
	const chipId = bytes(o.chip_id, ".chip_id", 64);
	chipId.copy(b, 0x1a0);

	// The TCB layout follows the product: from CPUID on version 3+, from CHIP_ID on version 2
	// (Turin's is 8 bytes, zero after), as the sev crate decides when it parses the report.
	const cpuid = ["cpuid_fam_id", "cpuid_mod_id", "cpuid_step"].map((k) =>
		optional(o, k),
	);
	let turin: boolean;
	if (ver === 2) {
		if (cpuid.some((x) => x !== null))
			throw invalid(" version 2 has no CPUID fields: they must be null");
		if (chipId.every((x) => x === 0))
			throw invalid(
				" version 2 with a masked CHIP_ID: the TCB layout cannot be told",
			);
		turin = chipId.subarray(8).every((x) => x === 0);
	} else {
		const [fam, mod, step] = cpuid.map((x, i) =>
			int(
				x,
				`.${["cpuid_fam_id", "cpuid_mod_id", "cpuid_step"][i]} (version 3+)`,
				U8,
			),
		) as [number, number, number];
		b[0x188] = fam;
		b[0x189] = mod;
		b[0x18a] = step;
		const product = productFromCpuid({
			family: fam,
			model: mod,
			stepping: step,
		});
		if (!product)
			throw invalid(
				`: CPUID family 0x${fam.toString(16)} model 0x${mod.toString(16)} is not a known SEV-SNP product`,
			);
		turin = product === "turin";
	}
	tcb(o.current_tcb, ".current_tcb", turin).copy(b, 0x38);
	tcb(o.reported_tcb, ".reported_tcb", turin).copy(b, 0x180);
	tcb(o.committed_tcb, ".committed_tcb", turin).copy(b, 0x1e0);
	tcb(o.launch_tcb, ".launch_tcb", turin).copy(b, 0x1f0);
	version(o.current, ".current").copy(b, 0x1e8);
	version(o.committed, ".committed").copy(b, 0x1ec);

	const mit = [
		optional(o, "launch_mit_vector"),
		optional(o, "current_mit_vector"),
	];
	if (ver >= 5) {
		b.writeBigUInt64LE(
			BigInt(int(mit[0], ".launch_mit_vector", U64_SAFE)),
			0x1f8,
		);
		b.writeBigUInt64LE(
			BigInt(int(mit[1], ".current_mit_vector", U64_SAFE)),
			0x200,
		);
	} else if (mit.some((x) => x !== null))
		throw invalid(
			" before version 5 has no mitigation vectors: they must be null",
		);

	const sig = object(o.signature, ".signature", ["r", "s"]);
	bytes(sig.r, ".signature.r", 72).copy(b, 0x2a0);
	bytes(sig.s, ".signature.s", 72).copy(b, 0x2e8);
	return b;
}

export type CocoCertName = "vcek" | "vlek" | "ask" | "ark";

const CERT_TYPES: Record<string, CocoCertName> = {
	VCEK: "vcek",
	VLEK: "vlek",
	ASK: "ask",
	ARK: "ark",
};

/**
 * The cert_chain member: null, or a list of {cert_type, data} where cert_type is "ARK", "ASK",
 * "VCEK", "VLEK", "CRL", "Empty" or {"OTHER": "<uuid>"} and data is a byte array. Returns the four
 * certificates we use; a certificate named twice is refused; CRL, Empty and OTHER entries are
 * skipped (bounded in number and size all the same).
 */
export function certsFromSerdeChain(
	v: unknown,
	maxCertBytes: number,
): Partial<Record<CocoCertName, Buffer>> {
	const out: Partial<Record<CocoCertName, Buffer>> = {};
	if (v === null || v === undefined) return out;
	const bad = (d: string): DadiError =>
		new DadiError("EVIDENCE_INVALID", `SEV-SNP evidence: cert_chain${d}`);
	if (!Array.isArray(v) || v.length > 16)
		throw bad(" must be null or a list of at most 16 entries");
	v.forEach((e, i) => {
		const at = `[${i}]`;
		if (typeof e !== "object" || e === null || Array.isArray(e))
			throw bad(`${at} must be an object`);
		const entry = e as Obj;
		for (const k of Object.keys(entry))
			if (k !== "cert_type" && k !== "data")
				throw bad(`${at} has an unknown member "${k.slice(0, 64)}"`);
		const t = entry.cert_type;
		let name: CocoCertName | undefined;
		if (typeof t === "string") {
			if (t !== "CRL" && t !== "Empty") {
				name = CERT_TYPES[t];
				if (!name) throw bad(`${at}.cert_type "${t.slice(0, 32)}" is unknown`);
			}
		} else {
			const other = t as Obj;
			if (
				typeof t !== "object" ||
				t === null ||
				Array.isArray(t) ||
				Object.keys(other).length !== 1 ||
				typeof other.OTHER !== "string" ||
				!/^[0-9a-fA-F-]{36}$/.test(other.OTHER)
			)
				throw bad(
					`${at}.cert_type must be ARK, ASK, VCEK, VLEK, CRL, Empty or {"OTHER": uuid}`,
				);
		}
		const d = entry.data;
		if (!Array.isArray(d) || d.length > maxCertBytes)
			throw bad(`${at}.data must be an array of at most ${maxCertBytes} bytes`);
		const data = Buffer.alloc(d.length);
		for (let j = 0; j < d.length; j++) {
			const x = d[j];
			if (typeof x !== "number" || !Number.isInteger(x) || x < 0 || x > 255)
				throw bad(`${at}.data[${j}] must be an integer from 0 to 255`);
			data[j] = x;
		}
		if (!name) return;
		if (out[name]) throw bad(` names the ${name.toUpperCase()} twice`);
		if (data.length === 0) throw bad(`${at}.data is empty`);
		out[name] = data;
	});
	return out;
}

/**
 * The serde object of a report, as the sev crate serialises it (the inverse of reportFromSerde for
 * reports whose reserved bytes are zero). For tests and tools that produce CoCo-shaped evidence.
 */
export function serdeFromReport(b: Buffer): Record<string, unknown> {
	if (b.length !== REPORT_SIZE) throw invalid(` must be ${REPORT_SIZE} bytes`);
	const ver = b.readUInt32LE(0);
	const arr = (off: number, len: number): number[] => [
		...b.subarray(off, off + len),
	];
	const u64 = (off: number): number => {
		const x = b.readBigUInt64LE(off);
		if (x > BigInt(Number.MAX_SAFE_INTEGER))
			throw invalid(` has a u64 at 0x${off.toString(16)} above 2^53-1`);
		return Number(x);
	};
	const chipId = b.subarray(0x1a0, 0x1e0);
	let turin: boolean;
	if (ver === 2) turin = chipId.subarray(8).every((x) => x === 0);
	else
		turin =
			productFromCpuid({
				family: b[0x188] as number,
				model: b[0x189] as number,
				stepping: b[0x18a] as number,
			}) === "turin";
	const tcbAt = (off: number): Record<string, number | null> =>
		turin
			? {
					fmc: b[off] as number,
					bootloader: b[off + 1] as number,
					tee: b[off + 2] as number,
					snp: b[off + 3] as number,
					microcode: b[off + 7] as number,
				}
			: {
					fmc: null,
					bootloader: b[off] as number,
					tee: b[off + 1] as number,
					snp: b[off + 6] as number,
					microcode: b[off + 7] as number,
				};
	const versionAt = (off: number): Record<string, number> => ({
		major: b[off + 2] as number,
		minor: b[off + 1] as number,
		build: b[off] as number,
	});
	return {
		version: ver,
		guest_svn: b.readUInt32LE(0x04),
		policy: u64(0x08),
		family_id: arr(0x10, 16),
		image_id: arr(0x20, 16),
		vmpl: b.readUInt32LE(0x30),
		sig_algo: b.readUInt32LE(0x34),
		current_tcb: tcbAt(0x38),
		plat_info: u64(0x40),
		key_info: b.readUInt32LE(0x48),
		report_data: arr(0x50, 64),
		measurement: arr(0x90, 48),
		host_data: arr(0xc0, 32),
		id_key_digest: arr(0xe0, 48),
		author_key_digest: arr(0x110, 48),
		report_id: arr(0x140, 32),
		report_id_ma: arr(0x160, 32),
		reported_tcb: tcbAt(0x180),
		cpuid_fam_id: ver === 2 ? null : (b[0x188] as number),
		cpuid_mod_id: ver === 2 ? null : (b[0x189] as number),
		cpuid_step: ver === 2 ? null : (b[0x18a] as number),
		chip_id: [...chipId],
		committed_tcb: tcbAt(0x1e0),
		current: versionAt(0x1e8),
		committed: versionAt(0x1ec),
		launch_tcb: tcbAt(0x1f0),
		launch_mit_vector: ver >= 5 ? u64(0x1f8) : null,
		current_mit_vector: ver >= 5 ? u64(0x200) : null,
		signature: { r: arr(0x2a0, 72), s: arr(0x2e8, 72) },
	};
}
