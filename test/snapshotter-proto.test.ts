/**
 * Our .proto statement of containerd's API (src/snapshotter/proto: the snapshots service a proxy
 * snapshotter serves, and the content, images, leases, diff, introspection and version services
 * `dadi-snapshotter pull` calls) against containerd's own files as Debian ships them
 * (golang-github-containerd-containerd-dev for containerd 1.6.20; libprotobuf-dev for the
 * google.protobuf types; golang-github-gogo-googleapis-dev for google.rpc.Status): every message,
 * field (name, number, label, type, type name, map entry), enum value and method (path, streaming,
 * request and response types) equal. Options (gogoproto) are Go code generation only and are not
 * compared.
 */
import { existsSync } from "node:fs";
import { loadSync, type PackageDefinition } from "@grpc/proto-loader";
import { describe, expect, it } from "vitest";
import { PROTO_DIR, SNAPSHOTS_PROTO } from "../src/snapshotter/proto.js";

const GOCODE = "/usr/share/gocode/src";
const API = "github.com/containerd/containerd/api";
const OPTIONS = { keepCase: true, includeDirs: [] as string[] };

/** Each service file: ours, theirs, the service, how many messages and enums the load defines. */
const FILES = [
	{
		ours: SNAPSHOTS_PROTO,
		theirs: `${API}/services/snapshots/v1/snapshots.proto`,
		service: "containerd.services.snapshots.v1.Snapshots",
		types: 23,
	},
	{
		ours: "containerd/services/content/v1/content.proto",
		theirs: `${API}/services/content/v1/content.proto`,
		service: "containerd.services.content.v1.Content",
		types: 22,
	},
	{
		ours: "containerd/services/images/v1/images.proto",
		theirs: `${API}/services/images/v1/images.proto`,
		service: "containerd.services.images.v1.Images",
		types: 14,
	},
	{
		ours: "containerd/services/leases/v1/leases.proto",
		theirs: `${API}/services/leases/v1/leases.proto`,
		service: "containerd.services.leases.v1.Leases",
		types: 13,
	},
	{
		ours: "containerd/services/diff/v1/diff.proto",
		theirs: `${API}/services/diff/v1/diff.proto`,
		service: "containerd.services.diff.v1.Diff",
		types: 7,
	},
	{
		ours: "containerd/services/introspection/v1/introspection.proto",
		theirs: `${API}/services/introspection/v1/introspection.proto`,
		service: "containerd.services.introspection.v1.Introspection",
		types: 8,
	},
	{
		ours: "containerd/services/version/v1/version.proto",
		theirs: `${API}/services/version/v1/version.proto`,
		service: "containerd.services.version.v1.Version",
		types: 2,
	},
];

function theirs(file: string): PackageDefinition {
	return loadSync(file, {
		...OPTIONS,
		includeDirs: [
			GOCODE,
			`${GOCODE}/github.com/gogo/protobuf`,
			`${GOCODE}/github.com/gogo/googleapis`,
			"/usr/include",
		],
	});
}
function ours(file: string): PackageDefinition {
	return loadSync(file, { ...OPTIONS, includeDirs: [PROTO_DIR] });
}

type Desc = Record<string, unknown>;

/** A message or enum descriptor reduced to what reaches the wire. */
function wire(d: Desc): unknown {
	const fields = ((d.field as Desc[] | undefined) ?? []).map((f) => ({
		name: f.name,
		number: f.number,
		label: f.label,
		type: f.type,
		typeName: f.typeName,
		oneofIndex: f.oneofIndex,
		proto3Optional: f.proto3Optional,
	}));
	const values = ((d.value as Desc[] | undefined) ?? []).map((v) => ({
		name: v.name,
		number: v.number,
	}));
	return {
		name: d.name,
		fields,
		values,
		nested: ((d.nestedType as Desc[] | undefined) ?? []).map(wire),
		enums: ((d.enumType as Desc[] | undefined) ?? []).map(wire),
		oneofs: ((d.oneofDecl as Desc[] | undefined) ?? []).map((o) => o.name),
		mapEntry: Boolean((d.options as Desc | null)?.mapEntry),
	};
}

/** containerd's types and the well-known types it uses (not gogoproto's descriptor types). */
const WANTED =
	/^(containerd\.|google\.protobuf\.(Empty|Timestamp|FieldMask|Any)$|google\.rpc\.Status$)/;

const names = (p: PackageDefinition) =>
	Object.keys(p)
		.filter((n) => WANTED.test(n))
		.sort();

describe("containerd API definitions", () => {
	it("Debian's containerd API files are installed (apt-get install golang-github-containerd-containerd-dev)", () => {
		for (const f of FILES)
			expect(existsSync(`${GOCODE}/${f.theirs}`), f.theirs).toBe(true);
		expect(existsSync("/usr/include/google/protobuf/timestamp.proto")).toBe(
			true,
		);
		expect(
			existsSync(
				`${GOCODE}/github.com/gogo/googleapis/google/rpc/status.proto`,
			),
		).toBe(true);
	});

	for (const f of FILES) {
		const short = f.service.split(".").slice(-1)[0];
		it(`${short}: the same messages, enums and services`, () => {
			expect(names(ours(f.ours))).toEqual(names(theirs(f.theirs)));
			// the types and the service
			expect(names(ours(f.ours))).toHaveLength(f.types + 1);
		});

		it(`${short}: every message and enum has the same fields, numbers, labels, types`, () => {
			const a = theirs(f.theirs);
			const b = ours(f.ours);
			let compared = 0;
			for (const name of names(a)) {
				const x = a[name] as Desc;
				const y = b[name] as Desc;
				if (!("type" in x)) continue; // the service, below
				expect(wire(y.type as Desc), name).toEqual(wire(x.type as Desc));
				compared++;
			}
			expect(compared).toBe(f.types);
		});

		it(`${short}: the same methods, paths, streaming and message types`, () => {
			const x = theirs(f.theirs)[f.service] as unknown as Record<string, Desc>;
			const y = ours(f.ours)[f.service] as unknown as Record<string, Desc>;
			expect(Object.keys(y).sort()).toEqual(Object.keys(x).sort());
			for (const m of Object.keys(x)) {
				const pick = (d: Desc) => ({
					path: d.path,
					requestStream: d.requestStream,
					responseStream: d.responseStream,
					request: ((d.requestType as Desc).type as Desc).name,
					response: ((d.responseType as Desc).type as Desc).name,
				});
				expect(pick(y[m] as Desc), m).toEqual(pick(x[m] as Desc));
			}
		});
	}

	it("streaming where containerd streams: List of snapshots, content Write both ways", () => {
		const snap = ours(SNAPSHOTS_PROTO)[
			"containerd.services.snapshots.v1.Snapshots"
		] as unknown as Record<string, Desc>;
		expect((snap.List as Desc).responseStream).toBe(true);
		const content = ours("containerd/services/content/v1/content.proto")[
			"containerd.services.content.v1.Content"
		] as unknown as Record<string, Desc>;
		expect((content.Write as Desc).requestStream).toBe(true);
		expect((content.Write as Desc).responseStream).toBe(true);
	});

	it("the comparison can fail: a changed field number, type or enum value is seen", () => {
		const a = theirs(FILES[0]?.theirs as string)[
			"containerd.services.snapshots.v1.Info"
		] as Desc;
		const changed = structuredClone(a.type as Desc);
		((changed.field as Desc[])[2] as Desc).number = 7;
		expect(wire(changed)).not.toEqual(wire(a.type as Desc));
		const d = theirs(FILES[2]?.theirs as string)["containerd.types.Descriptor"];
		const typed = structuredClone((d as Desc).type as Desc);
		((typed.field as Desc[])[2] as Desc).type = "TYPE_INT32";
		expect(wire(typed)).not.toEqual(wire((d as Desc).type as Desc));
		const e = theirs(FILES[1]?.theirs as string)[
			"containerd.services.content.v1.WriteAction"
		] as Desc;
		const renumbered = structuredClone(e.type as Desc);
		((renumbered.value as Desc[])[2] as Desc).number = 3;
		expect(wire(renumbered)).not.toEqual(wire(e.type as Desc));
	});
});
