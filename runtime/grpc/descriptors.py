"""The descriptor pool the generated protocol modules build their messages in: this package's own, apart from
protobuf's default pool, where gRPC clients (``tritonclient.grpc``, KServe's) define the same ``inference.*`` names
(``generate`` says why)."""

from __future__ import annotations

from google.protobuf.descriptor_pool import DescriptorPool

POOL = DescriptorPool()
