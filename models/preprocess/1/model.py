"""preprocess (ensemble step 1): encoded image -> model input and original size.

A thin adapter over bls/orchestration/ensemble.py PreprocessStep.
"""

import triton_python_backend_utils as pb_utils

from bls.backend.adapter import python_model
from bls.orchestration.ensemble import PreprocessStep

TritonPythonModel = python_model(pb_utils, PreprocessStep)
