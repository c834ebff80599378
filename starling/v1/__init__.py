"""Generated gRPC/protobuf stubs for package ``starling.v1`` (source of truth: protos/starling/v1/*.proto).

Regenerate with ``make protos``; tests/test_protos.py fails when these files are stale.
"""
