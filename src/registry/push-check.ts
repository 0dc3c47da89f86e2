/**
 * Checking, before any long work, that an image can be pushed to a repository: the registry
 * answers (reachable, TLS or plain HTTP as the client was told), takes our credentials, and lets
 * us push. Push permission is tested the distribution way: an upload session is started
 * (`POST /v2/NAME/blobs/uploads/`, which needs the push scope) and cancelled at once (`DELETE` on
 * the Location it returned). Failures are DadiErrors naming the registry and what to do.
 */
import { DadiError } from "../errors.js";
import { cancelUpload, startUpload } from "./blob-upload.js";
import { type RegistryClient, unexpected } from "./client.js";
import { type HttpResponse, readBody } from "./http.js";

/** Go's TLS server answers a plain-HTTP request with this 400 body. */
const HTTPS_ONLY = /client sent an http request to an https server/i;

/** GET /v2/: the registry is there, speaks the protocol we chose, and accepts our credentials. */
export async function pingRegistry(client: RegistryClient): Promise<void> {
	const where = `the registry ${client.registry}`;
	await client.exchange({
		what: "ping",
		scopes: [],
		build: () => ({ method: "GET", url: client.base }),
		handle: async (res) => {
			if (res.status === 200) {
				await res.body.dump().catch(() => {});
				return;
			}
			if (res.status === 400 && (await bodyText(res)).match(HTTPS_ONLY))
				throw new DadiError(
					"NETWORK",
					`${where} speaks HTTPS, not plain HTTP: run without --insecure (and pass its CA with --ca-file if its certificate is private)`,
				);
			const e = await unexpected(res, `GET ${client.base.href}`);
			throw new DadiError(
				"REMOTE_PROTOCOL",
				`${where} is not an OCI distribution registry, or not at this address (${e.message})`,
			);
		},
	});
}

/**
 * Checks that `repo` can be pushed to: ping, then an upload session started and cancelled.
 * Throws NETWORK (unreachable, TLS mismatch), REMOTE_DENIED (credentials refused, no push
 * permission) or REMOTE_PROTOCOL (not a registry).
 */
export async function checkPushAccess(
	client: RegistryClient,
	repo: string,
): Promise<void> {
	await pingRegistry(client);
	const target = `docker://${client.registry}/${repo}`;
	let location: URL;
	try {
		({ location } = await startUpload(client, repo));
	} catch (e) {
		if (e instanceof DadiError && e.code === "REMOTE_DENIED")
			throw new DadiError("REMOTE_DENIED", pushDenied(client, target), {
				cause: e,
			});
		throw e;
	}
	await cancelUpload(client, repo, location);
}

function pushDenied(client: RegistryClient, target: string): string {
	const c = client.auth.credentialSource;
	return c
		? `${target}: the registry accepted the credentials from ${c}, but they are not allowed to push there; use credentials with push access to the repository (--creds USER:PASS or --authfile FILE), or push to a repository they may write`
		: `${target}: the registry does not let anonymous users push; pass credentials with push access (--creds USER:PASS or --authfile FILE)`;
}

async function bodyText(res: HttpResponse): Promise<string> {
	try {
		return (await readBody(res, 4096, "answer")).toString("utf8");
	} catch {
		return "";
	}
}
