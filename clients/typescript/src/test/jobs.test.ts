// Jobs against an in-process gateway (Connect's router transport, which streams too): what submit
// sends, the watch as an async iterator, status, result, cancel, and their typed refusals.

import assert from "node:assert/strict";
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { ConnectError, createRouterTransport, type ServiceImpl } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { tableFromArrays, tableToIPC } from "apache-arrow";
import {
  createNodeTransport,
  DataAccessed,
  describeStatus,
  LomasClient,
  NotFound,
  QueryCancelled,
  QueryTimeout,
  type QueryEvent,
} from "../index.js";
import { ErrorInfoSchema } from "../gen/google/rpc/error_details_pb.js";
import {
  GatewayService,
  QueryState,
  type WatchQueryResponse,
  type WatchQueryResponseSchema,
} from "../gen/lomas/gateway/v1/gateway_pb.js";

type Event = MessageInitShape<typeof WatchQueryResponseSchema>;

const COST = { loss: { case: "approxDp", value: { epsilon: "0.5", delta: "0.00001" } } } as const;
const RELEASE = tableToIPC(tableFromArrays({ n: Int32Array.from([7]) }), "stream");

function clientOf(gateway: Partial<ServiceImpl<typeof GatewayService>>): LomasClient {
  const transport = createRouterTransport((router) => router.service(GatewayService, gateway));
  return new LomasClient({ transport, dataset: "PENGUIN", token: "a.b.c" });
}

function refusal(code: number, reason: string, message: string): ConnectError {
  return new ConnectError(message, code, undefined, [
    { desc: ErrorInfoSchema, value: { reason, domain: "lomas.mesh" } },
  ]);
}

// The steps of a query that waits behind one other, runs and is released.
const STEPS: Event[] = [
  { queryId: "q-1", state: QueryState.QUEUED, queuePosition: 2 },
  { queryId: "q-1", state: QueryState.QUEUED, queuePosition: 1 },
  { queryId: "q-1", state: QueryState.RUNNING, eventTime: { seconds: 1_700_000_000n } },
  {
    queryId: "q-1",
    state: QueryState.DONE,
    result: { queryId: "q-1", release: RELEASE, cost: COST },
  },
];

describe("QueryJob", () => {
  it("submits with a request id and follows the query with for await", async () => {
    const submitted: { dataset: string; requestId: string; fresh: boolean; sql: string }[] = [];
    const watched: string[] = [];
    const client = clientOf({
      submitQuery(request) {
        const sql =
          request.query?.kind.case === "smartnoiseSql" ? request.query.kind.value.sql : "";
        submitted.push({ ...request, sql });
        return { queryId: "q-1" };
      },
      async *watchQuery(request) {
        watched.push(request.queryId);
        yield* STEPS;
      },
    });
    const job = await client.smartnoiseSql.submit("SELECT COUNT(*) AS n FROM df", "0.5", "1e-5", {
      fresh: true,
    });
    assert.equal(job.queryId, "q-1");
    const [sent] = submitted;
    assert.deepEqual(
      [sent?.dataset, sent?.fresh, sent?.sql],
      ["PENGUIN", true, "SELECT COUNT(*) AS n FROM df"],
    );
    assert.match(sent?.requestId ?? "", /^[0-9a-f-]{36}$/);

    const events: QueryEvent[] = [];
    for await (const event of job.watch()) {
      events.push(event);
    }
    assert.deepEqual(watched, ["q-1"]);
    assert.deepEqual(
      events.map((e) => [e.query_id, e.state, e.queue_position, describeStatus(e)]),
      [
        ["q-1", "queued", 2, "queued (1 ahead)"],
        ["q-1", "queued", 1, "queued (0 ahead)"],
        ["q-1", "running", 0, "running"],
        ["q-1", "done", 0, "done"],
      ],
    );
    assert.equal(events[2]?.event_time?.toISOString(), "2023-11-14T22:13:20.000Z");
    assert.deepEqual(
      events.map((e) => e.release === null),
      [true, true, true, false],
    );
    const release = events[3]?.release;
    assert.equal(release?.table.getChild("n")?.get(0), 7);
    assert.deepEqual(release?.cost, { epsilon: "0.5", delta: "0.00001" });
  });

  it("takes the first event for status and closes the stream", async () => {
    // Over real HTTP/2: leaving a `for await` loop does not end a Connect stream by itself, the
    // client's abort does, and the gateway sees it as the client going away.
    let closed: () => void = () => {};
    const closedNow = new Promise<void>((resolve) => (closed = resolve));
    const server = http2.createServer(
      connectNodeAdapter({
        routes: (router) =>
          router.service(GatewayService, {
            async *watchQuery(_request, context) {
              yield STEPS[0] as Event;
              // A real gateway keeps the stream open until the next change.
              await new Promise((resolve) => context.signal.addEventListener("abort", resolve));
              closed();
            },
          }),
      }),
    );
    const sessions: http2.ServerHttp2Session[] = [];
    server.on("session", (session) => sessions.push(session));
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    try {
      const { port } = server.address() as AddressInfo;
      const transport = createNodeTransport(`127.0.0.1:${port}`);
      const client = new LomasClient({ transport, dataset: "PENGUIN", token: "a.b.c" });
      const timers = () => process.getActiveResourcesInfo().filter((r) => r === "Timeout").length;
      assert.deepEqual(await client.job("q-1").status(), { state: "queued", queue_position: 2 });
      const connected = timers(); // the connection's own timers
      const timeout = sleep(5_000, "still open", { ref: false });
      assert.equal(await Promise.race([closedNow.then(() => "closed"), timeout]), "closed");
      await client.job("q-1").status();
      // The call's deadline timer went with it (a leftover one keeps Node.js running for 10 min).
      assert.equal(timers(), connected);
    } finally {
      sessions.forEach((session) => session.destroy());
      server.close();
    }
  });

  it("returns the release from result, and QueryTimeout when the watch ends without one", async () => {
    let steps = STEPS;
    const client = clientOf({
      async *watchQuery() {
        yield* steps;
      },
    });
    const release = await client.job("q-1").result({ timeoutMs: 5_000 });
    assert.equal(release.query_id, "q-1");
    steps = STEPS.slice(0, 2);
    await assert.rejects(client.job("q-1").result(), QueryTimeout);
  });

  it("times the watch out with the caller's deadline", async () => {
    const client = clientOf({
      async *watchQuery(_request, context) {
        yield STEPS[0] as Event;
        await new Promise((resolve) => context.signal.addEventListener("abort", resolve));
      },
    });
    await assert.rejects(client.job("q-1").result({ timeoutMs: 50 }), (error: unknown) => {
      assert.ok(error instanceof QueryTimeout);
      assert.equal(error.code, "DEADLINE_EXCEEDED");
      return true;
    });
  });

  it("throws the typed error that ends a stream", async () => {
    const client = clientOf({
      async *watchQuery(request): AsyncGenerator<WatchQueryResponse> {
        if (request.queryId === "q-cancelled") {
          throw refusal(1, "QUERY_CANCELLED", "the query was cancelled");
        }
        throw refusal(5, "QUERY_NOT_FOUND", "no query of yours has this id");
      },
    });
    await assert.rejects(client.job("q-cancelled").result(), (error: unknown) => {
      assert.ok(error instanceof QueryCancelled);
      assert.deepEqual([error.code, error.reason], ["CANCELLED", "QUERY_CANCELLED"]);
      return true;
    });
    await assert.rejects(client.job("someone-else's").status(), (error: unknown) => {
      assert.ok(error instanceof NotFound);
      assert.deepEqual(
        [error.code, error.reason, error.message],
        ["NOT_FOUND", "QUERY_NOT_FOUND", "no query of yours has this id"],
      );
      return true;
    });
  });

  it("cancels: the refund, or DataAccessed when too late", async () => {
    const client = clientOf({
      cancelQuery(request) {
        if (request.queryId === "q-running") {
          throw refusal(9, "DATA_ACCESSED", "a worker touched the data");
        }
        return { queryId: request.queryId, refunded: COST };
      },
    });
    assert.deepEqual(await client.job("q-1").cancel(), { epsilon: "0.5", delta: "0.00001" });
    await assert.rejects(client.job("q-running").cancel(), (error: unknown) => {
      assert.ok(error instanceof DataAccessed);
      assert.equal(error.code, "FAILED_PRECONDITION");
      return true;
    });
  });

  it("submits OpenDP pipelines with the same options", async () => {
    const kinds: (string | undefined)[] = [];
    const client = clientOf({
      submitQuery(request) {
        kinds.push(request.query?.kind.case);
        assert.equal(request.requestId, "mine");
        return { queryId: "q-2" };
      },
    });
    const job = await client.opendp.submit({ measurementJson: "{}" }, { requestId: "mine" });
    assert.deepEqual([job.queryId, kinds], ["q-2", ["opendp"]]);
  });
});
