"""The model repository: finds, loads, checks, warms up and serves every model under it.

Layout: <repository>/<name>/<version>/model.json plus the files it names. All versions are
loaded; requests without a version get the highest one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from service import metrics
from service.affinity import thread_cpus
from service.batching import BatchPolicy
from service.decode_scheduler import DecodeScheduler
from service.engines import RequestBatchedTranslator, SentimentEngine, TranslationEngine
from service.errors import InvalidInput, ModelNotFound
from service.loop_budget import GiveWay
from service.model_card import ModelCard, ModelCardError, load_model_card
from service.onnx_session import (
    CPU,
    CUDA,
    ModelLoadError,
    Precision,
    Provider,
    ProviderUnavailable,
    StaleGraphError,
    choose_providers,
    cuda_options,
    graph_path,
    log_placement,
    node_providers,
    provider_name,
    quiet_runtime_log,
)
from service.runners import Runner, SentimentRunner, TranslationRunner, load_runner
from service.settings import Settings
from service.version_policy import readable, served_cards, unreadable_folder, unserved, version_cards

log = logging.getLogger("seqserve.registry")


# how long a model may stay unhealthy (not ready) before liveness fails and an orchestrator restarts it
LIVENESS_GRACE_S = 60.0
# A classifier's batch on the CPU costs more than its model run, which warm-up measures: each
# batch's answers are handed over with a wake-up of the event loop, which sends them together.
# With the model run alone (~12 padded tokens for the INT8 classifier), windows of ~42 texts at 64
# clients were cut into batches of ~4; counting a batch as 4x its run served 1.069-1.084x the
# sentences at 64 clients and 0.996x at 16, the event loop's CPU a request 0.91x (stop 43). Since
# then the hand-over got cheaper (stops 44-50) and the model threads got a core each (stop 51,
# service/affinity.py): 2x against 4x served 1.02-1.07x the sentences at 64 clients (batches of
# 6.5-7 against 8.1-9.1 texts, the model's CPU a sentence 0.97x: less padding) and 1.08x at 16;
# 1x against 2x 0.975x (batches of 4.9, the event loop's CPU 1.07x) (docs/benchmarks.md, stop 51).
CPU_BATCH_COST_SCALE = 2.0


@dataclass
class ServedModel:
    card: ModelCard
    runner: SentimentRunner | TranslationRunner
    engine: SentimentEngine | TranslationEngine
    path: Path

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def version(self) -> str:
        return self.card.version

    @property
    def instances(self) -> int:
        """Batches it runs at once (``instances_for``): its engine's worker threads or decode lanes."""
        return self.engine.policy.instances

    @property
    def provider(self) -> str:
        return self.runner.providers[0]

    @property
    def precision(self) -> str:
        return self.runner.precision

    @property
    def metrics(self) -> dict[str, float]:
        """The card's measured quality of the precision being served (empty if never measured)."""
        if self.runner.precision == "fp32":
            return self.card.metrics
        derived = (self.card.precisions or {}).get(self.runner.precision)
        return derived.metrics if derived else {}


def instances_for(settings: Settings) -> int:
    """Batches one model runs at once: SEQSERVE_INSTANCES where set, else two.

    A translator spends most of its CPU in its decode lanes (one lane served 0.60x of two). On
    the GPU two overlap one batch's host work with the other's device run (docs/gpu.md). On the
    CPU a classifier's second worker thread runs, at a lower OS priority, the batches that the
    first leaves it from its windows (``BatchPolicy.helpers_share_windows``): with the INT8 model
    on a 2-core AVX-512 VNNI machine, where one worker alone had served 1.00-1.20x of two forming
    windows each, it serves 1.04-1.09x of one at 64 clients, the same at 16 and 1. Measured with
    `python -m loadtests.cpu_share --versus instances=1` (docs/benchmarks.md, stops 22, 23, 36
    and 39)."""
    return settings.instances if settings.instances is not None else 2


def _policy(settings: Settings, instances: int) -> BatchPolicy:
    return BatchPolicy(max_batch_size=settings.max_batch_size, max_batch_tokens=settings.max_batch_tokens,
                       max_queue_delay_s=settings.max_queue_delay_ms / 1000.0,
                       max_queue_size=settings.max_queue_size, instances=instances,
                       thread_cpus=thread_cpus(settings.pin_model_threads, instances, settings.workers))


def _translation_engine(name: str, runner: TranslationRunner, settings: Settings, instances: int) -> TranslationEngine:
    if settings.translation_scheduler == "iteration":
        return DecodeScheduler(name, runner, _policy(settings, instances), join_every=settings.decode_join_every,
                               stream_interval_s=settings.stream_interval_ms / 1000)
    return RequestBatchedTranslator(name, runner, _policy(settings, instances))


def choose_precision(requested: str, model_dir: Path, card: ModelCard, provider: str) -> Precision:
    """auto: int8 on the CPU provider where the derived graphs exist and the card records their
    parity and lets auto choose them, fp32 otherwise (a warning on the CPU where the derived
    graphs were expected); int8 asked for and missing: refuse."""
    if requested == "fp32" or (requested == "auto" and provider != "CPUExecutionProvider"):
        return "fp32"
    derived = (card.precisions or {}).get("int8")
    if requested == "auto" and derived is None:  # nothing measured: no parity, no quality figures
        log.info("%s/%s: fp32 under SEQSERVE_PRECISION=auto (its card records no INT8 parity; "
                 "`python -m export.quantize --model-dir %s --write` measures and records it)",
                 card.name, card.version, model_dir)
        return "fp32"
    if requested == "auto" and derived is not None and not derived.auto:
        log.info("%s/%s: fp32 under SEQSERVE_PRECISION=auto (its card keeps INT8 opt-in)", card.name, card.version)
        return "fp32"
    missing = [path for spec in card.graphs.values() if not (path := graph_path(model_dir, spec, "int8")).is_file()]
    if not missing:
        if provider != "CPUExecutionProvider":
            log.warning("%s: INT8 graphs on %s: their quantized operators are CPU kernels", card.name, provider)
        return "int8"
    hint = f"derive them with `make int8` or `python -m export.quantize --model-dir {model_dir}`"
    if requested == "int8":
        raise ModelLoadError(f"{missing[0]}: INT8 graph not found (SEQSERVE_PRECISION=int8); {hint}")
    log.warning("%s/%s: no INT8 graph (%s missing); serving fp32 on the CPU, %s", card.name, card.version,
                missing[0], hint)
    return "fp32"


def _load_runner(model_dir: Path, providers: list[Provider], settings: Settings) -> Runner:
    """The model in the precision the settings ask for, or the refusal naming the file."""
    try:
        card = load_model_card(model_dir / "model.json")
        precision = choose_precision(settings.precision, model_dir, card, provider_name(providers[0]))
        try:
            return load_runner(model_dir, providers, settings.ort_intra_op_threads, precision, card)
        except StaleGraphError as exc:
            if settings.precision == "int8":
                raise
            log.warning("%s; serving fp32", exc)
            return load_runner(model_dir, providers, settings.ort_intra_op_threads, "fp32", card)
    except ModelCardError as exc:
        raise ModelLoadError(str(exc)) from exc
    except (OSError, RuntimeError, ValueError) as exc:
        if isinstance(exc, ModelLoadError):
            raise
        raise ModelLoadError(f"{model_dir}: cannot load model: {exc}") from exc


def load_model(card_file: Path, providers: list[Provider], settings: Settings) -> ServedModel:
    """Load, check and warm up one version, with its engine (not started); raise ModelLoadError
    naming the file on any problem. Blocking: at start-up, or in a thread when loaded later."""
    started = time.monotonic()
    runner = _load_runner(card_file.parent, providers, settings)
    card = runner.card
    if (card.name, card.version) != (card_file.parent.parent.name, card_file.parent.name):
        raise ModelLoadError(f"{card_file}: name/version {card.name}/{card.version} do not match "
                             f"its folder {card_file.parent.parent.name}/{card_file.parent.name}")
    if provider_name(providers[0]) == CUDA and runner.providers[0] != CUDA:
        for session in runner.sessions().values():
            # ends the profiler that the CUDA request turned on, its file deleted: on the CPU it
            # would only report that every node ran on the CPU
            node_providers(session)
        if settings.providers == "cuda":
            raise ProviderUnavailable(
                f"{card_file.parent}: SEQSERVE_PROVIDERS=cuda, but ONNX Runtime could not start its CUDA provider "
                "for this model (no GPU, driver, or CUDA/cuDNN libraries it can load: see ONNX Runtime's message "
                "above); refusing to serve on the CPU")
        log.warning("%s: the CUDA provider could not start (no GPU, driver or matching CUDA libraries "
                    "visible to this process); serving on the CPU", card.name)
    if settings.warmup:
        runner.warmup()
    for graph, session in runner.sessions().items():  # on CUDA: what the warm-up ran on the CPU
        log_placement(card.name, graph, session)
    engine: SentimentEngine | TranslationEngine
    instances = instances_for(settings)
    if isinstance(runner, SentimentRunner):
        policy = _policy(settings, instances)
        on_cpu = runner.providers[0] == CPU
        if on_cpu:  # measured there (instances_for); the GPU's workers stay as they were
            policy.helpers_share_windows, policy.helper_nice = True, settings.instance_nice
        if settings.warmup:
            scale = CPU_BATCH_COST_SCALE if on_cpu else 1.0
            policy.batch_overhead_tokens = scale * runner.measure_batch_overhead()
            log.info("%s: one batch costs as much as %.0f padded tokens", card.name,
                     policy.batch_overhead_tokens)
        engine = SentimentEngine(card.name, runner, policy)
    else:
        engine = _translation_engine(card.name, runner, settings, instances)
    cpus = engine.policy.thread_cpus
    log.info("loaded %s/%s (%s) on %s, %s, %d instance(s)%s, in %.2fs", card.name, card.version, card.task,
             runner.providers[0], runner.precision, instances,
             f" (threads on CPUs {', '.join(map(str, cpus))})" if cpus else "", time.monotonic() - started)
    return ServedModel(card, runner, engine, card_file.parent)


def _count_as_served(model: ServedModel, served: bool) -> None:
    metrics.MODEL_INFO.labels(model.name, model.version, model.card.task, provider_name(model.provider),
                              model.precision).set(1 if served else 0)
    for outcome in ("success", "failure"):  # at 0 from the start: an alert's increase() sees the first
        metrics.INFERENCE_REQUESTS.labels(model.name, model.version, outcome)


def _v1_route(model: ServedModel) -> str:
    """The v1 route (and language pair) ``model`` could answer."""
    if model.card.task != "translation":
        return "/v1/sentiment"
    langs = model.card.languages or {}
    return f"/v1/translate {langs.get('source')}->{langs.get('target')}"


class ModelRegistry:
    def __init__(self, models: list[ServedModel], providers: list[Provider]) -> None:
        self.providers = providers
        # what the models' threads call to give way to the event loop (service/loop_budget.py)
        self.give_way: GiveWay | None = None
        self._by_key = {(m.name, m.version): m for m in models}
        for model in models:
            _count_as_served(model, True)
        self._latest: dict[str, ServedModel] = {}
        self.generation = 0  # counts the changes below: what is built from the served set rebuilds
        self._index_latest()

    def _index_latest(self) -> None:
        self._latest = {}
        for m in sorted(self._by_key.values(), key=lambda m: (m.name, int(m.version))):
            self._latest[m.name] = m  # by name, so that the v1 routes' choice below is the first by name
        self._say_v1_choices()

    def _say_v1_choices(self) -> None:
        """Where several models could answer one v1 route (two classifiers; two translators of
        one language pair), say which does: the first by name, whatever the order of loading."""
        rivals: dict[str, list[str]] = {}
        for model in self._latest.values():
            rivals.setdefault(_v1_route(model), []).append(model.name)
        for route, names in rivals.items():
            if len(names) > 1:
                log.warning("%s answers with model %s, the first by name of %s; the others through v2 "
                            "(/v2/models/<name>/infer)", route, names[0], ", ".join(names))

    # --- changes (model control, service/repository.py) -----------------------------------
    def add(self, model: ServedModel) -> None:
        """Serve a loaded, started version; unversioned requests go to it if it is the highest."""
        self._by_key[(model.name, model.version)] = model
        _count_as_served(model, True)
        self.generation += 1
        self._index_latest()

    def remove(self, model: ServedModel) -> None:
        """Stop routing requests to a version (404 for it; unversioned ones go to the next highest)."""
        self._by_key.pop((model.name, model.version), None)
        _count_as_served(model, False)
        metrics.forget_version_state(model.name, model.version)
        self.generation += 1
        self._index_latest()

    @classmethod
    def load(cls, settings: Settings) -> ModelRegistry:
        """Load every model; raise ModelLoadError naming the file on any problem."""
        repo = settings.model_repository
        if not repo.is_dir():
            raise ModelLoadError(f"{repo}: no such folder (SEQSERVE_MODEL_REPOSITORY, a folder of "
                                 "<name>/<version>/model.json)")
        for line in unserved(repo, settings.version_policy):
            log.warning("%s", line)
        cards = served_cards(version_cards(repo), settings.version_policy)
        if not cards:
            unreadable = "" if readable(repo) else f"; {unreadable_folder()}"
            raise ModelLoadError(f"{repo}: no models found (expected <name>/<version>/model.json){unreadable}")
        quiet_runtime_log(settings.log_level)
        providers = choose_providers(settings.providers, cuda_options(settings))
        log.info("ONNX Runtime %s providers: %s", ort.__version__,
                 ", ".join(p if isinstance(p, str) else f"{p[0]} {p[1]}" for p in providers))
        return cls([load_model(card_file, providers, settings) for card_file in cards], providers)

    # --- lookup -----------------------------------------------------------------------------
    def all(self) -> list[ServedModel]:
        return list(self._by_key.values())

    def latest(self) -> list[ServedModel]:
        """Each model's highest served version (what unversioned requests reach), by name."""
        return [self._latest[name] for name in sorted(self._latest)]

    def versions(self, name: str) -> list[ServedModel]:
        """The served versions of one model, lowest first (none for an unknown name)."""
        return sorted((m for m in self._by_key.values() if m.name == name), key=lambda m: int(m.version))

    def get(self, name: str, version: str | None = None) -> ServedModel:
        model = self._latest.get(name) if version is None else self._by_key.get((name, version))
        if model is None:
            known = ", ".join(f"{n}/{v}" for n, v in sorted(self._by_key))
            wanted = name if version is None else f"{name}/{version}"
            raise ModelNotFound(f"unknown model {wanted}; served: {known}", field="model")
        return model

    def for_task(self, task: str) -> ServedModel:
        """The model a v1 route of ``task`` uses: the first by name (see ``_say_v1_choices``)."""
        for model in self._latest.values():
            if model.card.task == task:
                return model
        raise ModelNotFound(f"no {task} model is served")

    def translator(self, source: str, target: str) -> ServedModel:
        pairs = []
        for model in self._latest.values():
            langs = model.card.languages or {}
            if model.card.task == "translation":
                if (langs.get("source"), langs.get("target")) == (source, target):
                    return model
                pairs.append(f"{langs.get('source')}->{langs.get('target')}")
        if not pairs:  # no translator at all (none in the repository, or unloaded): nothing the client can change
            raise ModelNotFound("no translation model is served", field="model")
        raise InvalidInput(f"unknown language pair {source}->{target}; available: {', '.join(sorted(pairs))}",
                           field="source/target", limit=sorted(pairs))

    def alive(self, grace_s: float = LIVENESS_GRACE_S) -> bool:
        """Liveness: no model has been unhealthy (not ready: its threads' replacements failing) for
        ``grace_s`` or more. A model that stays broken is not-ready for good, so it gets no work
        that could show it mended: the process needs restarting, which liveness asks for."""
        return all(model.engine.unhealthy_s < grace_s for model in self.all())

    def healthy(self) -> bool:
        """False while a model's threads keep failing (see AnsweredFromThreads)."""
        return all(model.engine.healthy for model in self.all())

    # --- lifecycle --------------------------------------------------------------------------
    def start(self, give_way: GiveWay | None = None) -> None:
        """Start every model's threads; ``give_way`` also goes to models loaded later."""
        self.give_way = give_way
        for model in self.all():
            model.engine.start(give_way)

    async def drain(self, timeout_s: float) -> bool:
        """Every model's accepted work finished within ``timeout_s`` (the models drain together:
        one after another, each with the whole timeout, took up to N times it)."""
        return all(await asyncio.gather(*(model.engine.drain(timeout_s) for model in self.all())))

    async def close(self) -> None:
        for model in self.all():
            await model.engine.close()
