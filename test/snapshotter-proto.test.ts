/**
 * Our .proto statement of containerd's snapshots API (src/snapshotter/proto) against containerd's
 * own files as Debian ships them (golang-github-containerd-containerd-dev for containerd 1.6.20;
 * libprotobuf-dev for the google.protobuf types): every message, field (name, number, label, type,
 * type name, map entry), enum value and method (path, streaming, request and response types) equal.
 * Options (gogoproto) are Go code generation only and are not compared.
 */
import { existsSync } from "node:fs";
import { loadSync, type PackageDefinition } from "@grpc/proto-loader";
import { describe, expect, it } from "vitest";
import { PROTO_DIR, SNAPSHOTS_PROTO } from "../src/snapshotter/proto.js";

const GOCODE = "/usr/share/gocode/src";
const CONTAINERD_PROTO =
	"github.com/containerd/containerd/api/services/snapshots/v1/snapshots.proto";
const OPTIONS = { keepCase: true, includeDirs: [] as string[] };

function theirs(): PackageDefinition {
	return loadSync(CONTAINERD_PROTO, {
		...OPTIONS,
		includeDirs: [GOCODE, `${GOCODE}/github.com/gogo/protobuf`, "/usr/include"],
	});
}
function ours(): PackageDefinition {
	return loadSync(SNAPSHOTS_PROTO, { ...OPTIONS, includeDirs: [PROTO_DIR] });
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

const WANTED = /^(containerd\.|google\.protobuf\.(Empty|Timestamp|FieldMask)$)/;

describe("snapshots API definitions", () => {
	it("Debian's containerd API files are installed (apt-get install golang-github-containerd-containerd-dev)", () => {
		expect(existsSync(`${GOCODE}/${CONTAINERD_PROTO}`)).toBe(true);
		expect(existsSync("/usr/include/google/protobuf/timestamp.proto")).toBe(
			true,
		);
	});

	it("define the same messages, enums and services", () => {
		const a = theirs();
		const b = ours();
		const names = (p: PackageDefinition) =>
			Object.keys(p)
				.filter((n) => WANTED.test(n))
				.sort();
		expect(names(b)).toEqual(names(a));
		expect(names(b)).toHaveLength(24);
	});

	it("every message and enum: same fields, numbers, labels, types", () => {
		const a = theirs();
		const b = ours();
		let compared = 0;
		for (const name of Object.keys(a).filter((n) => WANTED.test(n))) {
			const x = a[name] as Desc;
			const y = b[name] as Desc;
			if (!("type" in x)) continue; // services below
			expect(wire(y.type as Desc), name).toEqual(wire(x.type as Desc));
			compared++;
		}
		expect(compared).toBe(23);
	});

	it("the Snapshots service: same methods, paths, streaming and message types", () => {
		const svc = "containerd.services.snapshots.v1.Snapshots";
		const x = theirs()[svc] as unknown as Record<string, Desc>;
		const y = ours()[svc] as unknown as Record<string, Desc>;
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
		expect((x.List as Desc).responseStream).toBe(true);
	});

	it("the comparison can fail: a changed field number is seen", () => {
		const a = theirs()["containerd.services.snapshots.v1.Info"] as Desc;
		const changed = structuredClone(a.type as Desc);
		((changed.field as Desc[])[2] as Desc).number = 7;
		expect(wire(changed)).not.toEqual(wire(a.type as Desc));
	});
});
