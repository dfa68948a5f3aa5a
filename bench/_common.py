"""What the benchmarks share: the engine-vs-TRL workload, machine facts, timing and result files.

Imported by the bench scripts and by their worker processes (which may run in bench/.venv-trl).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = Path(os.environ.get("PPO_TUNER_BENCH_RESULTS") or BENCH / "results")  # tests write elsewhere
TRL_PYTHON = BENCH / ".venv-trl" / "bin" / "python"
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"  # README "Install": vLLM rollouts (optional)
# both sides must run the same versions (setup_trl.sh)
SHARED_PACKAGES = ("torch", "transformers", "tokenizers", "numpy")
MODEL_CACHE = BENCH / ".cache"  # the models built here (gitignored)
# engine_vs_trl.py --model: "demo" is trials.demo's model (0.24M parameters, SFT-trained) and
# "smollm2-135m-instruct" the pretrained SmolLM2 (134.5M parameters; trials builds both by name); the
# others are built from a config (Qwen2-shaped unless model_type says otherwise) with random weights and the demo's
# byte-level tokenizer
MODELS: dict[str, dict[str, Any] | None] = {
    "demo": None,
    "smollm2-135m-instruct": None,
    "qwen2-28m": dict(hidden_size=512, num_hidden_layers=10, num_attention_heads=8, num_key_value_heads=2,
                      intermediate_size=1408, max_position_embeddings=256, tie_word_embeddings=True),  # 28.3M
    # the smallest model vLLM's CPU attention serves (head size 32): the vLLM benchmark's --quick size
    "llama-tiny": dict(model_type="llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=1, intermediate_size=128, max_position_embeddings=256),  # 0.1M
}


@dataclasses.dataclass(frozen=True)
class Workload:
    """One PPO iteration's work, the same on both sides: the model (a name in MODELS), the demo's prompts and reward."""

    rollout: int = 64  # prompts per iteration
    mini: int = 16  # samples per gradient step
    epochs: int = 4
    response: int = 16  # tokens per response
    lr: float = 3e-5  # policy and value (TRL has one learning rate)
    kl_coef: float = 0.05
    vf_coef: float = 0.5
    temperature: float = 0.7
    threads: int = 1  # torch threads per side
    seed: int = 0
    # both engines' defaults; the parity check changes them (on both sides, or on one to see it fail)
    gamma: float = 1.0
    lam: float = 0.95
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    kl_estimator: str = "k1"
    clip_grad: bool = True  # ours clips each model's gradient norm to 1 (its default); TRL's PPO never clips
    model: str = "demo"
    lora: int = 0  # the policy's LoRA rank (all-linear, alpha 16; TRL: its peft_config); 0: full fine-tuning
    rollout_engine: str = "hf"  # ours: "hf" (the policy's generate) or "vllm" (a server from VLLM_PYTHON)
    device: str = "cpu"  # ours: "cpu" or "cuda"
    precision: str = "fp32"  # ours: "fp32" or "bf16" (the vLLM server runs the policy's dtype)
    eval_prompts: int = 64  # ours: num_eval_prompts (the initial evaluation generates them, untimed)
    vllm_gpu_memory: float = 0.3  # ours on cuda with vLLM rollouts: the share of the GPU's memory the server takes

    def engine_config(self, **changes: Any) -> Any:
        """Our engine's config for this workload (evaluation only at the last iteration)."""
        from trials import PPOConfig

        fields = dict(rollout_batch_size=self.rollout, mini_batch_size=self.mini, ppo_epochs=self.epochs,
                      response_length=self.response, policy_lr=self.lr, value_lr=self.lr, kl_coef=self.kl_coef,
                      vf_coef=self.vf_coef, temperature=self.temperature, num_threads=self.threads,
                      seed=self.seed, device=self.device, precision=self.precision, eval_interval=10_000,
                      gamma=self.gamma, rollout_engine=self.rollout_engine,
                      vllm_gpu_memory_utilization=self.vllm_gpu_memory, num_eval_prompts=self.eval_prompts,
                      vllm_python=str(VLLM_PYTHON) if self.rollout_engine == "vllm" else None,
                      gae_lambda=self.lam, cliprange=self.cliprange, cliprange_value=self.cliprange_value,
                      kl_estimator=self.kl_estimator, model_path=model_path(self.model), lora_rank=self.lora,
                      chat_template=False,  # TRL's side and the floor tokenize the prompts as they are
                      **({} if self.clip_grad else {"max_grad_norm": 1e9}))
        return PPOConfig.from_dict({**fields, **changes})

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Workload:
        return cls(**json.loads(text))


def model_path(name: str) -> str:
    """The model_path both sides load the named model from (a name trials builds on first use, or a folder)."""
    shape = MODELS[name]
    if shape is None:
        return name
    shape = dict(shape)
    return str(build_causal_lm(MODEL_CACHE / name, shape, model_type=shape.pop("model_type", "qwen2")))


def build_qwen2(folder: Path, shape: dict[str, Any], dtype: str = "float32") -> Path:
    """A Qwen2-shaped causal LM with random weights (seed 0) and the demo's byte-level tokenizer, saved with
    save_pretrained in `folder` (built once: an existing folder is used as it is)."""
    return build_causal_lm(folder, shape, dtype, model_type="qwen2")


def build_causal_lm(folder: Path, shape: dict[str, Any], dtype: str = "float32", model_type: str = "qwen2") -> Path:
    """A causal LM of transformers' `model_type` ("qwen2", "gpt2", "llama", ...) and `shape` (its config's
    fields), as build_qwen2."""
    if (folder / "config.json").is_file():
        return folder
    import shutil
    import tempfile

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig
    from transformers.utils import logging as hf_logging

    from trials.demo import byte_level_tokenizer

    tokenizer = byte_level_tokenizer()
    config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), bos_token_id=tokenizer.eos_token_id,
                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **shape)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).to(getattr(torch, dtype))
    model.generation_config = GenerationConfig(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=folder.parent))
    hf_logging.disable_progress_bar()  # "Writing model shards" for one file
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.rename(folder)
    finally:
        hf_logging.enable_progress_bar()
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def no_cuda(device: str) -> str | None:
    """The line for --device cuda where no CUDA device is available, or None."""
    if device != "cuda":
        return None
    import torch

    if torch.cuda.is_available():
        return None
    return "--device cuda: no CUDA device is available here; run on a machine with one, or use --device cpu"


def no_vllm() -> str | None:
    """The line for a run that needs vLLM rollouts where .venv-vllm is absent, or None."""
    if VLLM_PYTHON.exists():
        return None
    return f"no {VLLM_PYTHON}: make the vLLM environment as README.md 'Install' says (vLLM rollouts)"


def load() -> list[float]:
    """The 1, 5 and 15 minute load averages (other jobs share the cores: read every figure with them)."""
    return [round(x, 2) for x in os.getloadavg()]


def peak_rss_bytes() -> int:
    """This process's peak RSS since it started (Linux's VmHWM). Not getrusage's ru_maxrss: Linux carries that
    over an exec from the process that started it (a vfork'd child starts with its parent's peak), so a worker
    started by a large process (a test suite's) reports the parent's peak until it passes it."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status")


def peak_rss_mib() -> float:
    return peak_rss_bytes() / 2**20


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "date": datetime.date.today().isoformat()}


def versions() -> dict[str, str]:
    """The versions of the packages both sides share, as this process runs them (and trl's, if it has it)."""
    import importlib.metadata as md

    out = {name: md.version(name) for name in SHARED_PACKAGES}
    try:
        out["trl"] = md.version("trl")
    except md.PackageNotFoundError:
        pass
    return out


def version_mismatch(ours: dict[str, str], trl: dict[str, str]) -> str | None:
    """One line naming every shared package whose version differs between the sides, or None."""
    diff = [f"{name} {trl.get(name)} (ours {ours.get(name)})" for name in SHARED_PACKAGES
            if ours.get(name) != trl.get(name)]
    if not diff:
        return None
    return (f"not comparing: bench/.venv-trl runs {', '.join(diff)}; remove bench/.venv-trl and run "
            f"`bash bench/setup_trl.sh` with this environment's python")


def run_worker(python: str | Path, script: str, args: list[str], timeout: float = 900,
               first_on_path: str | None = None) -> dict[str, Any]:
    """Run a worker script in its own process; it prints one JSON object as its last stdout line.
    first_on_path: a folder whose packages win over the project's (e.g. an older trials/)."""
    path = (first_on_path or "", os.environ.get("PYTHONPATH", ""), str(ROOT))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TRL_EXPERIMENTAL_SILENCE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(p for p in path if p)}
    started = time.perf_counter()
    proc = subprocess.run([str(python), str(BENCH / script), *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise RuntimeError(f"{script} {' '.join(args)} failed with exit code {proc.returncode}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_seconds"] = time.perf_counter() - started
    return result


def grad_norm(params: Any) -> float:
    """The global L2 norm of the parameters' gradients (what clip_grad_norm_ measures)."""
    import torch

    return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None])).item()


def emit(result: dict[str, Any]) -> None:
    """A worker's answer: one JSON line, last on stdout."""
    print(json.dumps(result), flush=True)


def save(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    return path


def serve(argv: list[str], parity: Any, speed: Any, variants: dict[str, dict[str, Any]] | None = None) -> None:
    """A side's entry point (`python _engine_X.py MODE WORKLOAD ...`): parity, speed, or a variant of speed
    (a mode named in `variants`, with the keyword arguments it passes to speed), printed as JSON with the
    versions this side runs; `python _engine_X.py versions` prints only those."""
    import torch

    mode = argv[0]
    if mode == "versions":
        emit(versions())
        return
    if mode not in ("parity", "speed", *(variants or {})):
        raise SystemExit(f"mode {mode!r}: not one of parity, speed, {', '.join(variants or {})}, versions")
    w = Workload.from_json(argv[1])
    torch.set_num_threads(w.threads)
    if mode == "parity":
        result = parity(w, argv[2], argv[3])
    else:
        result = speed(w, int(argv[2]), int(argv[3]), **(variants or {}).get(mode, {}))
    emit({**result, "versions": versions()})
