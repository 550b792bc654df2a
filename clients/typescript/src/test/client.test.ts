// The handwritten client against an in-process gateway (Connect's router transport): what it sends,
// how it pages, that decimals stay strings, that refusals are typed, that Arrow releases decode.

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ConnectError, createRouterTransport, type ServiceImpl } from "@connectrpc/connect";
import { tableFromArrays, tableToIPC } from "apache-arrow";
import { BudgetExhausted, InvalidArgument, LomasClient, NotFound } from "../index.js";
import { ErrorInfoSchema } from "../gen/google/rpc/error_details_pb.js";
import { GatewayService } from "../gen/lomas/gateway/v1/gateway_pb.js";

const TOKEN = "a.b.c";
// More digits than a double holds: a float would round them.
const REMAINING = { epsilon: "9.499999999999999999999", delta: "0.00499" };

function clientOf(
  gateway: Partial<ServiceImpl<typeof GatewayService>>,
  dataset = "PENGUIN",
): LomasClient {
  const transport = createRouterTransport((router) => router.service(GatewayService, gateway));
  return new LomasClient({ transport, dataset, token: TOKEN });
}

describe("LomasClient", () => {
  it("sends the bearer token and pages through every dataset", async () => {
    const seen: string[] = [];
    const client = clientOf({
      listAccessibleDatasets(request, context) {
        seen.push(`${context.requestHeader.get("authorization")} ${request.pageToken}`);
        return request.pageToken === ""
          ? { datasetNames: ["A", "B"], nextPageToken: "page-2" }
          : { datasetNames: ["C"], nextPageToken: "" };
      },
    });
    assert.deepEqual(await client.listDatasets(), ["A", "B", "C"]);
    assert.deepEqual(seen, [`Bearer ${TOKEN} `, `Bearer ${TOKEN} page-2`]);
  });

  it("returns budgets as the gateway's exact strings, with the Python client's keys", async () => {
    const client = clientOf({
      getBudget(request) {
        assert.equal(request.dataset, "PENGUIN");
        return {
          initial: { loss: { case: "approxDp", value: { epsilon: "10", delta: "0.005" } } },
          spent: { loss: { case: "pureDp", value: { epsilon: "0.500000000000000000001" } } },
          remaining: { loss: { case: "approxDp", value: REMAINING } },
          remainingAtDelta: request.delta ? { epsilon: "7.25", delta: request.delta } : undefined,
        };
      },
    });
    assert.deepEqual(await client.getInitialBudget(), {
      initial_epsilon: "10",
      initial_delta: "0.005",
    });
    assert.deepEqual(await client.getTotalSpentBudget(), {
      total_spent_epsilon: "0.500000000000000000001",
      total_spent_delta: "0",
    });
    assert.deepEqual(await client.getRemainingBudget(), {
      remaining_epsilon: REMAINING.epsilon,
      remaining_delta: REMAINING.delta,
    });
    assert.deepEqual(await client.getRemainingBudget("1e-6"), {
      remaining_epsilon: REMAINING.epsilon,
      remaining_delta: REMAINING.delta,
      remaining_epsilon_at_delta: "7.25",
      at_delta: "1e-6",
    });
  });

  it("sends epsilon and delta as written and decodes the Arrow release", async () => {
    const release = tableToIPC(tableFromArrays({ n: Int32Array.from([42]) }), "stream");
    const requests: { epsilon: string; delta: string; requestId: string }[] = [];
    const client = clientOf({
      executeQuery(request) {
        assert.equal(request.query?.kind.case, "smartnoiseSql");
        if (request.query?.kind.case === "smartnoiseSql") {
          const { epsilon, delta } = request.query.kind.value;
          requests.push({ epsilon, delta, requestId: request.requestId });
        }
        return {
          queryId: "q-1",
          release,
          cost: { loss: { case: "approxDp", value: { epsilon: "0.1", delta: "0.00001" } } },
        };
      },
    });
    const answer = await client.smartnoiseSql.query(
      "SELECT COUNT(*) AS n FROM df",
      "0.1",
      "0.00001",
    );
    assert.deepEqual(
      answer.table.schema.fields.map((f) => f.name),
      ["n"],
    );
    assert.equal(answer.table.getChild("n")?.get(0), 42);
    assert.deepEqual(
      [answer.query_id, answer.cost, answer.replay],
      ["q-1", { epsilon: "0.1", delta: "0.00001" }, false],
    );
    const [sent] = requests;
    assert.deepEqual([sent?.epsilon, sent?.delta], ["0.1", "0.00001"]);
    // A real query always carries a request id, so a retry is never charged twice.
    assert.match(sent?.requestId ?? "", /^[0-9a-f-]{36}$/);
  });

  it("refuses a JavaScript number for epsilon before sending anything", async () => {
    const client = clientOf({});
    assert.throws(
      () => client.smartnoiseSql.cost("SELECT 1", 0.1 as unknown as string, "0"),
      TypeError,
    );
  });

  it("refuses zero dummy rows itself, as the Python client does", async () => {
    let called = false;
    const client = clientOf({
      getDummyDataset() {
        called = true;
        return {};
      },
    });
    await assert.rejects(client.getDummyDataset(0), (error: unknown) => {
      assert.ok(error instanceof InvalidArgument);
      assert.equal(error.reason, "DUMMY_ROWS_OUT_OF_RANGE");
      return true;
    });
    assert.equal(called, false);
  });

  it("turns a refusal into its typed error", async () => {
    const client = clientOf({
      estimateQueryCost() {
        throw new ConnectError("no such dataset", 5, undefined, [
          { desc: ErrorInfoSchema, value: { reason: "DATASET_NOT_FOUND", domain: "lomas.mesh" } },
        ]);
      },
      executeQuery() {
        throw new ConnectError("too expensive", 8, undefined, [
          {
            desc: ErrorInfoSchema,
            value: { reason: "PRIVACY_BUDGET_EXHAUSTED", domain: "lomas.mesh" },
          },
        ]);
      },
    });
    await assert.rejects(client.smartnoiseSql.cost("SELECT 1", "1", "0"), NotFound);
    await assert.rejects(client.smartnoiseSql.query("SELECT 1", "1000", "0"), (error: unknown) => {
      assert.ok(error instanceof BudgetExhausted);
      assert.deepEqual(
        [error.code, error.reason, error.message],
        ["RESOURCE_EXHAUSTED", "PRIVACY_BUDGET_EXHAUSTED", "too expensive"],
      );
      return true;
    });
  });

  it("sends OpenDP pipelines in the form the gateway takes", async () => {
    const sent: unknown[] = [];
    const client = clientOf({
      estimateQueryCost(request) {
        sent.push(request.query?.kind.value);
        return { cost: { loss: { case: "pureDp", value: { epsilon: "1" } } } };
      },
    });
    assert.deepEqual(await client.opendp.cost({ measurementJson: "{}" }), {
      epsilon: "1",
      delta: "0",
    });
    await client.opendp.cost(
      { planJson: "[]" },
      { mechanism: "gaussian", globalScale: "2.5", threshold: 10, fixedDelta: "1e-6" },
    );
    const [measurement, polars] = sent as Record<string, unknown>[];
    assert.deepEqual(measurement?.pipeline, { case: "measurementJson", value: "{}" });
    assert.equal(measurement?.fixedDelta, "");
    assert.deepEqual(polars?.pipeline, {
      case: "polars",
      value: {
        $typeName: "lomas.common.v1.OpenDpPolarsQuery",
        planJson: "[]",
        mechanism: 2,
        globalScale: "2.5",
        threshold: 10n,
      },
    });
    assert.equal(polars?.fixedDelta, "1e-6");
    assert.throws(
      () => client.opendp.cost({ planJson: "[]" }, { mechanism: "toString" as "laplace" }),
      /mechanism must be one of laplace, gaussian/,
    );
  });

  it("lists previous queries with the Python client's keys", async () => {
    const client = clientOf({
      listQueries() {
        return {
          queries: [
            {
              queryId: "q-1",
              dataset: "PENGUIN",
              query: {
                kind: {
                  case: "smartnoiseSql",
                  value: { sql: "SELECT 1", epsilon: "1", delta: "0" },
                },
              },
              cost: { loss: { case: "rhoZcdp", value: { rho: "0.125" } } },
              submitTime: { seconds: 1_700_000_000n, nanos: 0 },
            },
          ],
        };
      },
    });
    const [previous] = await client.getPreviousQueries();
    assert.ok(previous !== undefined);
    assert.equal(previous.query_kind, "smartnoise_sql");
    assert.deepEqual(previous.cost, { rho: "0.125" });
    assert.equal(previous.result, null);
    assert.equal(previous.error_reason, null);
    assert.equal(previous.submitted_at?.toISOString(), "2023-11-14T22:13:20.000Z");
    assert.deepEqual(previous.query, {
      smartnoise_sql: { sql: "SELECT 1", epsilon: "1", delta: "0", mechanisms: {} },
    });
  });
});
