"""kubeserve model server: Open Inference Protocol over aiohttp, dynamic batching, ONNX Runtime."""

__version__ = "0.1.0"
