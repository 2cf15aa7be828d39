"""The Open Inference Protocol v2: the REST codec (JSON and binary tensors), streamed forms, gRPC.

::

    bytes ──parse_infer_request──▶ InferRequest ──validate_inputs(model's TensorSpecs)──▶ arrays
    arrays ──encode_infer_response──▶ bytes          (JSON, or the binary tensor extension)
    arrays ──encode_infer_response_frames──▶ pieces  (the same document, written as it goes)
    bytes ──parse_generate_request──▶ rows           (``generate_stream``, Server-Sent Events)
    ModelInferRequest ──infer_request_body──▶ bytes  (gRPC: the REST body it stands for)
    bytes ──infer_response_message──▶ ModelInferResponse

Everything a client can get wrong raises :class:`optkit.ProtocolError` (a 400), saying what
and where; both tiers use this one codec, so they answer a bad request the same way.
"""

from ._codec import (BINARY_HEADER, DATATYPES, InferInput, InferRequest, InferResult, TensorSpec,
                     decode_infer_response, decode_infer_result, encode_binary_infer_request,
                     encode_infer_request, encode_infer_response, error_body, json_dumps,
                     json_loads, parse_infer_request, request_deadline, split_rows,
                     validate_inputs)
from ._grpc_codec import (encode_grpc_infer_request, infer_request_body, infer_response_message,
                          parameters_dict)
from ._stream import (binary_data_piece, datatype_of, encode_infer_response_frames,
                      json_data_piece, parse_generate_request)

__all__ = ["DATATYPES", "BINARY_HEADER", "TensorSpec", "InferInput", "InferRequest",
           "InferResult", "parse_infer_request", "validate_inputs", "request_deadline",
           "split_rows", "encode_infer_request", "encode_infer_response", "decode_infer_response",
           "decode_infer_result", "encode_binary_infer_request", "json_dumps", "json_loads",
           "error_body", "datatype_of", "encode_infer_response_frames", "json_data_piece",
           "binary_data_piece", "parse_generate_request", "infer_request_body",
           "infer_response_message", "parameters_dict", "encode_grpc_infer_request"]
