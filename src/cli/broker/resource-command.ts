/** `dadi-broker resource put|list|rm` and `dadi-broker audit`: the admin API from the command line. */
import { readFile } from "node:fs/promises";
import type { Command } from "commander";
import { AdminClient, readAdminToken } from "../../broker/admin-client.js";
import { parseImageKey, toJwk } from "../../crypto/image-key.js";
import { DadiError, fromSystemError } from "../../errors.js";
import { resourcePathOf } from "../../kbs/client.js";
import { printable } from "../../printable.js";
import { printJson, runAction } from "../common.js";

interface AdminFlags {
	admin: string;
	adminTokenFile?: string;
	caFile?: string;
	json?: boolean;
}

function adminOptions(c: Command): Command {
	return c
		.requiredOption(
			"--admin <URL>",
			"the broker's admin API (http[s]://HOST:PORT)",
		)
		.option(
			"--admin-token-file <FILE>",
			"the admin token (or $DADI_BROKER_ADMIN_TOKEN)",
		)
		.option("--ca-file <PEM>", "CA certificates for an https admin API")
		.option("--json", "print the result as JSON");
}

async function withClient<T>(
	f: AdminFlags,
	fn: (c: AdminClient) => Promise<T>,
): Promise<T> {
	const client = await AdminClient.open({
		url: f.admin,
		token: await readAdminToken(f.adminTokenFile),
		caFile: f.caFile,
	});
	try {
		return await fn(client);
	} finally {
		await client.close();
	}
}

export function resourceCommand(program: Command): void {
	const res = program
		.command("resource")
		.description("manage the resources (image keys) the broker releases");
	adminOptions(
		res
			.command("put")
			.description(
				"store a resource: an image key (--image-key, checked) or any file (--file)",
			)
			.argument("<PATH>", "kbs:///REPO/TYPE/TAG or REPO/TYPE/TAG"),
	)
		.option(
			"--image-key <KEYFILE>",
			"an image key written by 'dadi-seal keygen'",
		)
		.option("--file <FILE>", "any secret file (at most 64 KiB)")
		.action(
			async (
				path: string,
				f: AdminFlags & { imageKey?: string; file?: string },
			) =>
				runAction("dadi-broker resource put", Boolean(f.json), async () => {
					const p = resourcePathOf(path);
					if (Boolean(f.imageKey) === Boolean(f.file))
						throw new DadiError(
							"USAGE",
							"give exactly one of --image-key KEYFILE or --file FILE",
						);
					const src = (f.imageKey ?? f.file) as string;
					const bytes = await readFile(src).catch((e) => {
						throw fromSystemError(e, src, "reading the resource");
					});
					let value = bytes;
					let kid: string | undefined;
					if (f.imageKey) {
						const k = parseImageKey(bytes.toString("utf8"), src);
						kid = k.kid;
						value = Buffer.from(JSON.stringify(toJwk(k)));
					}
					const r = (await withClient(f, (c) => c.putResource(p, value))) as {
						created?: boolean;
					};
					value.fill(0);
					bytes.fill(0);
					const out = {
						ok: true,
						resource: p,
						created: Boolean(r.created),
						kid: kid ?? null,
					};
					if (f.json) printJson(out);
					else
						process.stdout.write(
							`${out.created ? "stored" : "replaced"} ${p}${kid ? ` (image key ${kid})` : ""}\n`,
						);
				}),
		);
	adminOptions(
		res
			.command("list")
			.description("list stored resources (paths, sizes, times; never values)"),
	).action(async (f: AdminFlags) =>
		runAction("dadi-broker resource list", Boolean(f.json), async () => {
			const r = (await withClient(f, (c) =>
				c.call("GET", "/admin/v0/resources"),
			)) as {
				resources: { path: string; size: number; updated: string }[];
			};
			if (f.json) printJson({ ok: true, resources: r.resources });
			else
				for (const x of r.resources)
					process.stdout.write(
						`${printable(x.path)}\t${printable(x.size)} B\t${printable(x.updated)}\n`,
					);
		}),
	);
	adminOptions(
		res
			.command("rm")
			.description("delete a resource")
			.argument("<PATH>", "kbs:///REPO/TYPE/TAG"),
	).action(async (path: string, f: AdminFlags) =>
		runAction("dadi-broker resource rm", Boolean(f.json), async () => {
			const p = resourcePathOf(path);
			await withClient(f, (c) => c.call("DELETE", `/admin/v0/resource/${p}`));
			if (f.json) printJson({ ok: true, resource: p, deleted: true });
			else process.stdout.write(`deleted ${p}\n`);
		}),
	);
}

export function auditCommand(program: Command): void {
	adminOptions(
		program
			.command("audit")
			.description("query the audit log of releases and denials"),
	)
		.option("--since <ISO8601>", "records at or after this time")
		.option("--resource <PATH>", "records for this resource")
		.option("--event <EVENT>", "release, deny, admin")
		.option("--limit <N>", "the newest N records (default 100)")
		.action(
			async (
				f: AdminFlags & {
					since?: string;
					resource?: string;
					event?: string;
					limit?: string;
				},
			) =>
				runAction("dadi-broker audit", Boolean(f.json), async () => {
					const q = new URLSearchParams();
					if (f.since) q.set("since", f.since);
					if (f.resource) q.set("resource", resourcePathOf(f.resource));
					if (f.event) q.set("event", f.event);
					if (f.limit) q.set("limit", f.limit);
					const r = (await withClient(f, (c) =>
						c.call("GET", `/admin/v0/audit?${q}`),
					)) as {
						records: Record<string, unknown>[];
					};
					if (f.json) printJson({ ok: true, records: r.records });
					else process.stdout.write(auditTable(r.records));
				}),
		);
}

const AUDIT_COLUMNS = [
	"SEQ",
	"TIME",
	"EVENT",
	"RESOURCE",
	"CLIENT",
	"TEE",
	"STATUS",
	"POLICY",
	"REASONS / DETAIL",
] as const;

/**
 * Audit records as a table with headings, one record a line, tab-separated. Every cell is made
 * printable (clients choose some of the text: a newline, tab or terminal escape stays visible and
 * inert).
 */
export function auditTable(records: Record<string, unknown>[]): string {
	if (records.length === 0) return "no audit records match\n";
	const cell = (v: unknown) =>
		v === undefined || v === null || v === "" ? "-" : printable(v);
	const rows = records.map((x) => [
		cell(x.seq),
		cell(x.time),
		cell(x.event),
		cell(x.resource),
		cell(x.client),
		cell(x.tee),
		cell(x.status),
		cell(x.policy),
		cell(
			[Array.isArray(x.reasons) ? x.reasons.join("; ") : "", x.detail ?? ""]
				.filter(Boolean)
				.join("; "),
		),
	]);
	return `${[[...AUDIT_COLUMNS], ...rows].map((r) => r.join("\t")).join("\n")}\n`;
}
