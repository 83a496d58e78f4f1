"""kubeserve model server: Open Inference Protocol over HTTP/1.1, dynamic batching, ONNX Runtime."""

__version__ = "0.1.0"
