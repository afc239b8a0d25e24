"""Model control (the Open Inference Protocol's model repository extension), off unless
SEQSERVE_MODEL_CONTROL is set.

- index: every version under the repository, READY when served, UNAVAILABLE otherwise.
- load <name>: brings the served versions in line with the repository and the version policy
  (service/version_policy.py), as Triton's explicit mode does: each selected version folder not
  yet served is loaded, checked against its model.json and warmed up in a thread (the event loop
  keeps serving), and only then takes traffic; a served version whose folder is gone (or that the
  policy no longer selects) is unloaded. Unversioned requests go to the highest served version.
- unload <name>: every version of the model stops taking requests at once (404 for it), what was
  accepted is drained, then its threads and sessions are freed.

With SEQSERVE_WORKERS > 1 each worker process has its own models and a call reaches only one of
them, so load and unload are refused (409) rather than applied to one worker in N.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from service.errors import InvalidInput, ModelControlRefused, ModelLoadFailed, ModelNotFound
from service.memory import return_freed_memory
from service.onnx_session import ModelLoadError
from service.registry import ModelRegistry, ServedModel, load_model
from service.settings import Settings
from service.version_policy import served_cards, version_cards

log = logging.getLogger("seqserve.repository")
# after a version's unload, when its memory is given back to the system (service/memory.py): by
# then the last references to it (its caller's, its requests') are gone and its sessions freed
RETURN_MEMORY_AFTER_S = 1.0


def check_load_parameters(parameters: Any) -> None:
    """Triton's load may override a model's configuration or files ("config", "file:..."); here a
    version is its folder and model.json, so such a load is refused rather than half-applied."""
    if not isinstance(parameters, dict):
        raise InvalidInput("parameters must be a JSON object", field="parameters")
    overrides = sorted(k for k in parameters if k == "config" or k.startswith("file:"))
    if overrides:
        raise InvalidInput(f"load parameters {overrides} are not supported: a version is defined by its "
                           "folder and model.json", field="parameters")


def check_model_name(name: str) -> None:
    """A model is a folder of the repository: its name is one plain folder name. Anything else
    (a glob pattern, a path, "." or "..") could reach other models' folders or outside it."""
    if not name or name in (".", "..") or any(c in name for c in "/\\*?[]") or name != name.strip():
        raise InvalidInput(f"{name!r} is not a model name: one folder name, without / \\ * ? [ ]",
                           field="model")


def _keyed(cards: list[Path]) -> dict[tuple[str, str], Path]:
    return {(card.parent.parent.name, card.parent.name): card for card in cards}


class ModelControl:
    def __init__(self, registry: ModelRegistry, settings: Settings) -> None:
        self.registry = registry
        self.settings = settings
        self._lock = asyncio.Lock()  # one change at a time
        self._retiring: set[asyncio.Task[None]] = set()  # unloads finishing after their caller left
        # the last load of a version that failed, and why: the index's reason (as Triton's), until
        # it loads or is unloaded
        self._failed: dict[tuple[str, str], str] = {}

    def _on_disk(self, name: str | None = None) -> dict[tuple[str, str], Path]:
        """The version folders under the repository that the version policy serves."""
        return _keyed(served_cards(version_cards(self.settings.model_repository, name),
                                   self.settings.version_policy))

    def index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        served = {(m.name, m.version) for m in self.registry.all()}
        on_disk = version_cards(self.settings.model_repository)
        allowed = set(_keyed(served_cards(on_disk, self.settings.version_policy)))
        rows = []
        for name, version in sorted(set(_keyed(on_disk)) | served, key=lambda k: (k[0], int(k[1]))):
            if (name, version) in served:
                rows.append({"name": name, "version": version, "state": "READY"})
            elif not ready_only:
                reason = self._failed.get((name, version)) or \
                    ("unloaded" if (name, version) in allowed else "not selected by the version policy")
                rows.append({"name": name, "version": version, "state": "UNAVAILABLE", "reason": reason})
        return rows

    def _check_allowed(self) -> None:
        if not self.settings.model_control:
            raise ModelControlRefused("model control is off; start the server with SEQSERVE_MODEL_CONTROL=true",
                                      field="SEQSERVE_MODEL_CONTROL")
        if self.settings.workers > 1:
            raise ModelControlRefused(f"model control needs one server process; SEQSERVE_WORKERS is "
                                      f"{self.settings.workers} and each worker has its own models",
                                      field="SEQSERVE_WORKERS", limit=1)

    async def load(self, name: str) -> None:
        self._check_allowed()
        check_model_name(name)
        async with self._lock:
            on_disk = self._on_disk(name)
            served = {m.version: m for m in self.registry.versions(name)}
            if not on_disk and not served:
                raise ModelNotFound(f"no model {name} in the repository {self.settings.model_repository}",
                                    field="model")
            for (_, version), card in sorted(on_disk.items(), key=lambda kv: int(kv[0][1])):
                if version in served:
                    continue
                try:
                    model = await asyncio.to_thread(load_model, card, self.registry.providers, self.settings)
                except ModelLoadError as exc:
                    self._failed[(name, version)] = f"load failed: {exc}"
                    # an operator's action that did not take: in the log beside the loads that did
                    log.warning("loading %s/%s failed, the versions already served keep serving: %s",
                                name, version, exc)
                    raise ModelLoadFailed(str(exc), field="model") from exc
                self._failed.pop((name, version), None)
                model.engine.start(self.registry.give_way)
                self.registry.add(model)
                log.info("serving %s/%s", name, version)
            for version, model in served.items():
                if (name, version) not in on_disk:
                    await self._retire(model)

    async def unload(self, name: str) -> None:
        self._check_allowed()
        check_model_name(name)
        async with self._lock:
            models = self.registry.versions(name)
            for key in [key for key in self._failed if key[0] == name]:
                del self._failed[key]
            if not models:
                raise ModelNotFound(f"model {name} is not loaded", field="model")
            for model in models:
                await self._retire(model)

    async def _retire(self, model: ServedModel) -> None:
        """Out of the registry at once, then drained and closed, even if the caller stops waiting
        (a gRPC deadline, a shutdown): a version removed but never closed would keep its threads
        and sessions for the life of the process, out of the shutdown's reach."""
        self.registry.remove(model)
        task = asyncio.create_task(self._drain_and_close(model))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        task.add_done_callback(_return_freed_memory_soon)
        await asyncio.shield(task)

    async def _drain_and_close(self, model: ServedModel) -> None:
        # requests that looked the version up before this point may not have queued yet
        # (several texts are submitted as tasks): let them run up to their queue first
        await asyncio.sleep(0)
        drained = await model.engine.drain(self.settings.drain_timeout_s)
        await model.engine.close()
        log.info("unloaded %s/%s (%s)", model.name, model.version,
                 "drained" if drained else "drain timeout reached")

    async def finish(self) -> None:
        """At shutdown: the unloads whose callers left are finished too."""
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)


def _return_freed_memory_soon(_: object) -> None:
    loop = asyncio.get_running_loop()

    def in_a_thread() -> None:
        with contextlib.suppress(RuntimeError):  # the server is shutting down: its executor is gone
            loop.run_in_executor(None, return_freed_memory)

    loop.call_later(RETURN_MEMORY_AFTER_S, in_a_thread)
