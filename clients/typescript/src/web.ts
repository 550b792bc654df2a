// The browser transport: gRPC-web through the Envoy sidecar's grpc_web filter
// (k8s/base/gateway/envoy.yaml), which turns it into gRPC for the gateway.
//
// Browser entry point of the package (`@lomas/client/web`): everything but the Node.js transport.

import type { Transport } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";

export * from "./client.js";
export * from "./decimal.js";
export * from "./diffprivlib.js";
export * from "./errors.js";
export * from "./jobs.js";
export * from "./smartnoise-synth.js";

/**
 * A gRPC-web transport to Envoy at `baseUrl`, e.g. "https://lomas.example.org" (or
 * `window.location.origin` when the page is served from the same origin; another origin needs CORS
 * on the proxy). Binary protobuf, as the gateway speaks no JSON.
 */
export function createWebTransport(baseUrl: string): Transport {
  return createGrpcWebTransport({ baseUrl, useBinaryFormat: true });
}
