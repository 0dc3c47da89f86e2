/** Opening an ordinary image to seal, whatever transport names it. */
import { DadiError } from "../errors.js";
import type { Reference } from "../oci/reference.js";
import { openDockerArchiveImage } from "./docker-archive-source.js";
import type { Platform, SourceImage } from "./image-source.js";
import { openOciLayoutImage } from "./oci-layout-source.js";
import {
	openRegistryImage,
	type RegistrySourceOptions,
} from "./registry-source.js";

export async function openSourceImage(
	ref: Reference,
	platform: Platform,
	o: RegistrySourceOptions = {},
): Promise<SourceImage> {
	if (ref.transport === "oci") return openOciLayoutImage(ref, platform);
	if (ref.transport === "docker") return openRegistryImage(ref, platform, o);
	if (ref.transport === "docker-archive")
		return openDockerArchiveImage(ref, platform);
	throw new DadiError(
		"USAGE",
		`${ref.transport}: is not an image source (use oci:, docker:// or docker-archive:)`,
	);
}
