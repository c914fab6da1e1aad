"""Shared (torch-free): the exported policy artifact, `<policies_dir>/<name>/<version>/{policy.onnx, manifest.json}`.

`manifest` (what an artifact promises, validated), `store` (reading versions from disk), `runner` (onnxruntime
inference, as the controller runs it) and `evaluate` (that same runner in a gymnasium env). The learner writes
artifacts (acalign_robot/export/), the controller and `acalign eval` read them. Import the submodules directly.
"""
