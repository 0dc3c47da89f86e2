/** Test-only: builds an SEV-SNP extended report's certificate table (the inverse of cert-table.ts). */
const GUIDS = {
	vcek: "63da758de6644564adc5f4b93be8accd",
	vlek: "a8074bc2a25a483eaae639c045a0b8a1",
	ask: "4ab7b379bbac4fe4a02f05aef327c782",
	ark: "c0b406a4a803495297433fb6014cd0ae",
} as const;

export function certTable(
	certs: Partial<Record<keyof typeof GUIDS, Buffer>>,
): Buffer {
	const entries = Object.entries(certs).filter(
		(e): e is [keyof typeof GUIDS, Buffer] => e[1] !== undefined,
	);
	const head = Buffer.alloc((entries.length + 1) * 24);
	let off = head.length;
	entries.forEach(([k, data], i) => {
		Buffer.from(GUIDS[k], "hex").copy(head, i * 24);
		head.writeUInt32LE(off, i * 24 + 16);
		head.writeUInt32LE(data.length, i * 24 + 20);
		off += data.length;
	});
	return Buffer.concat([head, ...entries.map(([, d]) => d)]);
}
