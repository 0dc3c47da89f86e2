/**
 * Claims from a replayed CC event log (call only after checkCcelReplay succeeded). Pure.
 *
 * The digests are what the RTMRs measured; the event data (descriptions, file paths, variable
 * names) is the firmware's label for each digest and is NOT covered by the quote. So the summaries
 * and the derived claims that find an event by its label say which measured digest firmware called
 * "the kernel"; a policy that must not trust labels pins rtmr0..rtmr3 themselves. The one text claim,
 * ccel_kernel_parameters, is given only where the event's digest is the hash of that text.
 *
 * Names follow Trustee's former TDX claims (ccel.kernel, ccel.kernel_parameters) with a ccel_ prefix
 * in tee_specific.
 */
import { createHash } from "node:crypto";
import { DadiError } from "../../errors.js";
import { type CcelEvent, type CcelLog, EV_NO_ACTION } from "./ccel.js";
import { sha384Digest } from "./ccel-replay.js";

const EVENT_NAMES: Record<number, string> = {
	0: "EV_PREBOOT_CERT",
	1: "EV_POST_CODE",
	2: "EV_UNUSED",
	3: "EV_NO_ACTION",
	4: "EV_SEPARATOR",
	5: "EV_ACTION",
	6: "EV_EVENT_TAG",
	7: "EV_S_CRTM_CONTENTS",
	8: "EV_S_CRTM_VERSION",
	9: "EV_CPU_MICROCODE",
	10: "EV_PLATFORM_CONFIG_FLAGS",
	11: "EV_TABLE_OF_DEVICES",
	12: "EV_COMPACT_HASH",
	13: "EV_IPL",
	14: "EV_IPL_PARTITION_DATA",
	15: "EV_NONHOST_CODE",
	16: "EV_NONHOST_CONFIG",
	17: "EV_NONHOST_INFO",
	18: "EV_OMIT_BOOT_DEVICE_EVENTS",
	19: "EV_POST_CODE2",
	2147483649: "EV_EFI_VARIABLE_DRIVER_CONFIG",
	2147483650: "EV_EFI_VARIABLE_BOOT",
	2147483651: "EV_EFI_BOOT_SERVICES_APPLICATION",
	2147483652: "EV_EFI_BOOT_SERVICES_DRIVER",
	2147483653: "EV_EFI_RUNTIME_SERVICES_DRIVER",
	2147483654: "EV_EFI_GPT_EVENT",
	2147483655: "EV_EFI_ACTION",
	2147483656: "EV_EFI_PLATFORM_FIRMWARE_BLOB",
	2147483657: "EV_EFI_HANDOFF_TABLES",
	2147483658: "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
	2147483659: "EV_EFI_HANDOFF_TABLES2",
	2147483660: "EV_EFI_VARIABLE_BOOT2",
	2147483661: "EV_EFI_GPT_EVENT2",
	2147483664: "EV_EFI_HCRTM_EVENT",
	2147483872: "EV_EFI_VARIABLE_AUTHORITY",
	2147483873: "EV_EFI_SPDM_FIRMWARE_BLOB",
	2147483874: "EV_EFI_SPDM_FIRMWARE_CONFIG",
};

export function eventTypeName(t: number): string {
	return EVENT_NAMES[t] ?? `0x${t.toString(16).padStart(8, "0")}`;
}

const MAX_SUMMARY = 64;

/** Printable ASCII only (others become "?"), NULs dropped, at most MAX_SUMMARY characters. */
function printable(s: string): string {
	return s
		.replace(/\0/g, "")
		.replace(/[^\x20-\x7e]/g, "?")
		.slice(0, MAX_SUMMARY);
}

function ascii(b: Buffer): string {
	return printable(b.toString("latin1"));
}

/** The data as text when it is text (printable ASCII, NUL-terminated or padded), else "". */
function textOrNothing(b: Buffer): string {
	const end = b.indexOf(0);
	const body = end < 0 ? b : b.subarray(0, end);
	if (end >= 0 && !b.subarray(end).every((x) => x === 0)) return "";
	return body.every((x) => x >= 0x20 && x <= 0x7e) ? ascii(body) : "";
}

function utf16(b: Buffer): string {
	return printable(b.subarray(0, b.length & ~1).toString("utf16le"));
}

/** Media file-path nodes (type 4, subtype 4) of a UEFI device path, joined by ",". */
function devicePathFiles(p: Buffer): string {
	const files: string[] = [];
	let i = 0;
	for (let n = 0; n < 64 && i + 4 <= p.length; n++) {
		const type = p[i] as number;
		const sub = p[i + 1] as number;
		const len = p.readUInt16LE(i + 2);
		if (len < 4 || i + len > p.length || type === 0x7f) break;
		if (type === 4 && sub === 4) files.push(utf16(p.subarray(i + 4, i + len)));
		i += len;
	}
	return files.join(",");
}

/** A short, printable description of an event's data (never trusted: see the module note). */
export function eventSummary(e: CcelEvent): string {
	const d = e.data;
	const name = eventTypeName(e.type);
	try {
		switch (name) {
			case "EV_EVENT_TAG": {
				if (d.length < 8) return "";
				const n = d.readUInt32LE(4);
				return ascii(d.subarray(8, 8 + Math.min(n, d.length - 8)));
			}
			case "EV_EFI_PLATFORM_FIRMWARE_BLOB2":
			case "EV_EFI_HANDOFF_TABLES2": {
				if (d.length < 1) return "";
				return ascii(d.subarray(1, 1 + Math.min(d[0] as number, d.length - 1)));
			}
			case "EV_EFI_VARIABLE_DRIVER_CONFIG":
			case "EV_EFI_VARIABLE_BOOT":
			case "EV_EFI_VARIABLE_BOOT2":
			case "EV_EFI_VARIABLE_AUTHORITY": {
				// GUID, u64 name length (characters), u64 data length, UTF-16LE name, data
				if (d.length < 32) return "";
				const chars = Number(d.readBigUInt64LE(16));
				if (chars > (d.length - 32) / 2) return "";
				return utf16(d.subarray(32, 32 + chars * 2));
			}
			case "EV_EFI_BOOT_SERVICES_APPLICATION":
			case "EV_EFI_BOOT_SERVICES_DRIVER":
			case "EV_EFI_RUNTIME_SERVICES_DRIVER": {
				// u64 location, u64 length, u64 link-time address, u64 device-path length, path
				if (d.length < 32) return "";
				const len = Number(d.readBigUInt64LE(24));
				if (len > d.length - 32) return "";
				return devicePathFiles(d.subarray(32, 32 + len));
			}
			case "EV_PLATFORM_CONFIG_FLAGS":
				// td-shim: a 16-byte descriptor, u32 length, data
				if (d.length >= 20 && d.subarray(0, 16).includes(0))
					return ascii(d.subarray(0, 16));
				return textOrNothing(d);
			case "EV_SEPARATOR":
				return "";
			default:
				return textOrNothing(d);
		}
	} catch {
		return "";
	}
}

export interface CcelClaims {
	/** "rtmrN TYPE sha384-hex summary" per measured event, in log order. */
	ccel_events: string[];
	ccel_kernel: string;
	ccel_kernel_parameters: string;
	ccel_kernel_parameters_digest: string;
	ccel_initrd: string;
}

const TD_PAYLOAD_INFO = "td_payload_info";

function label(e: CcelEvent): string {
	return eventSummary(e);
}

/**
 * The most text ccel_events may hold. The claims travel in the broker's token, which the guest
 * sends back in a header (at most 16 KiB): a log with more measured events than fit is refused
 * (EVIDENCE_UNSUPPORTED) rather than listed in part, so no policy ever sees a partial list.
 */
export const MAX_EVENT_CLAIM_CHARS = 6144;

export function ccelClaims(log: CcelLog): CcelClaims {
	const measured = log.events.filter((e) => e.type !== EV_NO_ACTION);
	const hex = (e: CcelEvent | undefined): string =>
		e ? (sha384Digest(e)?.toString("hex") ?? "") : "";
	const last = (pred: (e: CcelEvent) => boolean): CcelEvent | undefined =>
		measured.filter(pred).at(-1);
	const type = (e: CcelEvent): string => eventTypeName(e.type);

	// The kernel: td-shim's "td_payload" blob, else the last EFI application loaded (RTMR1).
	const kernel =
		last(
			(e) =>
				type(e) === "EV_EFI_PLATFORM_FIRMWARE_BLOB2" &&
				label(e) === "td_payload",
		) ??
		last(
			(e) => e.index === 2 && type(e) === "EV_EFI_BOOT_SERVICES_APPLICATION",
		);
	// The command line: the Linux EFI stub's tagged LoadOptions event, or td-shim's
	// td_payload_info (a 16-byte descriptor, u32 length, the NUL-padded command line, whose
	// SHA-384 is the digest: then the text is authenticated too).
	const tdInfo = last(
		(e) =>
			type(e) === "EV_PLATFORM_CONFIG_FLAGS" && label(e) === TD_PAYLOAD_INFO,
	);
	const loadOptions = last(
		(e) =>
			type(e) === "EV_EVENT_TAG" && label(e) === "LOADED_IMAGE::LoadOptions",
	);
	let parameters = "";
	if (tdInfo && tdInfo.data.length >= 20) {
		const n = tdInfo.data.readUInt32LE(16);
		const text = tdInfo.data.subarray(20, 20 + n);
		const d = sha384Digest(tdInfo);
		if (
			text.length === n &&
			d &&
			createHash("sha384").update(text).digest().equals(d)
		) {
			const end = text.indexOf(0);
			parameters = text
				.subarray(0, end < 0 ? text.length : end)
				.toString("latin1");
			if (!/^[\x20-\x7e]*$/.test(parameters)) parameters = "";
		}
	}
	const initrd = last(
		(e) => type(e) === "EV_EVENT_TAG" && label(e) === "Linux initrd",
	);
	const events = measured.map((e) => {
		const s = eventSummary(e);
		return `rtmr${e.index - 1} ${type(e)} ${hex(e)}${s ? ` ${s}` : ""}`;
	});
	if (JSON.stringify(events).length > MAX_EVENT_CLAIM_CHARS)
		throw new DadiError(
			"EVIDENCE_UNSUPPORTED",
			`TDX event log: its ${events.length} measured events need more than ${MAX_EVENT_CLAIM_CHARS} characters as claims (the token that carries them is bounded); not verified`,
		);
	return {
		ccel_events: events,
		ccel_kernel: hex(kernel),
		ccel_kernel_parameters: parameters,
		ccel_kernel_parameters_digest: hex(tdInfo ?? loadOptions),
		ccel_initrd: hex(initrd),
	};
}
