/**
 * The SEV-SNP extended report's certificate table (GHCB spec, SNP_GET_EXT_REPORT): entries of
 * {GUID (16 bytes, in the order its text is written), offset u32 LE, length u32 LE}, ended by an
 * all-zero entry; offsets are from the start of the table. Pure and bounds-checked; entries with
 * GUIDs we do not use (CRLs, vendor extensions) are skipped.
 */
import { DadiError } from "../../errors.js";

const GUIDS: Record<string, "vcek" | "vlek" | "ask" | "ark"> = {
	"63da758de6644564adc5f4b93be8accd": "vcek",
	a8074bc2a25a483eaae639c045a0b8a1: "vlek",
	"4ab7b379bbac4fe4a02f05aef327c782": "ask",
	c0b406a4a803495297433fb6014cd0ae: "ark",
};
const ENTRY = 24;
const MAX_TABLE = 64 << 10;
const MAX_ENTRIES = 64;

function invalid(what: string): DadiError {
	return new DadiError(
		"EVIDENCE_INVALID",
		`SEV-SNP certificate table: ${what}`,
	);
}

export function parseCertTable(table: Buffer): {
	vcek?: Buffer;
	vlek?: Buffer;
	ask?: Buffer;
	ark?: Buffer;
} {
	if (table.length > MAX_TABLE) throw invalid(`larger than ${MAX_TABLE} bytes`);
	const out: { vcek?: Buffer; vlek?: Buffer; ask?: Buffer; ark?: Buffer } = {};
	for (let i = 0; ; i++) {
		if (i >= MAX_ENTRIES) throw invalid(`more than ${MAX_ENTRIES} entries`);
		const at = i * ENTRY;
		if (at + ENTRY > table.length)
			throw invalid("no terminating all-zero entry");
		const guid = table.subarray(at, at + 16);
		const offset = table.readUInt32LE(at + 16);
		const length = table.readUInt32LE(at + 20);
		if (guid.every((b) => b === 0)) {
			if (offset !== 0 || length !== 0)
				throw invalid("the terminating entry is not all zero");
			return out;
		}
		const kind = GUIDS[guid.toString("hex")];
		if (offset < at + ENTRY || length === 0 || offset + length > table.length)
			throw invalid(
				`entry ${i} points outside the table (offset ${offset}, length ${length})`,
			);
		if (!kind) continue;
		if (out[kind]) throw invalid(`two ${kind.toUpperCase()} entries`);
		out[kind] = Buffer.from(table.subarray(offset, offset + length));
	}
}
