"""Moved to bls.testing (see bls/testing/README.md); kept for the tests that import it here."""
from bls.testing import *  # noqa: F401,F403
from bls.testing import (TRITONSERVER_MEMORY_CPU, RequestReleased, ResponseSender,  # noqa: F401
                         TritonDouble, TritonError, TritonModelException, model_config_dict)
