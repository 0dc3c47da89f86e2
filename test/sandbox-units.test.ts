/** The sandbox's small pure pieces: apt output parsing, /init reports, QEMU's command line, job checks. */
import { describe, expect, it } from "vitest";
import { parseAptCandidate, parseAptDepends } from "../src/sandbox/debs.js";
import { INIT_SCRIPT } from "../src/sandbox/init-script.js";
import { bootVm, parseInitReport, qemuArgs } from "../src/sandbox/qemu.js";
import { rejection } from "./helpers.js";

describe("sandbox units", () => {
	it("reads apt-cache output", () => {
		expect(
			parseAptDepends(
				"linux-image-amd64\n  Depends: linux-image-6.1.0-57-amd64\n",
				"linux-image-",
			),
		).toBe("linux-image-6.1.0-57-amd64");
		expect(
			parseAptDepends("x\n  Depends: <virtual>\n", "linux-image-"),
		).toBeUndefined();
		expect(
			parseAptCandidate(
				"busybox-static:\n  Installed: (none)\n  Candidate: 1:1.35.0-4+deb12u1+b1\n",
			),
		).toBe("1:1.35.0-4+deb12u1+b1");
		expect(parseAptCandidate("x:\n  Candidate: (none)\n")).toBeUndefined();
	});

	it("finds /init's reports anywhere in a console line", () => {
		expect(parseInitReport('DADI-INIT {"event":"ready","uptime":2.5}')).toEqual(
			{ event: "ready", uptime: 2.5 },
		);
		expect(
			parseInitReport(
				'job output without newlineDADI-INIT {"event":"exit","code":3}',
			),
		).toEqual({
			event: "exit",
			code: 3,
		});
		expect(parseInitReport("DADI-INIT {broken")).toBeUndefined();
		expect(parseInitReport('DADI-INIT {"no":"event"}')).toBeUndefined();
		expect(parseInitReport("[    1.2] kernel line")).toBeUndefined();
	});

	it("builds QEMU's command line: TCG, no defaults, no reboot, fw_cfg job, pcap, restricted net", () => {
		const a = qemuArgs({
			kernel: "/k",
			initramfs: "/i",
			memoryMiB: 512,
			cpus: 1,
			fwCfg: { "opt/io.dadi/argv": "/tmp/argv" },
			pcapFile: "/tmp/p.pcap",
			onlyHostPorts: [8080],
		});
		const argOf = (flag: string) => a[a.indexOf(flag) + 1];
		expect(argOf("-accel")).toBe("tcg");
		expect(argOf("-machine")).toBe("pc");
		expect(a).toContain("-nodefaults");
		expect(a).toContain("-no-reboot");
		expect(argOf("-append")).toMatch(/console=ttyS0 panic=-1/);
		expect(argOf("-fw_cfg")).toBe("name=opt/io.dadi/argv,file=/tmp/argv");
		expect(argOf("-object")).toBe(
			"filter-dump,id=d0,netdev=n0,file=/tmp/p.pcap",
		);
		expect(argOf("-netdev")).toBe(
			"user,id=n0,ipv6=off,restrict=on,guestfwd=tcp:10.0.2.100:8080-cmd:busybox nc 127.0.0.1 8080",
		);
		const m = qemuArgs({
			kernel: "/k",
			initramfs: "/i",
			memoryMiB: 512,
			cpus: 1,
			fwCfg: {},
			machine: "microvm",
		});
		expect(m[m.indexOf("-machine") + 1]).toBe("microvm,acpi=on,rtc=on");
		expect(m).toContain("virtio-net-device,netdev=n0");
	});

	it("refuses jobs /init could not pass on faithfully", async () => {
		const base = { kernel: "/nonexistent", initramfs: "/nonexistent" };
		expect(
			(await rejection(bootVm({ ...base, argv: ["/bin/sh", "-c", "a\nb"] })))
				.code,
		).toBe("USAGE");
		expect((await rejection(bootVm({ ...base, argv: ["sh"] }))).code).toBe(
			"USAGE",
		);
		expect(
			(
				await rejection(
					bootVm({ ...base, argv: ["/bin/true"], env: { "A-B": "1" } }),
				)
			).code,
		).toBe("USAGE");
		expect(
			(
				await rejection(
					bootVm({ ...base, argv: ["/bin/true"], qemu: "/nonexistent/qemu" }),
				)
			).code,
		).toBe("INPUT_NOT_FOUND");
	});

	it("/init is a busybox sh script with the contract's reports", () => {
		expect(INIT_SCRIPT.startsWith("#!/bin/busybox sh\n")).toBe(true);
		for (const e of ["userspace", "ready", "error", "module-failed"])
			expect(INIT_SCRIPT).toContain(`report ${e}`);
		expect(INIT_SCRIPT).toContain('{\\"event\\":\\"exit\\",\\"code\\":$code,');
		expect(INIT_SCRIPT).toContain("/sys/firmware/qemu_fw_cfg/by_name");
		expect(INIT_SCRIPT).toContain("poweroff -f");
	});
});
