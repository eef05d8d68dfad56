"""One worker thread owns the model; requests reach it through one bounded queue.

Why: the model is not thread-safe, and on a CPU (or one GPU) running two generations at once is no faster than
running them one after another. So the event loop never touches the model: it validates a request, puts a job
in the queue (or answers 429 when the queue is full) and awaits the result. The worker takes the oldest job
and, when it is a non-streaming generation, every other waiting generation with equal settings (up to
`max_batch`), and answers them with one `generate_batch` call (left-padded batch). Streams run alone.

Each job carries a `cancelled` event. The request sets it when its client disconnects or its deadline passes;
the worker then skips the job if it has not started, or stops decoding (via `should_stop`) once every job of
the running batch is cancelled, so abandoned work never delays other clients for long.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from biomedgpt.inference import GenerationSettings, Message, generate_batch, stream

logger = logging.getLogger(__name__)

_END = object()  # end-of-stream marker


class QueueFullError(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"queue full; retry after {retry_after} s")
        self.retry_after = retry_after


class RequestTimeoutError(Exception):
    pass


class ClientDisconnectedError(Exception):
    pass


@dataclass(eq=False)
class Job:
    kind: str  # "generate", "stream" or "call"
    loop: asyncio.AbstractEventLoop
    messages: list[Message] = field(default_factory=list)
    settings: GenerationSettings | None = None
    function: Callable[[], Any] | None = None  # kind "call": any model work (embeddings)
    future: asyncio.Future | None = None
    pieces: asyncio.Queue | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)

    def deliver(self, value: Any = None, error: BaseException | None = None) -> None:
        """Hand a result (or an error) to the waiting request, from the worker thread."""

        def settle() -> None:
            if self.future is not None and not self.future.done():
                if error is not None:
                    self.future.set_exception(error)
                else:
                    self.future.set_result(value)

        self._call_soon(settle)

    def push(self, item: Any) -> None:
        self._call_soon(lambda: self.pieces.put_nowait(item))

    def _call_soon(self, callback: Callable[[], None]) -> None:
        try:
            self.loop.call_soon_threadsafe(callback)
        except RuntimeError:  # the event loop is closed: the server is shutting down
            self.cancelled.set()


@dataclass
class Completion:
    text: str
    completion_tokens: int
    finish_reason: str  # "stop" or "length"


class Engine:
    def __init__(self, model, max_queue: int = 32, max_batch: int = 8, batch_window_s: float = 0.05) -> None:
        self.model, self.max_queue, self.max_batch = model, max_queue, max_batch
        self.batch_window_s = batch_window_s
        self._last_batch_size = 0
        self._waiting: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._running = 0  # jobs in the batch the worker is running now
        self._seconds_per_batch = 1.0  # moving average, for Retry-After
        self._thread: threading.Thread | None = None
        self.completed = 0  # jobs answered
        self.batches = 0  # worker runs (a batch of generations counts once)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="biomedgpt-model-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            for job in self._waiting:
                job.cancelled.set()
                job.deliver(error=RequestTimeoutError("the server is shutting down"))
                if job.pieces is not None:
                    job.push(RequestTimeoutError("the server is shutting down"))
            self._waiting.clear()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def stats(self) -> dict:
        with self._cond:
            return {"waiting": len(self._waiting), "running": self._running, "max_queue": self.max_queue,
                    "max_batch": self.max_batch, "completed": self.completed, "batches": self.batches}

    # ------------------------------------------------------------------ submitting (event-loop thread)
    def submit(self, job: Job) -> Job:
        with self._cond:
            if self._stopping:
                raise QueueFullError(retry_after=5)
            if len(self._waiting) >= self.max_queue:
                batches_ahead = len(self._waiting) / self.max_batch + 1
                raise QueueFullError(retry_after=max(1, min(60, math.ceil(batches_ahead * self._seconds_per_batch))))
            self._waiting.append(job)
            self._cond.notify()
        return job

    async def generate(self, messages: list[Message], settings: GenerationSettings, deadline: float,
                       is_disconnected: Callable[[], Any] | None = None) -> Completion:
        loop = asyncio.get_running_loop()
        job = self.submit(Job("generate", loop, messages, settings, future=loop.create_future()))
        return await self._await(job, deadline, is_disconnected)

    async def call(self, function: Callable[[], Any], deadline: float) -> Any:
        loop = asyncio.get_running_loop()
        job = self.submit(Job("call", loop, function=function, future=loop.create_future()))
        return await self._await(job, deadline, None)

    def open_stream(self, messages: list[Message], settings: GenerationSettings) -> Job:
        """Queue a streaming job now (so a full queue is a 429 before any response starts); read it with
        `read_stream`."""
        loop = asyncio.get_running_loop()
        return self.submit(Job("stream", loop, messages, settings, pieces=asyncio.Queue()))

    async def read_stream(self, job: Job, deadline: float) -> AsyncIterator[str | Completion]:
        """Text pieces as they are decoded, then one `Completion` (the whole text and its token count)."""
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RequestTimeoutError("the request timed out")
                try:
                    item = await asyncio.wait_for(job.pieces.get(), remaining)
                except asyncio.TimeoutError:
                    raise RequestTimeoutError("the request timed out") from None
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            job.cancelled.set()  # client gone, deadline passed or finished: the worker may stop decoding

    async def _await(self, job: Job, deadline: float, is_disconnected) -> Any:
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RequestTimeoutError("the request timed out")
                done, _ = await asyncio.wait({job.future}, timeout=min(remaining, 0.5))
                if done:
                    return job.future.result()
                if is_disconnected is not None and await is_disconnected():
                    raise ClientDisconnectedError("the client disconnected")
        finally:
            job.cancelled.set()

    # ------------------------------------------------------------------ the worker thread
    def _next_batch(self) -> list[Job] | None:
        with self._cond:
            while not self._waiting and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            batch = [self._waiting.popleft()]
            settings = batch[0].settings
            # Seeded sampling runs alone: its result must not depend on which other requests share the batch.
            if batch[0].kind == "generate" and (settings.temperature == 0 or settings.seed is None):
                self._take_compatible(batch)
                # Clients that were just answered tend to send their next request within milliseconds; when the
                # last batch was shared, wait briefly for them so batches stay full instead of alternating.
                deadline = time.monotonic() + self.batch_window_s
                while len(batch) < self.max_batch and self._last_batch_size > 1 and not self._stopping:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                    self._take_compatible(batch)
            batch = [job for job in batch if not job.cancelled.is_set()]
            self._running = self._last_batch_size = len(batch)
            # Counted when the batch starts: a client that reads stats right after its answer sees its batch.
            self.batches += bool(batch)
            return batch

    def _take_compatible(self, batch: list[Job]) -> None:
        """Move waiting generations with the first job's settings into `batch` (caller holds the lock)."""
        for other in list(self._waiting):
            if len(batch) >= self.max_batch:
                return
            if other.kind == "generate" and other.settings == batch[0].settings:
                self._waiting.remove(other)
                batch.append(other)

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            if not batch:
                continue
            start = time.monotonic()
            try:
                if batch[0].kind == "generate":
                    self._run_generate(batch)
                elif batch[0].kind == "stream":
                    self._run_stream(batch[0])
                else:
                    self._run_call(batch[0])
            except BaseException as err:  # noqa: BLE001 - a worker must survive anything one request does
                logger.exception("model worker error")
                for job in batch:
                    job.deliver(error=err)
            elapsed = time.monotonic() - start
            with self._cond:
                self._running = 0
                self.completed += len(batch)
                self._seconds_per_batch = 0.8 * self._seconds_per_batch + 0.2 * elapsed

    def _run_generate(self, batch: list[Job]) -> None:
        settings = batch[0].settings
        try:
            texts = generate_batch(self.model, [job.messages for job in batch], settings, batch_size=len(batch),
                                   should_stop=lambda: all(job.cancelled.is_set() for job in batch))
        except Exception:
            if len(batch) == 1:
                raise
            for job in batch:  # one failing conversation must not fail the others: answer each alone
                try:
                    self._run_generate([job])
                except Exception as err:  # noqa: BLE001
                    job.deliver(error=err)
            return
        for job, text in zip(batch, texts):
            job.deliver(self._completion(text, settings))

    def _completion(self, text: str, settings: GenerationSettings) -> Completion:
        # `usage` counts the answer re-encoded: the generated tokens up to the stop string / eos, exact for ordinary
        # text, but blind to whitespace the inference API strips from plain answers; capped because a byte-level
        # model's broken UTF-8 re-encodes longer.
        tokens = len(self.model.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0
        tokens = min(tokens, settings.max_new_tokens)
        return Completion(text, tokens, "length" if tokens >= settings.max_new_tokens else "stop")

    def _run_stream(self, job: Job) -> None:
        pieces = []
        try:
            for piece in stream(self.model, job.messages, job.settings, should_stop=job.cancelled.is_set):
                if piece:
                    pieces.append(piece)
                    job.push(piece)
        except Exception as err:  # noqa: BLE001 - reported to the client as an error event
            logger.warning("stream failed: %s", err)
            job.push(err)
            return
        completion = self._completion("".join(pieces), job.settings)  # count before stripping whitespace
        job.push(Completion(completion.text.strip(), completion.completion_tokens, completion.finish_reason))
        job.push(_END)

    def _run_call(self, job: Job) -> None:
        try:
            job.deliver(job.function())
        except Exception as err:  # noqa: BLE001
            job.deliver(error=err)
