"""Shared (torch-free): the controller's durable transition log, its one home.

`format` (the chunked on-disk format), `transition_log` (the writer the controller runs), `reader` (the reader
everything else uses) and `to_minari` (a log -> a Minari dataset, `acalign logs convert`). The log is played back to
a controller by the driver in acalign_robot/drivers/log_playback.py and analysed offline by
acalign_robot/data/log_analysis.py. Import the submodules directly.
"""
