"""acalign-robot: Actor-Critic Alignment from logged data to a real-time ONNX controller."""

__version__ = "0.1.0"
