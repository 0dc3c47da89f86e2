/**
 * Reading the Kata virtual volume that dadi-snapshotter's guest mode hands to the sandbox
 * (src/snapshotter/sealed-mounts.ts `kataVolume`): base64 JSON of Kata's KataVirtualVolume with
 * volume type `image_guest_pull` and dadi's metadata — the pinned image reference, the image key's
 * KBS resource and how many layers to serve. Pure and strict: the bytes come from the host, which
 * is not trusted, so anything malformed is refused with a message naming what is wrong (never
 * quoting more than a short prefix of it).
 *
 * Trust note: nothing here is trusted for confidentiality or integrity — the image is pinned by
 * digest and every byte read is authenticated with the key the broker releases; a host that lies
 * in the volume can only make the container fail to start or start another sealed image the
 * broker's policy also releases.
 */
import { DadiError } from "../errors.js";
import { DIGEST_RE } from "../oci/digest.js";
import { parseReference } from "../oci/reference.js";

/** What `dadi-guest run` takes from a volume. */
export interface GuestVolume {
	/** docker://HOST/REPO@sha256:… */
	image: string;
	/** kbs:///REPO/TYPE/TAG */
	keyRef: string;
	/** Layers to serve, from the bottom (1 or more). */
	layers: number;
}

/** Longest volume text accepted (base64 or JSON): a real one is well under 2 KiB. */
export const MAX_VOLUME_TEXT = 64 * 1024;

const KEY_REF_RE =
	/^kbs:\/\/\/[A-Za-z0-9._-]{1,128}\/[A-Za-z0-9._-]{1,128}\/[A-Za-z0-9._-]{1,128}$/;

const bad = (msg: string) => new DadiError("INPUT_INVALID", `--volume: ${msg}`);

function isObject(v: unknown): v is Record<string, unknown> {
	return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** The volume's JSON bytes from its text: base64 (standard or url-safe), or JSON as is. */
export function decodeVolumeText(text: string): Buffer {
	const t = text.trim();
	if (t.length === 0) throw bad("empty");
	if (t.length > MAX_VOLUME_TEXT)
		throw bad(`${t.length} characters (at most ${MAX_VOLUME_TEXT})`);
	if (t.startsWith("{")) return Buffer.from(t, "utf8");
	if (!/^[A-Za-z0-9+/_-]+={0,2}$/.test(t))
		throw bad("neither base64 nor a JSON object");
	return Buffer.from(t.replace(/-/g, "+").replace(/_/g, "/"), "base64");
}

/** Parses and checks a KataVirtualVolume (its JSON bytes) carrying a sealed dadi image. */
export function parseGuestVolume(json: Uint8Array): GuestVolume {
	let doc: unknown;
	try {
		doc = JSON.parse(Buffer.from(json).toString("utf8"));
	} catch {
		throw bad("not valid JSON (expected base64 of a Kata virtual volume)");
	}
	if (!isObject(doc)) throw bad("not a JSON object");
	if (doc.volume_type !== "image_guest_pull")
		throw bad(
			`volume_type is ${describe(doc.volume_type)}, expected "image_guest_pull" (the volume dadi-snapshotter's guest mode passes)`,
		);
	if (doc.fs_type !== undefined && doc.fs_type !== "dadi")
		throw bad(`fs_type is ${describe(doc.fs_type)}, expected "dadi"`);
	const pull = doc.image_pull;
	if (!isObject(pull) || !isObject(pull.metadata))
		throw bad("image_pull.metadata is missing or not an object");
	const md = pull.metadata;
	const field = (name: string): string => {
		const v = md[name];
		if (typeof v !== "string" || v === "")
			throw bad(
				`image_pull.metadata["${name}"] is ${v === undefined ? "missing" : describe(v)}`,
			);
		return v;
	};
	if (md["io.dadi.format"] !== undefined && md["io.dadi.format"] !== "sealed")
		throw bad(
			`io.dadi.format is ${describe(md["io.dadi.format"])}, expected "sealed"`,
		);
	const image = field("io.dadi.image");
	let ref: ReturnType<typeof parseReference>;
	try {
		ref = parseReference(image);
	} catch {
		throw bad(`io.dadi.image ${describe(image)} is not an image reference`);
	}
	if (ref.transport !== "docker" || !ref.digest || !DIGEST_RE.test(ref.digest))
		throw bad(
			`io.dadi.image ${describe(image)} must be docker://HOST/REPO@sha256:… (pinned by digest)`,
		);
	if (doc.source !== undefined && doc.source !== image)
		throw bad("source and io.dadi.image name different images");
	const keyRef = field("io.dadi.key-ref");
	if (!KEY_REF_RE.test(keyRef))
		throw bad(
			`io.dadi.key-ref ${describe(keyRef)} is not a KBS resource (kbs:///REPO/TYPE/TAG)`,
		);
	const layersText = field("io.dadi.layers");
	if (!/^[1-9]\d{0,3}$/.test(layersText))
		throw bad(
			`io.dadi.layers ${describe(layersText)} is not a layer count (1 to 9999)`,
		);
	return { image, keyRef, layers: Number(layersText) };
}

/** A value for an error message: its JSON, cut short. */
function describe(v: unknown): string {
	if (v === undefined) return "missing";
	let s: string;
	try {
		s = JSON.stringify(v) ?? String(v);
	} catch {
		s = String(v);
	}
	return s.length > 80 ? `${s.slice(0, 80)}…` : s;
}
