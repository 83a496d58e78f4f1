"""Names vulture takes for dead code that a framework calls or reads (``make lint``, ``make test``; settings in
pyproject.toml's [tool.vulture]). Vulture matches by name alone: each line marks that name used everywhere."""

# ruff: noqa: B018  (each line is an attribute access, for vulture to count as a use)

from vulture.whitelists.whitelist_utils import Whitelist

_ = Whitelist()

# asyncio calls a protocol's callbacks (runtime/server/http.py, bench/).
_.data_received
_.eof_received
_.pause_writing
_.resume_writing
# httptools' parser calls its protocol's callbacks (runtime/server/http.py, bench/).
_.on_message_begin
_.on_url
_.on_header
_.on_headers_complete
_.on_chunk_header
_.on_chunk_complete
_.on_body
_.on_message_complete
# ONNX Runtime's SessionOptions and onnx's ModelProto, set for their effect (runtime/, tests/runtime/).
_.log_severity_level
_.optimized_model_filepath
_.ir_version
# Pillow reads its decompression-bomb limit, set for its effect (runtime/images.py).
_.MAX_IMAGE_PIXELS
# prometheus_client calls a collector's collect (runtime/metrics.py).
_.collect
# http.server calls a request handler's method (tests/runtime/test_tracing.py's OTLP receiver).
_.do_POST
# PyYAML calls a Dumper's hook (operator/cli.py).
_.ignore_aliases
# kopf reads its settings (operator/handlers.py).
_.finalizer
_.progress_storage
_.diffbase_storage
_.level
_.priority
_.mandatory
# pydantic writes these CRD fields into the manifests whole (model_dump); nothing reads them by name
# (operator/spec.py: Toleration, EnvVar, ScalingPolicy, ScalingRules, Behavior, ParentRef).
_.effect
_.toleration_seconds
_.value_from
_.period_seconds
_.stabilization_window_seconds
_.select_policy
_.tolerance
_.policies
_.scale_up
_.scale_down
_.section_name
# Harness rows written out by field name: vars() in bench/run.py, PeriodRow.CSV_FIELDS in bench/autoscaling_loop.py.
_.ready_seconds
_.max_queue_delay_ms
_.retried
# pytest reads a module's marks.
_.pytestmark
# Python handlers, which the server loads by the name the handler setting gives (module:Class): the bench's and the
# tests' (bench/noop_handler.py, tests/runtime/user_handlers/words_handler.py).
_.NoOp
_.NoOpOnLoop
_.Traced
_.BatchedOnLoop
_.OnLoopInProcesses
_.WordsInProcesses
_.BatchedInProcesses
_.MissesAnOutput
_.FailsToLoadInProcesses
_.NoStage
_.BadDatatype
_.NoRows
_.OutputsWithoutPostprocess
_.KeepsItsAnswer
# gRPC calls a servicer's methods by the service's RPC names (runtime/grpc/service.py); protobuf messages' fields are
# set for the wire; the generated modules read the descriptor pool (runtime/grpc/descriptors.py).
_.ServerLive
_.ServerReady
_.ModelReady
_.ServerMetadata
_.ModelMetadata
_.ModelInfer
_.ModelStreamInfer
_.bool_param
_.int64_param
_.double_param
_.string_param
_.POOL
