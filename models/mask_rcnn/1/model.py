"""Run the TorchScript model.pt beside this file, as the libtorch backend would.

Used where the server has no libtorch backend (the embedded tritonserver of
run_triton.sh, selected by configs/embedded.pbtxt). Same name, inputs and outputs as the
libtorch config: input and output names come from this model's config, outputs in the
module's tuple order, so pipeline_bls cannot tell the two apart.
"""

import json
import os

import torch
import torchvision  # noqa: F401  registers torchvision::nms and roi_align, which the models call
import triton_python_backend_utils as pb_utils

from bls.backend.metrics import ModelStart
from bls.contract.parameters import RUNNER_PARAMETERS
from bls.contract.tensors import MODEL_NAME


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = RUNNER_PARAMETERS.read_config(config)
        self.started = ModelStart(pb_utils, MODEL_NAME)
        threads = params["intra_op_threads"]
        if threads > 0:
            torch.set_num_threads(threads)
        if args["model_instance_kind"] == "GPU":
            self.device = torch.device("cuda", int(args["model_instance_device_id"]))
        else:
            self.device = torch.device("cpu")
        # model_file: the libtorch backend's default name (default_model_filename is model.py)
        path = os.path.join(args["model_repository"], args["model_version"],
                            params["model_file"])
        # Exported files are saved in eval mode; no .eval() here: a detectron2 scripted
        # module holds `training` as a constant and refuses it (as libtorch never calls it).
        self.model = torch.jit.load(path, map_location=self.device)
        self.autocast = None if params["autocast"] == "none" else getattr(torch, params["autocast"])
        self.input_name = config["input"][0]["name"]
        self.output_names = [o["name"] for o in config["output"]]

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                image = pb_utils.get_input_tensor_by_name(request, self.input_name)
                # DLPack both ways, tensors (not capsules): python_backend then orders the
                # streams (pb_tensor.cc FromDLPack). The input is read in place.
                with torch.inference_mode(), torch.autocast(
                        self.device.type, self.autocast, enabled=self.autocast is not None):
                    outputs = self.model(torch.from_dlpack(image).to(self.device))
                responses.append(pb_utils.InferenceResponse([
                    pb_utils.Tensor.from_dlpack(
                        name, (t.float() if t.is_floating_point() else t).contiguous())
                    for name, t in zip(self.output_names, outputs)]))
            except Exception as e:  # this request fails alone; the next ones still run
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"mask_rcnn: {type(e).__name__}: {e}")))
        return responses
