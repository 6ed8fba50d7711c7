"""The LitServe side: a LitAPI that runs the exported model, and a LitSpec that speaks TF
Serving's REST API and KServe's v2 protocol.

LitServe runs three kinds of process: this command's (it starts the others and waits), an HTTP
server (uvicorn, forked) whose routes are the spec's endpoints, and an inference worker (spawned)
that loads the model in `ServedModel.setup` and runs `predict` on batches. An endpoint reads and
checks the request in the HTTP process (a bad one is answered there, with 400, and never reaches
the worker), puts the inputs by name on LitServe's request queue and waits for the outputs.

Dynamic batching is LitServe's: the worker collects up to `max_batch_size` requests, waiting at
most `batch_timeout` seconds, then `predict` gets them as a list. A request may carry several
samples, so `predict` concatenates the requests' inputs along the batch, runs the model once and
splits the outputs back, request by request. If that run fails, each request is run alone, so
one request the runtime refuses does not fail the others.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import signal
import sys
import time
import uuid
from typing import Any

import litserve as ls
import numpy as np
from fastapi import Request, Response
from fastapi.responses import JSONResponse
from litserve.specs.base import LitSpec
from litserve.utils import LitAPIStatus, ResponseBufferItem

from dualtrain import __version__
from dualtrain.serve import protocol, runtimes
from dualtrain.serve.protocol import BadRequest, Model, Named

# The request queue's key; the spec's endpoints are the routes.
QUEUE_PATH = "/dualtrain-serve"


class Failed:
    """The worker's answer to a request the model could not run: the runtime's error, one line."""

    def __init__(self, message: str) -> None:
        self.message = message


class ServedModel(ls.LitAPI):
    """Runs the exported model in the inference worker: inputs by name in, outputs by name out."""

    def __init__(
        self,
        model: Model,
        max_batch_size: int,
        batch_timeout: float,
        max_body_bytes: int,
        max_answer_values: int,
    ):
        super().__init__(
            max_batch_size=max_batch_size,
            batch_timeout=batch_timeout,
            spec=ServingSpec(model, max_body_bytes, max_answer_values),
        )
        self.model = model
        self.run: runtimes.Run | None = None
        self.command_pid = os.getpid()

    def setup(self, device: str) -> None:
        # Ctrl-C reaches every process of the terminal's group; the command's process ends this
        # worker (SIGTERM) once the HTTP server has stopped, so the worker itself lets it pass.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        die_with(self.command_pid)
        self.run = runtimes.load(self.model)

    def decode_request(self, request: Named, **kwargs: Any) -> Named:
        return request  # read and checked by the endpoint

    def batch(self, inputs: list[Named]) -> list[Named]:
        # `predict` joins them (each may hold several samples) and returns one answer per
        # request, which LitServe's own `unbatch` hands back request by request.
        return list(inputs)

    def predict(
        self, x: Named | list[Named], **kwargs: Any
    ) -> Named | Failed | list[Named | Failed]:
        """One request's inputs (max_batch_size 1), or a batch of requests (a list)."""
        if isinstance(x, dict):
            return self._run_one(x)
        if len(x) == 1:
            return [self._run_one(x[0])]
        sizes = [len(next(iter(r.values()))) for r in x]
        joined = {name: np.concatenate([r[name] for r in x]) for name in x[0]}
        try:
            outputs = self._checked(joined, sum(sizes))
        except Exception:  # a request the runtime refuses: the others still get their answers
            return [self._run_one(r) for r in x]
        cuts = np.cumsum(sizes)[:-1]
        parts = {name: np.split(value, cuts) for name, value in outputs.items()}
        return [{name: parts[name][i] for name in parts} for i in range(len(x))]

    def encode_response(self, output: Named | Failed, **kwargs: Any) -> Named | Failed:
        return output  # the endpoint writes the answer in the request's protocol

    def _run_one(self, named: Named) -> Named | Failed:
        try:
            return self._checked(named, len(next(iter(named.values()))))
        except Exception as err:
            return Failed(
                f"{self.model.runtime} could not run the model on this request: "
                f"{runtimes.describe(err)}"
            )

    def _checked(self, named: Named, size: int) -> Named:
        assert self.run is not None, "setup loads the model"
        outputs = self.run(named)
        for tensor in self.model.outputs:
            value = outputs[tensor.name]
            if value.ndim == 0 or len(value) != size:
                raise RuntimeError(
                    f"output {tensor.name!r} has shape {list(value.shape)} for a batch of {size}"
                )
        return outputs


class ServingSpec(LitSpec):
    """TF Serving's REST API and KServe's v2 (Open Inference Protocol) over one model."""

    def __init__(self, model: Model, max_body_bytes: int, max_answer_values: int) -> None:
        super().__init__()
        self.api_path = QUEUE_PATH
        self.model = model
        self.max_body_bytes = max_body_bytes
        self.max_answer_values = max_answer_values
        self._routes_added = False

    def pre_setup(self, lit_api: ls.LitAPI) -> None:
        if self._routes_added:
            return
        self._routes_added = True
        add = self.add_endpoint
        # TF Serving: /v1/models/<name>[/versions/<version>](:predict|/metadata)
        for prefix in ("/v1/models/{name}", "/v1/models/{name}/versions/{version}"):
            add(prefix + ":predict", self.tf_predict, ["POST"])
            add(prefix + "/metadata", self.tf_metadata, ["GET"])
            add(prefix, self.tf_status, ["GET"])
        # KServe v2: /v2, /v2/health/*, /v2/models/<name>[/versions/<version>](/infer|/ready)
        add("/v2", self.v2_server, ["GET"])
        add("/v2/health/live", self.v2_live, ["GET"])
        add("/v2/health/ready", self.v2_ready, ["GET"])
        for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
            add(prefix + "/infer", self.v2_infer, ["POST"])
            add(prefix + "/ready", self.v2_model_ready, ["GET"])
            add(prefix, self.v2_model, ["GET"])

    def decode_request(self, request: Any, context_kwargs: dict[str, Any] | None = None) -> Any:
        return request

    def encode_response(self, output: Any, context_kwargs: dict[str, Any] | None = None) -> Any:
        return output

    # TF Serving
    async def tf_predict(self, request: Request) -> Response:
        return await self._predict(request, protocol.parse_tf_serving)

    async def tf_status(self, request: Request) -> Response:
        return self._named(request) or JSONResponse(protocol.model_status())

    async def tf_metadata(self, request: Request) -> Response:
        return self._named(request) or JSONResponse(protocol.tf_metadata(self.model))

    # KServe v2
    async def v2_infer(self, request: Request) -> Response:
        return await self._predict(request, protocol.parse_v2)

    async def v2_server(self, request: Request) -> Response:
        return JSONResponse({"name": "dualtrain", "version": __version__, "extensions": []})

    async def v2_live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def v2_ready(self, request: Request) -> Response:
        # LitServe starts this HTTP server once the inference worker has loaded the model.
        return JSONResponse({"ready": True})

    async def v2_model(self, request: Request) -> Response:
        return self._named(request) or JSONResponse(protocol.v2_metadata(self.model))

    async def v2_model_ready(self, request: Request) -> Response:
        return self._named(request) or JSONResponse({"name": self.model.name, "ready": True})

    async def _predict(self, request: Request, parse: Any) -> Response:
        refused = self._named(request)
        if refused is not None:
            return refused
        try:
            parsed: protocol.Parsed = parse(
                self.model, protocol.parse_json(await self._body(request))
            )
            protocol.check_answer_size(self.model, parsed, self.max_answer_values)
        except BadRequest as err:
            return _error(str(err), err.status)
        output, status = await self._submit(parsed.inputs)
        if status != LitAPIStatus.OK:
            detail = getattr(output, "detail", None)
            code = getattr(output, "status_code", 500)
            if isinstance(detail, str) and isinstance(code, int):  # LitServe's own: a timeout
                return _error(detail, code)
            return _error("the inference worker failed on this request; see the server's log", 500)
        if isinstance(output, Failed):
            return _error(output.message, 400)
        # NaN and infinities are written as TF Serving writes them (NaN, Infinity), where
        # JSONResponse would refuse them.
        body = json.dumps(protocol.answer(self.model, parsed, output), separators=(",", ":"))
        return Response(body, media_type="application/json")

    async def _submit(self, inputs: Named) -> tuple[Any, str]:
        """Puts the inputs on LitServe's request queue and waits for the worker's answer."""
        uid = str(uuid.uuid4())
        event = asyncio.Event()
        self.response_buffer[uid] = ResponseBufferItem(event=event)
        self.request_queue.put((self.response_queue_id, uid, time.monotonic(), inputs))
        await event.wait()
        output, status = self.response_buffer.pop(uid).response
        return output, status

    async def _body(self, request: Request) -> bytes:
        limit = self.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise BadRequest(_too_large(int(declared), limit))
        chunks: list[bytes] = []
        total = 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise BadRequest(_too_large(total, limit, more=True))
            chunks.append(chunk)
        return b"".join(chunks)

    def _named(self, request: Request) -> Response | None:
        """404 for a model or version this server does not serve (TF Serving's answer); None
        where the path names this one."""
        name = request.path_params.get("name")
        version = request.path_params.get("version", protocol.VERSION)
        if isinstance(name, str) and name.endswith(":predict") and request.method != "POST":
            return _error(f"{request.method} {request.url.path}: predict takes POST", 405)
        if name != self.model.name:
            return _error(
                f"model {name!r} is not served here; this server serves {self.model.name!r}", 404
            )
        if version != protocol.VERSION:
            return _error(
                f"version {version!r} of {name!r} is not served here; the only version is "
                f"{protocol.VERSION}",
                404,
            )
        return None


def die_with(command_pid: int) -> None:
    """Linux: this process (LitServe's HTTP server, inference worker or manager) gets SIGTERM
    when the command's process ends, even by SIGKILL, instead of serving on as an orphan."""
    if sys.platform != "linux":
        return
    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != command_pid:  # it ended before the line above
        os._exit(1)


def forks_die_with(command_pid: int) -> None:
    """`die_with` in every process the command's process forks from here on (LitServe's HTTP
    server and manager); not in those its children fork in turn."""
    forking = [0]

    def before() -> None:
        forking[0] = os.getpid()

    def in_child() -> None:
        if forking[0] == command_pid:
            die_with(command_pid)

    os.register_at_fork(before=before, after_in_child=in_child)


def http_errors(model: Model) -> Any:
    """Starlette's own answers (no such path, a method the path does not take), and an error no
    endpoint expected, as `{"error": ...}` like every other answer."""

    async def handler(request: Request, error: Exception) -> Response:
        return _http_error(model, request, error)

    return handler


def _http_error(model: Model, request: Request, error: Exception) -> Response:
    status = getattr(error, "status_code", 500)
    if status == 404:
        message = (
            f"no such path: {request.url.path}; this server serves {model.name!r} under "
            f"/v1/models/{model.name} (TF Serving) and /v2/models/{model.name} (KServe v2)"
        )
    elif status == 405:
        message = f"{request.url.path} does not take {request.method}"
    elif isinstance(status, int) and status < 500:
        message = str(getattr(error, "detail", "")) or "bad request"
    else:
        status, message = 500, f"the server failed on this request: {runtimes.describe(error)}"
    headers = getattr(error, "headers", None) if status < 500 else None  # 405's Allow
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _too_large(size: int, limit: int, more: bool = False) -> str:
    return (
        f"the body is {'over ' if more else ''}{size:,} bytes, more than the server takes "
        f"({limit:,}, --max-body-bytes); send fewer samples per request"
    )
