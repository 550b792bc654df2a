// client.smartnoiseSynth against an in-process gateway: the query it sends (Lomas's names and
// defaults, decimals as strings, parameters as JSON), the samples it returns, and its refusals typed.

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { ConnectError, createRouterTransport } from "@connectrpc/connect";
import { Table, Utf8, tableToIPC, vectorFromArray } from "apache-arrow";
import { InvalidQuery, LomasClient, PoolUnavailable } from "../index.js";
import { ErrorInfoSchema } from "../gen/google/rpc/error_details_pb.js";
import type { SmartnoiseSynthQuery } from "../gen/lomas/common/v1/query_pb.js";
import { GatewayService } from "../gen/lomas/gateway/v1/gateway_pb.js";

const COST = { loss: { case: "approxDp" as const, value: { epsilon: "1", delta: "0.000000001" } } };

function samples(rows: number): Uint8Array {
  const table = new Table({
    species: vectorFromArray(
      Array.from({ length: rows }, () => "Adelie"),
      new Utf8(),
    ),
    island: vectorFromArray(
      Array.from({ length: rows }, () => "Dream"),
      new Utf8(),
    ),
  });
  return tableToIPC(table, "stream");
}

function refusal(reason: string, code: number, metadata: Record<string, string>): ConnectError {
  const info = create(ErrorInfoSchema, { reason, domain: "lomas.mesh", metadata });
  return new ConnectError("refused", code, undefined, [{ desc: ErrorInfoSchema, value: info }]);
}

describe("client.smartnoiseSynth", () => {
  it("sends Lomas's parameters and defaults and returns the samples", async () => {
    const sent: SmartnoiseSynthQuery[] = [];
    const transport = createRouterTransport((router) =>
      router.service(GatewayService, {
        estimateQueryCost(request) {
          if (request.query?.kind.case === "smartnoiseSynth") sent.push(request.query.kind.value);
          return { cost: COST };
        },
        executeQuery(request) {
          const query = request.query?.kind;
          assert.equal(query?.case, "smartnoiseSynth");
          sent.push(query.value);
          return { release: samples(Number(query.value.nbSamples)), queryId: "q-1", cost: COST };
        },
      }),
    );
    const client = new LomasClient({ transport, dataset: "PENGUIN", token: "t" });
    assert.deepEqual(await client.smartnoiseSynth.cost("mst", "1"), {
      epsilon: "1",
      delta: "0.000000001",
    });
    const release = await client.smartnoiseSynth.query("mst", "1", {
      selectCols: ["species", "island"],
      synthParams: { rounds: 5 },
      nbSamples: 12,
      condition: "species = 'Adelie'",
    });
    assert.deepEqual(
      release.table.schema.fields.map((field) => field.name),
      ["species", "island"],
    );
    assert.equal(release.table.numRows, 12);
    assert.equal(release.query_id, "q-1");
    const [priced, ran] = sent;
    assert.ok(priced !== undefined && ran !== undefined);
    // Lomas's defaults: no delta (the server takes the synthesizer's), nullable, 200 samples.
    assert.equal(priced.delta, "");
    assert.equal(priced.nullable, true);
    assert.equal(priced.nbSamples, 200n);
    assert.equal(priced.synthParamsJson, "");
    assert.equal(ran.synthName, "mst");
    assert.equal(ran.epsilon, "1");
    assert.deepEqual(ran.selectCols, ["species", "island"]);
    assert.deepEqual(JSON.parse(ran.synthParamsJson), { rounds: 5 });
    assert.equal(ran.condition, "species = 'Adelie'");
    assert.equal(ran.returnModel, false);
    assert.throws(() => client.smartnoiseSynth.cost("mst", "1", { delta: "abc" }), TypeError);
  });

  it("types the refusals: unknown synthesizer, and a GAN without the heavy pool", async () => {
    const transport = createRouterTransport((router) =>
      router.service(GatewayService, {
        estimateQueryCost(request) {
          const query = request.query?.kind;
          if (query?.case === "smartnoiseSynth" && query.value.synthName === "dpctgan") {
            throw refusal("HEAVY_POOL_UNAVAILABLE", 9, { pool: "heavy", synthesizer: "dpctgan" });
          }
          throw refusal("SYNTHESIZER_REFUSED", 3, { synthesizer: "nope" });
        },
      }),
    );
    const client = new LomasClient({ transport, dataset: "PENGUIN", token: "t" });
    await assert.rejects(client.smartnoiseSynth.cost("nope", "1"), (error: unknown) => {
      assert.ok(error instanceof InvalidQuery);
      assert.equal(error.reason, "SYNTHESIZER_REFUSED");
      return true;
    });
    await assert.rejects(
      client.smartnoiseSynth.cost("dpctgan", "1", { delta: "1e-6" }),
      (error: unknown) => {
        assert.ok(error instanceof PoolUnavailable);
        assert.equal(error.reason, "HEAVY_POOL_UNAVAILABLE");
        assert.deepEqual(error.metadata, { pool: "heavy", synthesizer: "dpctgan" });
        return true;
      },
    );
  });
});
