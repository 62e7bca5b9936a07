"""A thin async client for ComfyUI's HTTP and websocket API (aiohttp).

Only transport lives here: every method returns parsed JSON or raises `ComfyUIUnreachable`
(connection refused/reset: the engine decides whether ComfyUI crashed) or `ComfyUIHTTPError`
(an unexpected status). `POST /prompt`'s 400 is returned to the caller as `PromptRejected`.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp


class ComfyUIUnreachable(Exception):
    """No HTTP answer (connection refused, reset, or the server went away mid-request)."""


class ComfyUIHTTPError(Exception):
    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"ComfyUI {method} {path} answered HTTP {status}: {body[:300]}")
        self.status = status
        self.body = body


class PromptRejected(Exception):
    """`POST /prompt` answered 400; `body` holds `error` and `node_errors`."""

    def __init__(self, body: Any) -> None:
        super().__init__("ComfyUI rejected the prompt")
        self.body = body


@dataclass(frozen=True)
class WsMessage:
    type: str
    data: dict[str, Any]


_NETWORK_ERRORS = (aiohttp.ClientConnectionError, ConnectionError, asyncio.TimeoutError)


class ComfyUIClient:
    """`base_url` like http://127.0.0.1:8188. The session is owned by the caller."""

    def __init__(self, base_url: str, session: aiohttp.ClientSession, *, request_timeout_s: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=request_timeout_s, sock_connect=5)

    async def _json(self, method: str, path: str, *, ok: tuple[int, ...] = (200,), **kwargs: Any) -> Any:
        try:
            async with self._session.request(method, self.base_url + path, timeout=self._timeout, **kwargs) as resp:
                text = await resp.text()
                if resp.status not in ok:
                    raise ComfyUIHTTPError(method, path, resp.status, text)
                return json.loads(text) if text.strip() else None
        except _NETWORK_ERRORS as exc:
            raise ComfyUIUnreachable(f"{method} {path}: {exc!r}") from exc

    # --- information -----------------------------------------------------------------------------
    async def system_stats(self) -> dict[str, Any]:
        return await self._json("GET", "/system_stats")

    async def ping(self) -> bool:
        """True when /system_stats answers (readiness probe)."""
        try:
            await self._json("GET", "/system_stats")
            return True
        except (ComfyUIUnreachable, ComfyUIHTTPError):
            return False

    async def object_info(self, class_type: str | None = None) -> dict[str, Any]:
        path = "/object_info" if class_type is None else f"/object_info/{class_type}"
        return await self._json("GET", path) or {}

    async def history(self, prompt_id: str) -> dict[str, Any] | None:
        """The history entry of `prompt_id`, or None while it is queued or running."""
        data = await self._json("GET", f"/history/{prompt_id}") or {}
        return data.get(prompt_id)

    async def queue(self) -> dict[str, Any]:
        return await self._json("GET", "/queue")

    # --- actions ---------------------------------------------------------------------------------
    async def upload_image(self, name: str, data: bytes, *, subfolder: str = "") -> dict[str, Any]:
        form = aiohttp.FormData()
        form.add_field("image", data, filename=name, content_type="image/png")
        form.add_field("overwrite", "true")
        form.add_field("type", "input")
        if subfolder:
            form.add_field("subfolder", subfolder)
        return await self._json("POST", "/upload/image", data=form)

    async def queue_prompt(self, graph: dict[str, Any], *, client_id: str, prompt_id: str) -> dict[str, Any]:
        payload = {"prompt": graph, "client_id": client_id, "prompt_id": prompt_id}
        try:
            return await self._json("POST", "/prompt", json=payload)
        except ComfyUIHTTPError as exc:
            if exc.status == 400:
                try:
                    body = json.loads(exc.body)
                except ValueError:
                    body = exc.body
                raise PromptRejected(body) from None
            raise

    async def interrupt(self, prompt_id: str) -> None:
        await self._json("POST", "/interrupt", json={"prompt_id": prompt_id})

    async def delete_queued(self, prompt_ids: list[str]) -> None:
        await self._json("POST", "/queue", json={"delete": prompt_ids})

    async def download(self, *, filename: str, subfolder: str, type_: str, dest: Path, chunk: int = 1 << 20) -> int:
        """Stream `/view` into `dest` (written to a temp name, then renamed). Returns the size."""
        params = {"filename": filename, "subfolder": subfolder, "type": type_}
        tmp = dest.with_name(f".{dest.name}.part")
        size = 0
        try:
            async with self._session.get(self.base_url + "/view", params=params, timeout=self._timeout) as resp:
                if resp.status != 200:
                    raise ComfyUIHTTPError("GET", "/view", resp.status, await resp.text())
                with open(tmp, "wb") as fh:
                    async for block in resp.content.iter_chunked(chunk):
                        fh.write(block)
                        size += len(block)
            tmp.replace(dest)
        except _NETWORK_ERRORS as exc:
            raise ComfyUIUnreachable(f"GET /view: {exc!r}") from exc
        finally:
            tmp.unlink(missing_ok=True)
        return size

    # --- websocket -------------------------------------------------------------------------------
    async def connect_ws(self, client_id: str) -> aiohttp.ClientWebSocketResponse:
        url = self.base_url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
        try:
            return await self._session.ws_connect(
                f"{url}/ws", params={"clientId": client_id}, max_msg_size=0,
                timeout=aiohttp.ClientWSTimeout(ws_close=5), autoping=True,
            )
        except (aiohttp.WSServerHandshakeError, *_NETWORK_ERRORS) as exc:
            raise ComfyUIUnreachable(f"websocket: {exc!r}") from exc


async def iter_messages(ws: aiohttp.ClientWebSocketResponse) -> AsyncIterator[WsMessage]:
    """JSON messages until the socket closes; binary frames (previews) are skipped."""
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.TEXT:
            try:
                obj = json.loads(msg.data)
            except ValueError:
                continue
            if isinstance(obj, dict) and isinstance(obj.get("type"), str):
                data = obj.get("data")
                yield WsMessage(obj["type"], data if isinstance(data, dict) else {})
        elif msg.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
            return
