"""Triton Python-backend model `decode`: encoded images (PNG/JPEG bytes) -> the encoder's input.

Thin by design: parse tensors, call `megaclass.python_backend.serving.image_decoding`, return tensors.
Bytes that are not a PNG or JPEG image (or too large) get their own INVALID_ARG error.
"""

import triton_python_backend_utils as pb_utils

from megaclass.python_backend.serving.error_reporting import error_message, use_triton_log
from megaclass.python_backend.serving.image_decoding import DecodeLimits, decode_batch
from megaclass.python_backend.serving.version_integrity import open_version


def _error(exc):
    """A bad request is the client's error (INVALID_ARG, HTTP 400, its own message); anything else is
    internal: logged with a request id, and the client gets the id (error_reporting.py)."""
    message, client = error_message("decode", exc)
    return pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG if client else pb_utils.TritonError.INTERNAL)


class TritonPythonModel:
    def initialize(self, args):
        use_triton_log(pb_utils)
        config, params, _ = open_version(args)  # refused if changed since publishing
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        self.size = int(config["output"][0]["dims"][-1])
        default = DecodeLimits()
        self.limits = DecodeLimits(
            int(params.get("max_image_bytes", default.max_bytes)),
            int(params.get("max_image_pixels", default.max_pixels)),
        )

    def execute(self, requests):
        responses = []
        for request in requests:
            tensor = pb_utils.get_input_tensor_by_name(request, self.input_name)
            try:
                rows = None if tensor is None else tensor.as_numpy()
                images = decode_batch(rows, self.size, self.limits, self.input_name)
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(self.output_name, images)]))
            except Exception as exc:
                responses.append(pb_utils.InferenceResponse(error=_error(exc)))
        return responses
