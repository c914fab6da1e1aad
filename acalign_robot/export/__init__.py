"""Learner side: a trained actor -> a policy artifact (one self-contained ONNX model + manifest), checked against torch.

Import the submodules directly (`acalign_robot.export.onnx_export`); this file stays free of imports.
"""
