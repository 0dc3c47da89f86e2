/** Generated demo disks: text-like and binary regions, zero runs and holes, deterministic. */
import { createCipheriv, createHash } from "node:crypto";

function keystream(seed: string, n: number): Buffer {
	const key = createHash("sha256").update(seed).digest();
	return createCipheriv("aes-256-ctr", key, Buffer.alloc(16)).update(
		Buffer.alloc(n),
	);
}

function textLike(seed: string, n: number): Buffer {
	const words = [
		"usr/lib/",
		"libc.so.6 ",
		"#include <stdio.h>\n",
		"return 0;\n",
		"config=",
		"true\n",
		"x86_64-linux-gnu ",
		"README ",
	];
	const r = keystream(seed, n);
	const out = Buffer.alloc(n);
	let o = 0;
	for (let i = 0; o < n; i++)
		o += out.write(words[(r[i % n] as number) % words.length] as string, o);
	return out;
}

export function generateDemoDisk(size: number): Buffer {
	const d = Buffer.alloc(size);
	const mib = 1 << 20;
	for (let at = 0; at + 4 * mib <= size; at += 8 * mib) {
		textLike(`t${at}`, 3 * mib).copy(d, at); // compressible "files"
		keystream(`b${at}`, mib).copy(d, at + 3 * mib); // incompressible "binaries"
		// the next 4 MiB stay zero: free space
	}
	return d;
}

export function modifyDemoDisk(v1: Buffer): Buffer {
	const mib = 1 << 20;
	const v2 = Buffer.alloc(v1.length + 4 * mib);
	v1.copy(v2);
	keystream("update", 2 * mib).copy(v2, 9 * mib); // rewritten
	v2.fill(0, 16 * mib, 17 * mib); // deleted
	textLike("grown", 4 * mib).copy(v2, v1.length); // appended
	return v2;
}
