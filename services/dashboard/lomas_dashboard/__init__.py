"""The Lomas mesh web dashboard: server-rendered pages over the gateway's own gRPC contracts."""
