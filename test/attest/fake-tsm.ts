/**
 * A fake configfs-tsm tree: a plain directory and a poller that plays the kernel. For every new
 * report directory it creates `provider` and `generation` (0); when `inblob` gets (new) content it
 * counts the write, writes `outblob` (and `auxblob`) made by `produce(inblob)`, then the new
 * `generation` — in that order, each file written whole (temp file + rename), so a reader that
 * waits for the generation sees a complete outblob. A `privlevel` write counts as a write too.
 */
import {
	mkdtempSync,
	readdirSync,
	readFileSync,
	renameSync,
	writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export interface FakeTsm {
	root: string;
	/** inblobs seen, in order. */
	seen: Buffer[];
	/** Report directories ever created. */
	dirs: Set<string>;
	/** Make the next report race: an extra write bumps the generation after outblob is written. */
	raceNext: number;
	stop(): void;
}

interface DirState {
	inblob?: string;
	privlevel?: string;
	writes: number;
}

function put(path: string, b: Buffer | string): void {
	writeFileSync(`${path}.tmp`, b);
	renameSync(`${path}.tmp`, path);
}

export function startFakeTsm(o: {
	provider: string;
	produce: (
		inblob: Buffer,
		privlevel?: number,
	) => { outblob: Buffer; auxblob?: Buffer };
	root?: string;
}): FakeTsm {
	const root = o.root ?? mkdtempSync(join(tmpdir(), "dadi-fake-tsm-"));
	const state = new Map<string, DirState>();
	const fake: FakeTsm = {
		root,
		seen: [],
		dirs: new Set(),
		raceNext: 0,
		stop: () => clearInterval(timer),
	};
	const tick = () => {
		let names: string[];
		try {
			names = readdirSync(root);
		} catch {
			return;
		}
		for (const name of names) {
			const dir = join(root, name);
			let s = state.get(dir);
			if (!s) {
				s = { writes: 0 };
				state.set(dir, s);
				fake.dirs.add(name);
				put(join(dir, "generation"), "0\n");
				put(join(dir, "provider"), `${o.provider}\n`);
			}
			let files: string[];
			try {
				files = readdirSync(dir);
			} catch {
				continue; // removed meanwhile
			}
			try {
				if (files.includes("privlevel")) {
					const p = readFileSync(join(dir, "privlevel"), "utf8");
					if (p && p !== s.privlevel) {
						s.privlevel = p;
						s.writes++;
						put(join(dir, "generation"), `${s.writes}\n`);
					}
				}
				if (!files.includes("inblob")) continue;
				const inblob = readFileSync(join(dir, "inblob"));
				if (inblob.length === 0 || inblob.toString("hex") === s.inblob)
					continue;
				s.inblob = inblob.toString("hex");
				s.writes++;
				fake.seen.push(inblob);
				const r = o.produce(
					inblob,
					s.privlevel ? Number(s.privlevel) : undefined,
				);
				put(join(dir, "outblob"), r.outblob);
				put(join(dir, "auxblob"), r.auxblob ?? Buffer.alloc(0));
				if (fake.raceNext > 0) {
					fake.raceNext--;
					s.writes++; // "another process" wrote inblob too
				}
				put(join(dir, "generation"), `${s.writes}\n`);
			} catch {
				// the attester removed the directory meanwhile
			}
		}
	};
	const timer = setInterval(tick, 2);
	return fake;
}
