// The Node.js transport: gRPC over HTTP/2 straight to the gateway (or to Envoy in front of it).

import type { Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

/** Releases can be large; the same ceiling as the Python client. */
export const MAX_MESSAGE_BYTES = 64 * 1024 * 1024;

/**
 * A gRPC transport to the gateway at `target`: "host:port" speaks plaintext HTTP/2 (as the embedded
 * platform and the Python client's default do); "https://host:port" speaks TLS. Idle connections
 * do not keep the process alive.
 */
export function createNodeTransport(target: string): Transport {
  const baseUrl = /^https?:\/\//.test(target) ? target : `http://${target}`;
  return createGrpcTransport({
    baseUrl,
    useBinaryFormat: true,
    readMaxBytes: MAX_MESSAGE_BYTES,
    writeMaxBytes: MAX_MESSAGE_BYTES,
  });
}
