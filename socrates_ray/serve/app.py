"""The Ray Serve HTTP app: build_app(cfg, model_path) -> serve.Application; start_serve deploys it.

Routes:
  POST /v1/predict           persona + stimulus (or a full prompt) -> answer distribution and/or samples
  POST /v1/predict/batch     many such rows in one request -> their answer distributions
  POST /v1/chat/completions  OpenAI's chat completions: n, logprobs/top_logprobs (for a survey question, the
                             first token's top_logprobs are the exact option distribution), stream (SSE)
  POST /v1/completions       OpenAI's (legacy) completions: text continued as it is, logprobs, stream
  GET  /v1/models            the base model and the adapters that can be named
  GET  /healthz              liveness + batching counters

Every client mistake is a 4xx JSON body {"error": {"message", "type", "param"}} and the replica
keeps serving: malformed JSON and wrong fields (400), missing/bad bearer token (401), unknown
adapter (404), an adapter that cannot be used on this base (422, the reason named), bodies over
serve.max_body_bytes (413).
"""

# No `from __future__ import annotations` here: FastAPI must see the request models as real
# classes after Serve pickles the deployment (string annotations would not resolve there).

import asyncio
import hmac
import os
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from ray import serve

from socrates_ray.config import Config, ServeSection
from socrates_ray.data.prompts import MAX_SCALE_OPTIONS, build_messages, build_prompt, parse_answer_scale, persona_problem
from socrates_ray.infer import MAX_DISTRIBUTION_TEMPERATURE, engine_spec, parse_first_integer
from socrates_ray.infer.adapter_check import AdapterUnusable
from socrates_ray.serve.auth import bearer_token
from socrates_ray.serve.openai_format import chat_chunks, chat_response, completion_chunks, completion_response, option_top, sse
from socrates_ray.serve.replica import (
    CONTEXT_CODE, AdapterNotFound, BadRequest, DistributionJob, GenerationJob, ModelCore, ReplicaSettings, list_adapters, resolve_adapter,
)


MAX_OPTION = 10**12  # an answer option beyond this is no survey scale (and would be thousands of tokens)


def lone_surrogate(value: Any, where: str = "body") -> str | None:
    """Where a string in a parsed JSON body holds a lone UTF-16 surrogate ("\\ud800": valid JSON, not
    text: it cannot be encoded for the tokenizer), or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where
        return None
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        if isinstance(key, str) and lone_surrogate(key) is not None:
            return f"{where} (a key)"
        if (found := lone_surrogate(item, f"{where}.{key}" if where != "body" else str(key))) is not None:
            return found
    return None


class Text(BaseModel):
    """A request body whose strings are text: a lone surrogate anywhere is the client's 400."""

    @model_validator(mode="before")
    @classmethod
    def _text(cls, data: Any) -> Any:
        if (where := lone_surrogate(data)) is not None:
            raise ValueError(f"{where} holds a lone UTF-16 surrogate (e.g. \\ud800), which is not text; send valid Unicode")
        return data


class Strict(Text):
    model_config = ConfigDict(extra="forbid")


class PredictRow(Strict):
    """One participant and question: what /v1/predict scores, and each row of /v1/predict/batch."""

    persona: dict[str, Any] | None = Field(None, description="Demographic fields (SocSci210 names).")
    stimulus: str | None = Field(None, min_length=1, description="Vignette + question + answer-format sentence.")
    prompt: str | None = Field(None, min_length=1, description="A full prompt instead of persona + stimulus.")
    options: list[Annotated[int, Field(ge=-MAX_OPTION, le=MAX_OPTION)]] | None = Field(
        None, min_length=1, max_length=MAX_SCALE_OPTIONS, description="Answers to score (default: the scale parsed from the text).")

    @field_validator("persona")
    @classmethod
    def _persona(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and (problem := persona_problem(value)) is not None:
            raise ValueError(problem)
        return value


MAX_BATCH_ROWS = 1024  # rows of one /v1/predict/batch request (the body limit, serve.max_body_bytes, applies too)


class PredictBatchRequest(Strict):
    rows: list[PredictRow] = Field(min_length=1, max_length=MAX_BATCH_ROWS)
    adapter: str | None = Field(None, description="Adapter name for every row; null or 'base' = the base model.")
    temperature: float = Field(1.0, ge=0, le=MAX_DISTRIBUTION_TEMPERATURE)
    top_p: float = Field(1.0, gt=0, le=1)


class PredictRequest(PredictRow):
    adapter: str | None = Field(None, description="Adapter name; null or 'base' = the base model.")
    mode: Literal["distribution", "sample"] = "distribution"
    n: int = Field(1, ge=1)
    # Up to MAX_DISTRIBUTION_TEMPERATURE on an option distribution (what simulate.temperature=auto
    # may fit); sampling text keeps OpenAI's cap of 2.
    temperature: float = Field(1.0, ge=0, le=MAX_DISTRIBUTION_TEMPERATURE)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(32, ge=1)

    @field_validator("temperature")
    @classmethod
    def _sampling_cap(cls, value: float, info: ValidationInfo) -> float:
        if info.data.get("mode") == "sample" and value > 2:
            raise ValueError(f"mode 'sample' allows temperature <= 2 (got {value}); mode 'distribution' allows up to "
                             f"{MAX_DISTRIBUTION_TEMPERATURE:g}")
        return value


class ChatMessage(Strict):
    role: Literal["system", "user", "assistant"]
    content: str


MAX_TOP_LOGPROBS = 20  # OpenAI's cap


class StreamOptions(Text):
    include_usage: bool = False


class Generation(Text):
    """What chat and completions requests share. Unknown OpenAI fields (user, seed, ...) are ignored, as
    OpenAI-compatible servers do."""

    model: str = "base"
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None


class ChatRequest(Generation):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> "ChatRequest":
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs=true")
        return self


class CompletionRequest(Generation):
    prompt: str | list[str] = Field(description="Text to continue as it is (no chat template), or a list of texts.")
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS, description="Log-probabilities of the chosen tokens and this many alternatives.")
    echo: bool = False
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _texts(cls, value: str | list[str]) -> str | list[str]:
        if (value == "") or (isinstance(value, list) and (not value or any(p == "" for p in value))):
            raise ValueError("send a non-empty prompt (a text, or a list of texts)")
        return value


def resident_mib() -> float:
    """This process's resident memory (MiB): /healthz reports it, so growth is visible from outside."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def error(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
          code: str | None = None) -> JSONResponse:
    """The documented error body; `code` a name clients act on (context_length_exceeded), else the status."""
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind, "param": param, "code": code or status}})


def client_error(err: Exception, param: str) -> JSONResponse:
    """A route's client mistake as its documented body: a bad request (400), an adapter that does not
    exist (404) or cannot be used on this base (422); `param` names the field that chose the adapter."""
    if isinstance(err, AdapterNotFound):
        return error(404, str(err), "not_found_error", param)
    if isinstance(err, AdapterUnusable):
        return error(422, str(err), param=param)
    return error(400, str(err), code=getattr(err, "code", None))


def replica_settings(cfg: Config, model_path: str, adapters: dict[str, str] | None = None) -> ReplicaSettings:
    """The builder: cfg.serve -> what every replica gets; `adapters` (name -> folder) join
    serve.adapters (e.g. a training run's export as 'finetuned'). The bearer token is read here, in
    the process that builds the app (where the user exported it), not in the replica."""
    s = cfg.serve
    token = bearer_token(s)
    return ReplicaSettings(
        model_path=model_path, system_prompt=cfg.prompt.system_prompt, num_cpus=s.num_cpus, num_gpus=s.num_gpus,
        precision=s.precision, max_length=s.max_length, adapters_dir=s.adapters_dir, adapters={**s.adapters, **(adapters or {})},
        max_loaded_adapters=s.max_loaded_adapters, max_batch_size=s.max_batch_size,
        batch_wait_timeout_s=s.batch_wait_timeout_s, max_n=s.max_n, max_tokens_limit=s.max_tokens_limit,
        max_body_bytes=s.max_body_bytes, token=token, engine=engine_spec(cfg.model), max_ongoing_requests=s.max_ongoing_requests,
    )


def deployment_options(s: ServeSection) -> dict[str, Any]:
    """SocratesModel's Serve options (replicas, autoscaling, resources) for `s`."""
    return {
        "max_ongoing_requests": s.max_ongoing_requests,
        "autoscaling_config": {
            "min_replicas": s.autoscaling.min_replicas,
            "max_replicas": s.autoscaling.max_replicas,
            "target_ongoing_requests": s.autoscaling.target_ongoing_requests,
        },
        "ray_actor_options": {"num_cpus": s.num_cpus, "num_gpus": s.num_gpus},
    }


class BodyLimit:
    """A 413 for a body over `limit` bytes, counted as the bytes arrive: a chunked body (no
    Content-Length, which the guard checks up front) is cut off at the limit, never read whole."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        received = 0

        async def counted() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:  # FastAPI passes an HTTPException from reading the body to its handler
                    raise StarletteHTTPException(413, "body over the limit")
            return message

        await self.app(scope, counted, send)


def build_api(replica: "SocratesModel") -> FastAPI:
    """One replica's FastAPI app: error handlers, the body-size and auth guard, and its routes
    (the replica's methods). Built in the replica, after its constructor (Serve's late-bound ingress)."""
    settings = replica.settings
    api = FastAPI(title="socrates_ray", docs_url="/docs")
    api.add_middleware(BodyLimit, limit=settings.max_body_bytes)

    @api.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        if first.get("type") == "json_invalid":
            return error(400, "request body is not valid JSON", param=None)
        return error(400, f"{where or 'body'}: {first.get('msg', 'invalid')}", param=where or None)

    @api.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # FastAPI's own 4xx (a body that is not UTF-8, an integer too long to parse, an unknown
        # route) in the documented error shape, not {"detail": ...}
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        if exc.status_code == 413:
            return error(413, f"request body is over the limit of {settings.max_body_bytes} bytes (serve.max_body_bytes)")
        return error(exc.status_code, str(exc.detail), kind)

    @api.middleware("http")
    async def _guard(request: Request, call_next: Any) -> Any:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > settings.max_body_bytes:
            return error(413, f"request body of {length} bytes is over the limit of {settings.max_body_bytes} (serve.max_body_bytes)")
        if settings.token is not None and request.url.path != "/healthz":
            # compared as bytes: a header with non-ASCII bytes is a wrong token (401), not a failed comparison
            sent = request.headers.get("authorization", "").encode("latin-1")
            if not hmac.compare_digest(sent, f"Bearer {settings.token}".encode()):
                return error(401, "missing or wrong bearer token: send 'Authorization: Bearer <token>'", "authentication_error")
        return await call_next(request)

    api.post("/v1/predict")(replica.predict)
    api.post("/v1/predict/batch")(replica.predict_batch)
    api.post("/v1/chat/completions")(replica.chat)
    api.post("/v1/completions")(replica.completions)
    api.get("/v1/models")(replica.models)
    api.get("/healthz")(replica.healthz)
    return api


@serve.deployment(name="SocratesModel")
@serve.ingress()  # the app is built per replica by __serve_build_asgi_app__ (build_api)
class SocratesModel:
    """One Serve replica: the model (ModelCore) behind the HTTP routes. Options: deployment_options;
    arguments: replica_settings."""

    def __init__(self, settings: ReplicaSettings) -> None:
        self.settings = settings
        self.core = ModelCore(settings)
        self.system_prompt = settings.system_prompt
        self.model_name = os.path.basename(os.path.normpath(settings.model_path))

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_api(self)

    def _limits(self, n: int, max_tokens: int | None) -> None:
        if n > self.settings.max_n:
            raise BadRequest(f"n={n} is over the limit of {self.settings.max_n} (serve.max_n)")
        if max_tokens is not None and max_tokens > self.settings.max_tokens_limit:
            raise BadRequest(f"max_tokens={max_tokens} is over the limit of {self.settings.max_tokens_limit}")

    def _fits(self, text: str, extra: int) -> int:
        """The prompt's token count; 400 when it plus `extra` new tokens overflow the context."""
        prompt_tokens = self.core.context_tokens(text)
        used = prompt_tokens + extra
        if used > self.core.engine.context:
            raise BadRequest(f"input needs {used} tokens, over the model's context of {self.core.engine.context}; shorten the prompt",
                             CONTEXT_CODE)
        return prompt_tokens

    def _row_text(self, row: PredictRow) -> tuple[str, Any]:
        """A row's prompt and the answer scale parsed from its text."""
        if (row.prompt is None) == (row.stimulus is None):
            raise BadRequest("send exactly one of 'prompt' (a full prompt) or 'stimulus' (with an optional 'persona')")
        prompt = row.prompt if row.prompt is not None else build_prompt(row.persona or {}, row.stimulus or "")
        return prompt, parse_answer_scale(row.stimulus or prompt)

    def _distribution_job(self, row: PredictRow, adapter: str | None, temperature: float, top_p: float) -> DistributionJob:
        prompt, scale = self._row_text(row)
        options = row.options or scale.options
        if not options:
            raise BadRequest("no bounded answer scale found in the text and no 'options' given; "
                             "send 'options' or use mode 'sample' for open-ended amounts")
        self._fits(self.core.engine.encoder.prefix_text(prompt), 3 * len(options) + 1)
        return DistributionJob(adapter, prompt, list(options), temperature, top_p)

    async def predict(self, req: PredictRequest) -> Any:
        try:
            self._limits(req.n, req.max_tokens if req.mode == "sample" else None)
            prompt, scale = self._row_text(req)
            async with self.core.using_adapter(req.adapter) as adapter:  # pinned until answered
                body: dict[str, Any] = {"adapter": adapter or "base", "mode": req.mode,
                                        "scale": {"kind": scale.kind, "low": scale.low, "high": scale.high}}
                if req.mode == "distribution":
                    job = self._distribution_job(req, adapter, req.temperature, req.top_p)
                    probs = await self.core.submit(job)
                    body.update(options=job.options, probs=[float(p) for p in probs])
                else:
                    prefix = self.core.engine.encoder.prefix_text(prompt)
                    self._fits(prefix, req.max_tokens)
                    outs = await self.core.submit(GenerationJob(adapter, prefix, req.temperature, req.top_p, req.n, req.max_tokens))
                    answers = [parse_first_integer(o["text"]) for o in outs]
                    body.update(samples=[o["text"] for o in outs], answers=answers,
                                unparsable=sum(a is None for a in answers))
            return body
        except (BadRequest, AdapterNotFound, AdapterUnusable) as err:
            return client_error(err, "adapter")

    async def predict_batch(self, req: PredictBatchRequest) -> Any:
        """Many rows' answer distributions in one request, each scored as /v1/predict scores it alone. A
        row that cannot be scored (no scale, over the context) gets its own error in its place; the
        request's own mistakes (adapter, fields) are its 4xx."""
        try:
            async with self.core.using_adapter(req.adapter) as adapter:
                results: list[Any] = [None] * len(req.rows)
                pending: dict[int, DistributionJob] = {}
                for i, row in enumerate(req.rows):
                    try:
                        pending[i] = self._distribution_job(row, adapter, req.temperature, req.top_p)
                    except BadRequest as err:
                        results[i] = {"error": {"message": str(err), "code": err.code or 400}}
                answers = await asyncio.gather(*(self.core.submit(job) for job in pending.values()), return_exceptions=True)
                for (i, job), answer in zip(pending.items(), answers):
                    if isinstance(answer, BadRequest):
                        results[i] = {"error": {"message": str(answer), "code": answer.code or 400}}
                    elif isinstance(answer, BaseException):
                        raise answer
                    else:
                        results[i] = {"options": job.options, "probs": [float(p) for p in answer]}
            return {"adapter": adapter or "base", "results": results}
        except (BadRequest, AdapterNotFound, AdapterUnusable) as err:
            return client_error(err, "adapter")

    async def chat(self, req: ChatRequest) -> Any:
        try:
            max_tokens = req.max_completion_tokens or req.max_tokens or 16
            self._limits(req.n, max_tokens)
            async with self.core.using_adapter(None if req.model in ("base", self.model_name) else req.model) as adapter:
                messages = [m.model_dump() for m in req.messages]
                if messages[0]["role"] != "system":
                    # Qwen's chat template would otherwise insert its own default system prompt.
                    messages = build_messages("", self.system_prompt)[:1] + messages
                prefix = self.core.engine.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
                prompt_tokens = self._fits(prefix, max_tokens)
                top = req.top_logprobs or 0
                outs = await self.core.submit(
                    GenerationJob(adapter, prefix, req.temperature, req.top_p, req.n, max_tokens, top if req.logprobs else False)
                )
                first_top = await self._answer_distribution(adapter, messages, prefix, top) if req.logprobs and top else None
        except (BadRequest, AdapterNotFound, AdapterUnusable) as err:
            return client_error(err, "model")
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(sse(chat_chunks(req.model, outs, self.core.engine.tokenizer, prompt_tokens, req.logprobs,
                                                     include_usage, first_top)), media_type="text/event-stream")
        return chat_response(req.model, outs, prompt_tokens, req.logprobs, first_top)

    async def _answer_distribution(self, adapter: str | None, messages: list[dict[str, str]], prefix: str,
                                   k: int) -> list[tuple[str, float]] | None:
        """The first answer token's top_logprobs as the exact option distribution, where the chat is the
        question /v1/predict would score: one user turn (after the server's system prompt) holding a bounded
        answer scale. Otherwise None (the engine's own top tokens stand)."""
        user = messages[-1]["content"] if messages[-1]["role"] == "user" else None
        if user is None or self.core.engine.encoder.prefix_text(user) != prefix:
            return None
        options = parse_answer_scale(user).options
        if not options:
            return None
        probs = await self.core.submit(DistributionJob(adapter, user, list(options)))
        return option_top(options, [float(p) for p in probs], k)

    async def completions(self, req: CompletionRequest) -> Any:
        try:
            if req.echo or req.suffix is not None:
                raise BadRequest("echo and suffix are not supported; send the prompt alone")
            prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
            max_tokens = req.max_tokens or 16
            self._limits(req.n, max_tokens)
            if len(prompts) * req.n > self.settings.max_n:
                raise BadRequest(f"{len(prompts)} prompts x n={req.n} is over the limit of {self.settings.max_n} completions a "
                                 "request (serve.max_n)")
            async with self.core.using_adapter(None if req.model in ("base", self.model_name) else req.model) as adapter:
                prompt_tokens = sum(self._fits(p, max_tokens) for p in prompts)
                logprobs = req.logprobs if req.logprobs is not None else False
                outs = await asyncio.gather(*(self.core.submit(
                    GenerationJob(adapter, p, req.temperature, req.top_p, req.n, max_tokens, logprobs)) for p in prompts))
        except (BadRequest, AdapterNotFound, AdapterUnusable) as err:
            return client_error(err, "model")
        tokenizer, with_logprobs = self.core.engine.tokenizer, req.logprobs is not None
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(sse(completion_chunks(req.model, outs, prompts, tokenizer, prompt_tokens, with_logprobs,
                                                           include_usage)), media_type="text/event-stream")
        return completion_response(req.model, outs, prompts, tokenizer, prompt_tokens, with_logprobs)

    async def models(self) -> Any:
        names = ["base"] + [name for name in list_adapters(self.settings.adapters_dir, self.settings.adapters)
                            if not self._failed(name)]
        return {"object": "list", "data": [
            {"id": n, "object": "model", "created": 0, "owned_by": "socrates_ray",
             "parent": None if n == "base" else "base"} for n in names
        ]}

    def _failed(self, name: str) -> bool:
        """Whether `name` failed to load here and its folder is unchanged since (not listed as usable)."""
        try:
            return self.core.unusable(name, resolve_adapter(name, self.settings.adapters_dir, self.settings.adapters)) is not None
        except (AdapterNotFound, BadRequest):
            return True

    async def healthz(self) -> Any:
        return {"status": "ok", "model": self.model_name, "replica_pid": os.getpid(), "rss_mib": round(resident_mib(), 1),
                "device": self.core.engine.device,
                "engine": self.core.settings.engine.name, **{k: round(v, 3) for k, v in self.core.stats().items()},
                "loaded_adapters": sorted(self.core.engine.adapters)}


def build_app(cfg: Config, model_path: str, adapters: dict[str, str] | None = None) -> serve.Application:
    """The builder: the Serve application for `cfg.serve`, serving the model at `model_path` with
    serve.adapters and `adapters` nameable."""
    return SocratesModel.options(**deployment_options(cfg.serve)).bind(replica_settings(cfg, model_path, adapters))


@dataclass(frozen=True)
class ServeLaunch:
    """Where the app listens and how loud Serve is (serve.host/port/app_name/route_prefix, run.log_level)."""

    host: str
    port: int
    app_name: str
    route_prefix: str
    log_level: str
    access_log: bool

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"


def serve_launch(cfg: Config) -> ServeLaunch:
    """The builder: serve.* and run.log_level -> ServeLaunch."""
    s = cfg.serve
    return ServeLaunch(s.host, s.port, s.app_name, s.route_prefix, cfg.run.log_level.upper(), cfg.run.verbose)


def start_serve(app: serve.Application, launch: ServeLaunch, blocking: bool = False) -> str:
    """Deploy `app` on the running Ray cluster; returns its base URL."""
    serve.start(http_options={"host": launch.host, "port": launch.port},
                logging_config={"log_level": launch.log_level, "enable_access_log": launch.access_log})
    serve.run(app, name=launch.app_name, route_prefix=launch.route_prefix, blocking=blocking)
    return launch.url
