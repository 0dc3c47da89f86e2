/** Test servers on 127.0.0.1: a free port, and every connection tracked so close() never waits. */
import type { Server } from "node:http";
import type { Socket } from "node:net";

export interface Listening {
	port: number;
	/** Stops listening and destroys open connections (stalled ones too). */
	close(): Promise<void>;
}

export async function listenOnLoopback(server: Server): Promise<Listening> {
	const sockets = new Set<Socket>();
	server.on("connection", (s) => {
		sockets.add(s);
		s.once("close", () => sockets.delete(s));
	});
	await new Promise<void>((resolve, reject) => {
		server.once("error", reject);
		server.listen(0, "127.0.0.1", () => resolve());
	});
	const a = server.address();
	return {
		port: typeof a === "object" && a ? a.port : 0,
		close: () =>
			new Promise<void>((resolve) => {
				server.close(() => resolve());
				for (const s of sockets) s.destroy();
			}),
	};
}
