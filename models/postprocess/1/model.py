"""postprocess (ensemble step 3): model outputs -> the pipeline's answer.

A thin adapter over bls/orchestration/ensemble.py PostprocessStep.
"""

import triton_python_backend_utils as pb_utils

from bls.backend.adapter import python_model
from bls.orchestration.ensemble import PostprocessStep

TritonPythonModel = python_model(pb_utils, PostprocessStep)
