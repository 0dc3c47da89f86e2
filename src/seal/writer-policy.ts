/**
 * Writer policy: choices of this writer that decide what a stored chunk's payload is, but that the
 * format leaves open (docs/format.md §4.2). Today one: a chunk is stored zstd-compressed only when
 * that saves at least 1/16 of the chunk, else raw.
 *
 * Why it has an identity: in reproducible mode the layer key is derived from the inputs (seal/keys.ts,
 * format §5.9), and the chunk nonce is the chunk number. Two writers with other thresholds, given the
 * same disk, image key and seal id, would store one chunk raw and the other compressed, under one
 * (chunk key, nonce) pair — AES-GCM nonce reuse. So the policy's identity is part of the layer
 * material: another policy gives another layer key. The identity spells out every parameter, so
 * changing a parameter without thinking of it still changes the key.
 */

export interface WriterPolicy {
	/** zstd output is kept only when it saves at least chunkSize >> minSavingShift bytes. */
	minSavingShift: number;
}

export const DEFAULT_WRITER_POLICY: WriterPolicy = { minSavingShift: 4 };

/** The largest compressed payload worth storing for a chunk of `chunkSize` bytes. */
export function compressionLimit(
	chunkSize: number,
	p: WriterPolicy = DEFAULT_WRITER_POLICY,
): number {
	return chunkSize - (chunkSize >> p.minSavingShift);
}

/** The identity in the layer material (format §5.9); `dadi-writer-1;zstd-min-saving=1/16` today. */
export function writerPolicyId(p: WriterPolicy): string {
	if (
		!Number.isInteger(p.minSavingShift) ||
		p.minSavingShift < 1 ||
		p.minSavingShift > 12
	)
		throw new RangeError("writer policy: minSavingShift must be 1..12");
	return `dadi-writer-1;zstd-min-saving=1/${2 ** p.minSavingShift}`;
}
