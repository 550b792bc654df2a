// The Node.js entry point of the package: the client, its errors and decimals, and both transports.

export * from "./web.js";
export { createNodeTransport, MAX_MESSAGE_BYTES } from "./node.js";
