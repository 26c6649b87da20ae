"""The image and mask pipeline: encoded bytes -> model input, model outputs -> answer.

No Triton here: pure functions over numpy (or torch on a device), tested without a
server. steps.py is the entry (prepare, finish, Pipeline); host.py and device.py are the
two strategies for where the work runs; image.py decodes and resizes, instances.py reads
and rescales the model's detections, masks.py pastes and encodes masks, answer.py builds
the bounded answer.
"""
