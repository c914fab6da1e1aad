"""Torch-free runtime: wire protocol, transport, driver server, controller loop, ONNX policy runner and safety.

Nothing under this package may import torch: a robot computer installs only numpy, onnxruntime, pyzmq and msgpack.
Import the submodules directly; this file stays free of imports so that importing one part never pulls in another.
"""
