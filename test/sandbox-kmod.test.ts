/** Kernel module .modinfo parsing and load order (src/sandbox/kmod.ts), on synthetic ELF files. */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { DadiError } from "../src/errors.js";
import { loadOrder, type ModInfo, parseModinfo } from "../src/sandbox/kmod.js";
import { thrown } from "./helpers.js";

/** A minimal ELF64 LE relocatable file with a .modinfo section holding `strings`. */
function ko(strings: string[]): Buffer {
	const modinfo = Buffer.from(strings.map((s) => `${s}\0`).join(""));
	const shstrtab = Buffer.from("\0.modinfo\0.shstrtab\0");
	const dataAt = 64;
	const shstrAt = dataAt + modinfo.length;
	const shoff = Math.ceil((shstrAt + shstrtab.length) / 8) * 8;
	const b = Buffer.alloc(shoff + 3 * 64);
	b.writeUInt32BE(0x7f454c46, 0);
	b[4] = 2; // 64-bit
	b[5] = 1; // little-endian
	b[6] = 1;
	b.writeUInt16LE(1, 0x10); // ET_REL
	b.writeUInt16LE(62, 0x12); // x86-64
	b.writeBigUInt64LE(BigInt(shoff), 0x28);
	b.writeUInt16LE(64, 0x34);
	b.writeUInt16LE(64, 0x3a);
	b.writeUInt16LE(3, 0x3c);
	b.writeUInt16LE(2, 0x3e);
	modinfo.copy(b, dataAt);
	shstrtab.copy(b, shstrAt);
	const sh = (
		i: number,
		name: number,
		type: number,
		off: number,
		size: number,
	) => {
		const at = shoff + i * 64;
		b.writeUInt32LE(name, at);
		b.writeUInt32LE(type, at + 4);
		b.writeBigUInt64LE(BigInt(off), at + 0x18);
		b.writeBigUInt64LE(BigInt(size), at + 0x20);
	};
	sh(1, 1, 1, dataAt, modinfo.length);
	sh(2, 10, 3, shstrAt, shstrtab.length);
	return b;
}

function info(p: Partial<ModInfo>): ModInfo {
	return {
		name: undefined,
		depends: [],
		softPre: [],
		softPost: [],
		aliases: [],
		...p,
	};
}

describe("kernel module .modinfo", () => {
	it("reads name, depends, softdep and aliases", () => {
		const m = parseModinfo(
			ko([
				"license=GPL",
				"softdep=pre: crypto-crc32c",
				"alias=fs-ext4",
				"depends=jbd2,mbcache,crc16",
				"name=ext4",
				"vermagic=6.1.0 SMP mod_unload",
			]),
		);
		expect(m).toEqual({
			name: "ext4",
			depends: ["jbd2", "mbcache", "crc16"],
			softPre: ["crypto_crc32c"],
			softPost: [],
			aliases: ["fs-ext4"],
		});
		expect(
			parseModinfo(
				ko(["depends=", "softdep=gcm post: a-b pre: c platform:x-y", "name=x"]),
			),
		).toMatchObject({
			depends: [],
			softPre: ["c", "platform:x_y"],
			softPost: ["a_b"],
		});
	});

	it("refuses what is not a module", () => {
		expect(thrown(() => parseModinfo(Buffer.from("hello"))).code).toBe(
			"FORMAT_INVALID",
		);
		const noModinfo = ko(["name=x"]);
		noModinfo.write(".xodinfo", noModinfo.indexOf(".modinfo"));
		expect(thrown(() => parseModinfo(noModinfo)).code).toBe("FORMAT_INVALID");
		expect(thrown(() => parseModinfo(ko(["depends=a;rm -rf /"]))).code).toBe(
			"FORMAT_INVALID",
		);
		expect(thrown(() => parseModinfo(ko(["softdep=pre: a/b"]))).code).toBe(
			"FORMAT_INVALID",
		);
	});

	it("arbitrary bytes, and any corruption of a real-shaped file, throw nothing but DadiError (fuzz)", () => {
		const good = ko(["softdep=pre: crc32c", "depends=a,b", "name=m"]);
		const check = (b: Uint8Array) => {
			try {
				parseModinfo(b);
			} catch (e) {
				if (!(e instanceof DadiError)) throw e;
				expect(e.code).toBe("FORMAT_INVALID");
			}
		};
		fc.assert(fc.property(fc.uint8Array({ maxLength: 400 }), check), {
			numRuns: 2000,
		});
		fc.assert(
			fc.property(
				fc.array(fc.tuple(fc.nat(good.length - 1), fc.nat(255)), {
					minLength: 1,
					maxLength: 8,
				}),
				fc.nat(good.length),
				(edits, len) => {
					const b = Buffer.from(good);
					for (const [at, v] of edits) b[at] = v;
					check(b);
					check(b.subarray(0, len));
				},
			),
			{ numRuns: 3000 },
		);
		// ELF headers with every field random
		fc.assert(
			fc.property(fc.uint8Array({ minLength: 64, maxLength: 64 }), (head) => {
				const b = Buffer.from(good);
				Buffer.from(head).copy(b, 0);
				b.writeUInt32BE(0x7f454c46, 0);
				b[4] = 2;
				b[5] = 1;
				check(b);
			}),
			{ numRuns: 2000 },
		);
	});
});

describe("module load order", () => {
	const index = new Map<string, ModInfo>([
		[
			"ext4",
			info({
				depends: ["jbd2", "mbcache", "crc16"],
				softPre: ["crypto_crc32c"],
			}),
		],
		["jbd2", info({})],
		["mbcache", info({})],
		["crc16", info({})],
		["crc32c_generic", info({})],
		["libcrc32c", info({ softPre: ["crc32c"] })],
		["erofs", info({ depends: ["libcrc32c"] })],
		[
			"virtio_net",
			info({ depends: ["virtio_ring", "virtio", "net_failover"] }),
		],
		["net_failover", info({ depends: ["failover"] })],
		["failover", info({})],
		["virtio", info({})],
		["virtio_ring", info({})],
		["post", info({ softPost: ["jbd2", "nowhere"] })],
	]);
	const aliases = new Map([
		["crypto-crc32c", "crc32c_generic"],
		["crc32c", "crc32c_generic"],
	]);

	it("puts dependencies (hard and soft pre) first, each module once", () => {
		expect(loadOrder(["ext4", "erofs"], index, aliases).order).toEqual([
			"crc32c_generic",
			"jbd2",
			"mbcache",
			"crc16",
			"ext4",
			"libcrc32c",
			"erofs",
		]);
		expect(loadOrder(["virtio-net"], index, aliases).order).toEqual([
			"virtio_ring",
			"virtio",
			"failover",
			"net_failover",
			"virtio_net",
		]);
		const p = loadOrder(["post"], index, aliases);
		expect(p.order).toEqual(["post", "jbd2"]);
		expect(p.missingSoftdeps).toEqual(["nowhere"]);
		// an unresolvable soft dependency is reported, not fatal
		expect(loadOrder(["ext4"], index).missingSoftdeps).toEqual([
			"crypto_crc32c",
		]);
	});

	it("a missing module is INPUT_NOT_FOUND, a cycle FORMAT_INVALID", () => {
		expect(thrown(() => loadOrder(["nope"], index)).code).toBe(
			"INPUT_NOT_FOUND",
		);
		const cyc = new Map([
			["a", info({ depends: ["b"] })],
			["b", info({ depends: ["a"] })],
		]);
		const e = thrown(() => loadOrder(["a"], cyc));
		expect(e.code).toBe("FORMAT_INVALID");
		expect(e.message).toContain("a -> b -> a");
	});

	it("every module comes after all it depends on, for random graphs (property)", () => {
		fc.assert(
			fc.property(
				fc.integer({ min: 1, max: 15 }).chain((n) =>
					fc.tuple(
						fc.constant(n),
						// edges only from higher to lower numbers: acyclic
						fc.array(fc.tuple(fc.nat(n - 1), fc.nat(n - 1)), { maxLength: 40 }),
						fc.uniqueArray(fc.nat(n - 1), { minLength: 1, maxLength: n }),
					),
				),
				([n, edges, wanted]) => {
					const idx = new Map<string, ModInfo>();
					for (let i = 0; i < n; i++) idx.set(`m${i}`, info({}));
					for (const [a, b] of edges)
						if (a > b) (idx.get(`m${a}`) as ModInfo).depends.push(`m${b}`);
					const { order } = loadOrder(
						wanted.map((w) => `m${w}`),
						idx,
					);
					expect(new Set(order).size).toBe(order.length);
					for (const w of wanted) expect(order).toContain(`m${w}`);
					for (const m of order)
						for (const d of (idx.get(m) as ModInfo).depends)
							expect(order.indexOf(d)).toBeLessThan(order.indexOf(m));
				},
			),
			{ numRuns: 500 },
		);
	});
});
