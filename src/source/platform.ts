/** Platform names (`linux/amd64`, `linux/arm64/v8`) and the host's. */
import { DadiError } from "../errors.js";
import type { Platform } from "./image-source.js";

const ARCH: Record<string, string> = {
	x64: "amd64",
	arm64: "arm64",
	arm: "arm",
	ia32: "386",
	ppc64: "ppc64le",
	s390x: "s390x",
	riscv64: "riscv64",
};

export function hostPlatform(): Platform {
	return { os: "linux", architecture: ARCH[process.arch] ?? process.arch };
}

export function parsePlatform(text: string): Platform {
	const parts = text.split("/");
	if (
		parts.length < 2 ||
		parts.length > 3 ||
		parts.some((p) => !/^[a-z0-9_]+$/.test(p))
	)
		throw new DadiError(
			"USAGE",
			`--platform "${text}": expected OS/ARCH[/VARIANT], e.g. linux/amd64`,
		);
	const [os, architecture, variant] = parts as [
		string,
		string,
		string | undefined,
	];
	return variant ? { os, architecture, variant } : { os, architecture };
}

export function formatPlatform(p: Platform): string {
	return `${p.os}/${p.architecture}${p.variant ? `/${p.variant}` : ""}`;
}

/** Whether an index entry's platform satisfies the wanted one (variant only when asked for). */
export function platformMatches(
	have: Partial<Platform> | undefined,
	want: Platform,
): boolean {
	if (!have) return false;
	if (have.os !== want.os || have.architecture !== want.architecture)
		return false;
	return want.variant === undefined || have.variant === want.variant;
}
