"""Lomas mesh: generated protobuf code (lomas.<domain>.v1) and the researcher client (lomas.client)."""
