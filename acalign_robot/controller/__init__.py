"""The controller process (torch-free): the fixed-rate loop that runs the ONNX policy next to the robot's driver.

It steps the driver, filters actions through the safety layer, logs and streams every transition to the learner and
swaps in new policy versions between ticks. Import the submodules directly; this file stays free of imports.
"""
