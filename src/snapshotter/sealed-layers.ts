/**
 * dadi's remote-layer plug-in for the snapshotter (src/snapshotter/remote.ts): sealed layers are
 * claimed from the labels containerd passes while unpacking, so containerd never downloads them,
 * and a container above them gets, per runtime class:
 *
 * - host mode (runc, gVisor): an overlay whose lower directory is the image's file system, served
 *   lazily on this host by a `dadi-guest serve` process (host-images.ts) — the host holds the key;
 * - guest mode (Kata, confidential): a mount that carries the pinned image reference and the key
 *   reference to the sandbox as a Kata virtual volume; nothing is fetched, decrypted or mounted here
 *   and no key is ever asked for (sealed-mounts.ts).
 */
import { join } from "node:path";
import { HostImages } from "./host-images.js";
import type {
	Claim,
	ClaimedLayer,
	ClaimRequest,
	MountAnswer,
	MountRequest,
	RemoteLayers,
} from "./remote.js";
import {
	type SealedLayerRef,
	sealedLayerFromMetadata,
	sealedLayerOf,
} from "./sealed-labels.js";
import { guestModeMounts, hostModeMounts } from "./sealed-mounts.js";
import type { JsonValue } from "./types.js";

export type SealedLayersOptions =
	| { mode: "host"; host: HostImages; log: (line: string) => void }
	| {
			mode: "guest";
			/** The image key's KBS reference, from the image's public config (no key needed). */
			keyRefOf: (layer: SealedLayerRef) => Promise<string>;
			log: (line: string) => void;
	  };

export class SealedLayers implements RemoteLayers {
	readonly #keyRefs = new Map<string, Promise<string>>();

	constructor(private readonly o: SealedLayersOptions) {}

	async claim(request: ClaimRequest): Promise<Claim | undefined> {
		const ref = sealedLayerOf(request.labels);
		if (!ref) return undefined;
		if (this.o.mode === "guest") await this.#keyRef(ref); // fail the pull early, not the start
		this.o.log(
			`claimed sealed layer ${ref.index + 1}/${ref.count} of ${ref.image} (${ref.layer.slice(0, 19)}…): not downloaded`,
		);
		return { metadata: { ...ref } as unknown as JsonValue };
	}

	async mount(request: MountRequest): Promise<MountAnswer> {
		const top = request.layers[0] as ClaimedLayer;
		const ref = sealedLayerFromMetadata(top.metadata);
		if (this.o.mode === "guest")
			return {
				mounts: guestModeMounts(request.mounts, {
					image: ref.image,
					config: ref.config,
					keyRef: await this.#keyRef(ref),
					layers: ref.index + 1,
				}),
			};
		const dir = await this.o.host.ensure(ref.image, ref.index + 1);
		return {
			mounts: hostModeMounts(
				request.mounts,
				request.layers.map((l) => join(l.dir, "fs")),
				dir,
			),
		};
	}

	async removed(layer: ClaimedLayer): Promise<void> {
		if (this.o.mode !== "host") return;
		const ref = sealedLayerFromMetadata(layer.metadata);
		await this.o.host.stop(ref.image, ref.index + 1);
	}

	async start(layers: readonly ClaimedLayer[]): Promise<void> {
		if (this.o.mode !== "host") return;
		const wanted = new Set(
			layers.map((l) => {
				const r = sealedLayerFromMetadata(l.metadata);
				return HostImages.idOf(r.image, r.index + 1);
			}),
		);
		const host = this.o.host;
		for (const id of await host.adopt())
			if (!wanted.has(id)) {
				this.o.log(
					`host image ${id}: no claimed layer needs it any more; stopping it`,
				);
				await host.stopId(id);
			}
	}

	#keyRef(ref: SealedLayerRef): Promise<string> {
		if (this.o.mode !== "guest") throw new Error("guest mode only");
		let p = this.#keyRefs.get(ref.config);
		if (!p) {
			p = this.o.keyRefOf(ref);
			p.catch(() => this.#keyRefs.delete(ref.config));
			this.#keyRefs.set(ref.config, p);
		}
		return p;
	}
}
