"""A typed client for the worker's job API: a RunPod endpoint or the SDK's local API server.

Two targets speak the same job protocol with small differences, kept in `Endpoint`:

- RunPod (`https://api.runpod.ai/v2/<endpoint id>`): `POST /run`, `GET /status/<id>`,
  `POST /cancel/<id>`, each with `Authorization: Bearer <RUNPOD_API_KEY>`. While a job is
  IN_PROGRESS its `output` is the worker's latest `progress_update` object.
- The local API (`i2v-worker serve --rp_serve_api`, e.g. `http://127.0.0.1:8000`): `POST /run`
  only queues the job; it RUNS inside the first `POST /status/<id>`, which answers when the job is
  done (so that call has no read timeout), and there is no `/cancel` and no progress.

The client never reads the environment: the CLI passes the API key and URLs in. The HTTP client
and the clock are injectable for tests.
"""

from __future__ import annotations

import base64
import enum
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import httpx
from pydantic import BaseModel, ConfigDict

RUNPOD_API_BASE = "https://api.runpod.ai/v2"


class JobState(str, enum.Enum):
    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"

    @property
    def terminal(self) -> bool:
        return self in (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT)


class ProgressUpdate(BaseModel):
    """The worker's `progress_update` object, seen as `output` while a job is IN_PROGRESS.

    Shapes sent by the handler (worker/handler.py):
    - models: `{"stage": "models", "phase", "model", "done_bytes", "total_bytes", "percent", "message"?}`
    - engine: `{"stage": "sampling", "step", "total", "percent", "message"?}`
    Tolerant on purpose: every key is optional and unknown keys are kept, so an older or newer
    worker still gives a readable bar.
    """

    model_config = ConfigDict(extra="allow")

    stage: str = "working"
    percent: float | None = None  # 0..100
    progress: float | None = None  # 0..1 (accepted too)
    step: int | None = None
    total: int | None = None
    phase: str | None = None  # models: downloading, verifying, published, waiting, failed ...
    model: str | None = None
    done_bytes: int | None = None
    total_bytes: int | None = None
    message: str = ""

    def fraction(self) -> float | None:
        if self.percent is not None:
            value = float(self.percent) / 100
        elif self.progress is not None:
            value = float(self.progress)
        elif self.step is not None and self.total:
            value = self.step / self.total
        elif self.done_bytes is not None and self.total_bytes:
            value = self.done_bytes / self.total_bytes
        else:
            return None
        return min(max(value, 0.0), 1.0)

    def describe(self) -> str:
        """One short line, e.g. `models: downloading wan2.2_..gguf 3.1/27.0 GB` or `sampling 2/4`."""
        parts = [self.stage + ":" if (self.phase or self.model) else self.stage]
        if self.phase:
            parts.append(self.phase)
        if self.model:
            parts.append(self.model)
        if self.done_bytes is not None and self.total_bytes:
            parts.append(f"{self.done_bytes / 1e9:.1f}/{self.total_bytes / 1e9:.1f} GB")
        if self.step is not None and self.total:
            parts.append(f"{self.step}/{self.total}")
        if self.message:
            parts.append(f"— {self.message}")
        return " ".join(parts)


class VideoResult(BaseModel):
    """The worker's output for a COMPLETED job (see `i2v-worker schema`)."""

    model_config = ConfigDict(extra="allow")

    video: str | None = None  # base64 MP4 (delivery base64)
    video_url: str | None = None  # presigned URL (delivery url)
    mime_type: str = "video/mp4"
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    frames: int | None = None
    fps: int | float | None = None
    timings: dict[str, float | None] = {}
    warnings: list[str] | None = None


class JobStatus(BaseModel):
    """One `/run` or `/status` answer. `delayTime`/`executionTime` (ms) come from RunPod only."""

    model_config = ConfigDict(extra="allow")

    id: str
    status: JobState
    output: Any = None
    error: Any = None
    delayTime: int | None = None
    executionTime: int | None = None

    @property
    def progress(self) -> ProgressUpdate | None:
        if self.status is JobState.IN_PROGRESS and isinstance(self.output, Mapping):
            return ProgressUpdate.model_validate(dict(self.output))
        return None

    def error_message(self) -> str:
        """The worker's error as one readable line (the SDK may wrap it as a JSON string)."""
        err = self.error
        if isinstance(err, str):
            try:
                err = json.loads(err)
            except ValueError:
                return err
        if isinstance(err, Mapping):
            for key in ("error", "error_message", "message"):
                if err.get(key):
                    return str(err[key])
            return json.dumps(err)
        if err:
            return str(err)
        if isinstance(self.output, Mapping) and self.output.get("error"):
            return str(self.output["error"])
        return {
            JobState.TIMED_OUT: "the job passed the endpoint's execution timeout (raise it in the endpoint settings)",
            JobState.CANCELLED: "the job was cancelled",
        }.get(self.status, f"the job ended {self.status.value} without an error message")


class ClientError(Exception):
    """The endpoint could not be used (bad URL, key rejected, unexpected answer)."""


class WaitTimeout(ClientError):
    """`wait(timeout=...)` passed while the job was still queued or running."""


class JobFailed(Exception):
    """A job ended FAILED, TIMED_OUT or CANCELLED; `message` is the worker's error."""

    def __init__(self, status: JobStatus):
        self.status = status
        self.message = status.error_message()
        super().__init__(f"job {status.id} {status.status.value}: {self.message}")


@dataclass(frozen=True)
class Endpoint:
    base_url: str
    api_key: str | None = None
    local: bool = False  # the SDK's local API server (see module docstring)

    @classmethod
    def runpod(cls, endpoint_id: str, api_key: str, api_base: str = RUNPOD_API_BASE) -> "Endpoint":
        if not endpoint_id or "/" in endpoint_id:
            raise ClientError(f"endpoint id {endpoint_id!r} is not valid: use the id shown on the endpoint's page")
        if not api_key:
            raise ClientError("no RunPod API key: set RUNPOD_API_KEY or pass --api-key")
        return cls(base_url=f"{api_base.rstrip('/')}/{endpoint_id}", api_key=api_key)

    @classmethod
    def local_api(cls, url: str) -> "Endpoint":
        if not url.startswith(("http://", "https://")):
            raise ClientError(f"--url {url!r} must start with http:// or https://")
        return cls(base_url=url.rstrip("/"), local=True)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


def build_input(image: str, prompt: str, *, read_file: Callable[[Path], bytes] = Path.read_bytes, **params: Any) -> dict:
    """The job input for an image given as an http(s) URL (sent as `image_url`) or a local file
    (sent as `image_base64`); `params` with value None are left out (the worker's defaults apply)."""
    job: dict[str, Any] = {"prompt": prompt}
    if image.startswith(("http://", "https://")):
        job["image_url"] = image
    else:
        path = Path(image).expanduser()
        try:
            data = read_file(path)
        except OSError as exc:
            raise ClientError(f"--image {image!r}: cannot read the file ({exc.strerror or exc})") from exc
        job["image_base64"] = base64.b64encode(data).decode("ascii")
    job.update({k: v for k, v in params.items() if v is not None})
    return job


class I2VClient:
    """submit -> wait (with progress callbacks) -> save_video; cancel on demand."""

    def __init__(
        self,
        endpoint: Endpoint,
        http: httpx.Client | None = None,
        *,
        poll_interval: float = 1.0,
        max_poll_interval: float = 5.0,
        transient_retries: int = 5,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.endpoint = endpoint
        # The local server answers /status only when the job is done: no read timeout there.
        timeout = httpx.Timeout(30.0, read=None) if endpoint.local else httpx.Timeout(30.0)
        self.http = http or httpx.Client(timeout=timeout, follow_redirects=True)
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        self.transient_retries = transient_retries
        self.sleep = sleep
        self.clock = clock

    # -- protocol ---------------------------------------------------------------------------------
    def _request(self, method: str, path: str, *, idempotent: bool = True, **kw: Any) -> httpx.Response:
        """One API call with retries on transient faults. A non-idempotent call (POST /run) is only
        retried when the request cannot have reached the server (connect errors): a lost answer
        must not submit the job twice."""
        url = f"{self.endpoint.base_url}{path}"
        attempt = 0
        while True:
            try:
                resp = self.http.request(method, url, headers=self.endpoint.headers(), **kw)
            except httpx.TransportError as exc:
                attempt += 1
                unsent = isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))
                if attempt > self.transient_retries or not (idempotent or unsent):
                    raise ClientError(f"{method} {url} failed after {attempt} tries: {exc!r}") from exc
                self._backoff(attempt)
                continue
            # 429/503: the request was refused, safe to resend; 502/504 only for idempotent calls.
            retry_codes = (429, 502, 503, 504) if idempotent else (429, 503)
            if resp.status_code in retry_codes and attempt < self.transient_retries:
                attempt += 1
                self._backoff(attempt)
                continue
            if resp.status_code in (401, 403):
                raise ClientError(f"{method} {url}: {resp.status_code} — the API key was rejected (check RUNPOD_API_KEY)")
            if resp.status_code == 404:
                raise ClientError(f"{method} {url}: 404 — check the endpoint id or the --url")
            if resp.status_code >= 400:
                raise ClientError(f"{method} {url}: HTTP {resp.status_code}: {resp.text[:500]}")
            return resp

    def _backoff(self, attempt: int) -> None:
        self.sleep(min(self.max_poll_interval, min(self.poll_interval, 0.5) * 2**attempt))

    def _status_of(self, resp: httpx.Response) -> JobStatus:
        try:
            return JobStatus.model_validate(resp.json())
        except ValueError as exc:
            raise ClientError(f"{resp.request.url}: unexpected answer {resp.text[:300]!r}") from exc

    def submit(
        self, job_input: Mapping[str, Any], *, webhook: str | None = None, execution_timeout_s: float | None = None
    ) -> str:
        """POST /run; returns the job id. `execution_timeout_s` raises RunPod's per-request execution
        timeout (`policy.executionTimeout`, e.g. for a first job that downloads the models); the
        local API has no policies, so it is not sent there."""
        body: dict[str, Any] = {"input": dict(job_input)}
        if webhook:
            body["webhook"] = webhook
        if execution_timeout_s is not None and not self.endpoint.local:
            body["policy"] = {"executionTimeout": int(execution_timeout_s * 1000)}
        return self._status_of(self._request("POST", "/run", idempotent=False, json=body)).id

    def status(self, job_id: str) -> JobStatus:
        # The local server only routes POST /status; RunPod documents GET.
        return self._status_of(self._request("POST" if self.endpoint.local else "GET", f"/status/{job_id}"))

    def cancel(self, job_id: str) -> bool:
        """Ask the endpoint to cancel the job; False where the target has no /cancel (local API)."""
        try:
            self._request("POST", f"/cancel/{job_id}")
        except ClientError:
            return False
        return True

    def wait(
        self,
        job_id: str,
        on_update: Callable[[JobStatus], None] | None = None,
        timeout: float | None = None,
    ) -> JobStatus:
        """Poll /status until the job ends. Returns the COMPLETED status; raises JobFailed for
        FAILED, TIMED_OUT and CANCELLED, and WaitTimeout when `timeout` passes (the job keeps
        running: cancel it if it is not wanted)."""
        start = self.clock()
        interval = self.poll_interval
        while True:
            st = self.status(job_id)
            if on_update:
                on_update(st)
            if st.status is JobState.COMPLETED:
                return st
            if st.status.terminal:
                raise JobFailed(st)
            if timeout is not None and self.clock() - start > timeout:
                raise WaitTimeout(f"job {job_id} still {st.status.value} after {timeout:.0f} s")
            self.sleep(interval)
            # Slow down gently while queued (a cold start can take minutes); poll fast once running.
            interval = self.poll_interval if st.status is JobState.IN_PROGRESS else min(interval * 1.5, self.max_poll_interval)

    def save_video(self, status: JobStatus, dest: Path) -> VideoResult:
        """Write the COMPLETED job's MP4 to `dest` (decoded from `video` or downloaded from `video_url`)."""
        if not isinstance(status.output, Mapping):
            raise ClientError(
                f"job {status.id} COMPLETED without an output: the result was probably too large for RunPod "
                "(configure a bucket on the worker: BUCKET_ENDPOINT_URL and credentials)"
            )
        result = VideoResult.model_validate(dict(status.output))
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.part")
        if result.video:
            data = result.video.split(",", 1)[1] if result.video.startswith("data:") else result.video
            tmp.write_bytes(base64.b64decode(data))
        elif result.video_url:
            # A presigned bucket URL: no API key is sent there.
            with self.http.stream("GET", result.video_url, headers={}) as resp:
                if resp.status_code >= 400:
                    raise ClientError(f"downloading the video from {result.video_url[:80]}...: HTTP {resp.status_code}")
                with tmp.open("wb") as f:
                    for chunk in resp.iter_bytes(1 << 20):
                        f.write(chunk)
        else:
            raise ClientError(f"job {status.id} output has neither `video` nor `video_url`: {sorted(status.output)}")
        tmp.replace(dest)
        return result

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "I2VClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
