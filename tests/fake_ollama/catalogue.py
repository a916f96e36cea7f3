"""The models an emulator holds: names, capabilities and architectures as Ollama reports them.

Capabilities use Ollama's names (``types/model/capability.go``). The architecture is the GGUF
``general.architecture``; Ollama's scheduler runs some architectures one generation at a time
(``server/sched.go``, ``load``), and embedding-only models likewise.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

COMPLETION, TOOLS, THINKING, VISION, EMBEDDING, INSERT = (
    "completion",
    "tools",
    "thinking",
    "vision",
    "embedding",
    "insert",
)
CAPABILITIES = (COMPLETION, TOOLS, INSERT, VISION, EMBEDDING, THINKING, "image", "audio")

# server/sched.go: "Some architectures are not safe with num_parallel > 1."
ONE_AT_A_TIME_ARCHITECTURES = (
    "mllama",
    "qwen3vl",
    "qwen3vlmoe",
    "qwen35",
    "qwen35moe",
    "qwen3next",
    "lfm2",
    "lfm2moe",
    "nemotron_h",
    "nemotron_h_moe",
    "nemotron_h_omni",
)


@dataclass
class ModelInfo:
    """One local model. ``family`` is what ``details.family`` says; ``architecture`` (default: the
    family) is ``model_info["general.architecture"]``."""

    name: str
    family: str = "llama"
    parameter_size: str = "8B"
    size: int = 4_920_753_328
    capabilities: tuple[str, ...] = (COMPLETION,)
    quantization_level: str = "Q4_K_M"
    context_length: int = 131_072
    embedding_length: int = 4096
    architecture: str = ""
    parameter_count: int = 8_030_261_248
    modified_at: str = "2025-01-30T10:00:00.000000000Z"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.name = normalize_name(self.name)
        self.architecture = self.architecture or self.family
        self.capabilities = tuple(self.capabilities)
        unknown = [c for c in self.capabilities if c not in CAPABILITIES]
        if unknown:
            raise ValueError(f"unknown capabilities {unknown} (Ollama's are {CAPABILITIES})")

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.name.encode()).hexdigest()

    @property
    def full_name(self) -> str:
        """What Ollama's errors call the model: ``registry.ollama.ai/library/llama3.2:1b``."""
        parts = self.name.split("/")
        if len(parts) == 1:
            return f"registry.ollama.ai/library/{self.name}"
        if len(parts) == 2:
            return f"registry.ollama.ai/{self.name}"
        return self.name

    def has(self, capability: str) -> bool:
        return capability in self.capabilities

    @property
    def one_at_a_time(self) -> bool:
        """Ollama loads it with num_parallel 1 whatever OLLAMA_NUM_PARALLEL says."""
        return not self.has(COMPLETION) or self.family in ONE_AT_A_TIME_ARCHITECTURES

    def details(self, *, lengths: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "parent_model": "",
            "format": "gguf",
            "family": self.family,
            "families": [self.family],
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization_level,
        }
        if lengths:  # /api/tags fills these from the model's config (server/model_list_cache.go)
            out["context_length"] = self.context_length
            out["embedding_length"] = self.embedding_length
        return out

    def model_info(self) -> dict[str, Any]:
        arch = self.architecture
        info: dict[str, Any] = {
            "general.architecture": arch,
            "general.basename": self.name.split(":")[0].split("/")[-1],
            "general.file_type": 15 if self.quantization_level == "Q4_K_M" else 1,
            "general.parameter_count": self.parameter_count,
            "general.quantization_version": 2,
            f"{arch}.block_count": 16,
            f"{arch}.context_length": self.context_length,
            f"{arch}.embedding_length": self.embedding_length,
        }
        if self.has(EMBEDDING):
            info[f"{arch}.pooling_type"] = 1
        if self.has(VISION) and arch != "mllama":
            info[f"{arch}.vision.block_count"] = 27
        info.update(self.extra)
        return info


def normalize_name(name: str) -> str:
    """``nomic-embed-text`` is ``nomic-embed-text:latest``; ``library/x:1b`` is ``x:1b``."""
    name = name.strip()
    for prefix in ("registry.ollama.ai/library/", "registry.ollama.ai/", "library/"):
        if name.lower().startswith(prefix):
            name = name[len(prefix) :]
            break
    if ":" not in name.split("/")[-1]:
        name += ":latest"
    return name


def _m(name: str, family: str, params: str, size: int, caps: Iterable[str], **kw: Any) -> ModelInfo:
    return ModelInfo(name, family, params, size, tuple(caps), **kw)


CATALOGUE: dict[str, ModelInfo] = {
    m.name: m
    for m in (
        _m("llama3.2:1b", "llama", "1.2B", 1_321_098_329, [COMPLETION, TOOLS], quantization_level="Q8_0",
           embedding_length=2048, parameter_count=1_235_814_432),
        # deepseek-r1:8b (the 0528 distill) is a qwen3 model that thinks.
        _m("deepseek-r1:8b", "qwen3", "8.2B", 5_225_376_047, [COMPLETION, THINKING],
           parameter_count=8_190_735_360),
        _m("qwen2.5:0.5b", "qwen2", "494.03M", 397_821_319, [COMPLETION, TOOLS], context_length=32_768,
           embedding_length=896, parameter_count=494_032_768),
        _m("qwen3:0.6b", "qwen3", "751.63M", 522_653_767, [COMPLETION, TOOLS, THINKING],
           context_length=40_960, embedding_length=1024, parameter_count=751_632_384),
        _m("gemma3:4b", "gemma3", "4.3B", 3_338_801_804, [COMPLETION, VISION], embedding_length=2560,
           parameter_count=4_300_079_472),
        # mllama: Ollama runs it one generation at a time.
        _m("llama3.2-vision:11b", "mllama", "10.7B", 7_816_589_186, [COMPLETION, VISION],
           parameter_count=10_670_220_835),
        _m("nomic-embed-text:latest", "nomic-bert", "137M", 274_302_450, [EMBEDDING],
           quantization_level="F16", context_length=2048, embedding_length=768, parameter_count=136_727_040),
        _m("qwen2.5-coder:1.5b", "qwen2", "1.5B", 986_062_089, [COMPLETION, TOOLS, INSERT],
           context_length=32_768, embedding_length=1536, parameter_count=1_543_714_304),
    )
}  # fmt: skip

DEFAULT_MODELS = ("llama3.2:1b", "deepseek-r1:8b", "qwen2.5:0.5b")
ALL_MODELS = tuple(CATALOGUE)


def build_models(models: Iterable[str | ModelInfo | dict[str, Any]] | None) -> dict[str, ModelInfo]:
    """``models=`` for an emulator: catalogue names, ``ModelInfo`` objects, or dicts of its fields
    (``{"name": "mine:1b", "capabilities": ["completion", "tools"], "family": "qwen3"}``)."""
    out: dict[str, ModelInfo] = {}
    for item in DEFAULT_MODELS if models is None else models:
        if isinstance(item, ModelInfo):
            info = item
        elif isinstance(item, dict):
            info = ModelInfo(**item)
        else:
            name = normalize_name(item)
            known = CATALOGUE.get(name)
            info = dataclasses.replace(known, extra=dict(known.extra)) if known else ModelInfo(name)
        out[info.name] = info
    return out
