/**
 * `--record-trace FILE`: records the start-up reads of a served disk and writes the plaintext
 * trace to FILE (mode 0600, atomically) once — when a budget runs out, on SIGUSR1, or when serving
 * stops, whichever comes first. The file is the operator's own: it reveals the image's access
 * pattern, so it leaves the machine only sealed (`dadi-seal trace attach`).
 */
import { encodeTrace, traceSummary } from "../format/trace.js";
import {
	TraceRecorder,
	type TraceRecorderOptions,
	type TraceStop,
} from "../lazy/trace-recorder.js";
import { writeFileAtomic } from "../oci/layout.js";
import type { VirtualDisk } from "../storage/virtual-disk.js";

export interface TraceRecordingJson {
	file: string;
	entries: number;
	/** Why recording stopped; absent while it goes on. */
	stoppedBy?: TraceStop;
	written: boolean;
	error?: string;
}

export class TraceRecording {
	readonly recorder: TraceRecorder;
	readonly #detach: () => void;
	#writing: Promise<void> | undefined;
	#written = false;
	#error: string | undefined;

	constructor(
		readonly file: string,
		disk: VirtualDisk,
		o: Pick<TraceRecorderOptions, "budgetMs" | "budgetBytes">,
		readonly log: (line: string) => void,
	) {
		this.recorder = new TraceRecorder(disk.chunkSize, {
			...o,
			onStop: (why) => void this.#write(why),
		});
		this.#detach = this.recorder.attach(disk);
	}

	/** Stops recording (if it still runs) and waits for the file. */
	async finish(why: TraceStop): Promise<void> {
		this.recorder.stop(why);
		await this.#writing;
	}

	#write(why: TraceStop): Promise<void> {
		this.#detach();
		this.#writing ??= (async () => {
			const entries = this.recorder.entries;
			try {
				await writeFileAtomic(this.file, encodeTrace(entries), 0o600);
				this.#written = true;
				const s = traceSummary(entries);
				this.log(
					`start-up trace: ${s.entries} chunks over ${s.lastMs} ms written to ${this.file} (stopped: ${why})`,
				);
			} catch (e) {
				this.#error = (e as Error).message;
				this.log(`cannot write the start-up trace: ${this.#error}`);
			}
		})();
		return this.#writing;
	}

	toJSON(): TraceRecordingJson {
		return {
			file: this.file,
			entries: this.recorder.entries.length,
			...(this.recorder.stoppedBy
				? { stoppedBy: this.recorder.stoppedBy }
				: {}),
			written: this.#written,
			...(this.#error ? { error: this.#error } : {}),
		};
	}
}
