"""`liger run`'s settings, readable without torch (`liger run --help` builds its options from them): how much work
a run does (`Budget`, `BUDGETS`) and what it runs (`RunOptions`). The job itself is `liger_lm.run`."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .config import LigerConfig
from .errors import LigerConfigError
from .presets import DEFAULT_PRESET, PRESETS
from .training.config import PRECISIONS, TrainConfig

DEFAULT_PROMPTS = ["What is the capital of France?", "Write one sentence about the sea."]


@dataclass(frozen=True)
class Budget:
    """How much work a run does: training tokens and sequence length, and evaluation examples per task."""

    train_tokens: int
    seq_len: int
    grad_accum: int
    eval_records: int  # held-out instruction records for the fine-tune's eval loss
    eval_examples: int | None  # per task; None: the task's DEFAULT_SUITE size
    prompt_loss: bool = False  # train on prompts too (more signal per token on short-answer data)
    prose_tokens: int = 16_384  # held-out prose tokens scored (windows of 1,024; by position in windows of 4,096)
    evals_per_stage: int = 3  # held-out answer-loss evaluations per stage (and one before the first)

    def train_config(self, data: str, seed: int, precision: str = "auto", **recipe: Any) -> TrainConfig:
        """The fine-tune's settings: this budget's sizes, then the preset's `recipe` (stages, LoRA, learning rate)."""
        return TrainConfig(data=data, max_tokens=self.train_tokens, seq_len=self.seq_len, grad_accum=self.grad_accum,
                           eval_records=self.eval_records, evals_per_stage=self.evals_per_stage, seed=seed,
                           prompt_loss=self.prompt_loss, precision=precision).replace(**recipe)


# "default" is sized for `make run` in under 20 minutes on a 2-core CPU (about 17 on the 4 December Zen 4 VM with
# native bf16; README): 28 optimizer steps of 2,048 tokens (RADLADS: the number of steps matters more than the batch,
# but with the window-256 preset 112 steps of 1,024 gained only 0.002 in held-out perplexity ratio over 56, while the
# same tokens in 28 rows of 2,048 gained 0.005 and made the recurrent branch carry more past 1K tokens: README), then
# the multiple-choice suite at 200 examples per task (standard error ≤ 3.5 points) and 16K tokens of held-out prose;
# the held-out answer loss only before and after each stage (each evaluation takes about 15 s there).
# It also trains on the prompts: the BIG-bench instructions' answers are short (2.5 % of the tokens); the held-out loss
# is still measured on answers only. "long" is 256 steps of 2,048 tokens (1 h 21 min on the Zen 4 VM with native
# bf16): more steps of 1,024 tokens barely moved the held-out ratio (window 128: 640 steps gained 0.002 over 112), while
# rows of 2,048 make the recurrent branch carry more past 1K tokens (README); "paper" is the paper's recipe (20 M tokens
# of 8 × 1024, answers only); "tiny" is a smoke test.
BUDGETS = {
    "tiny": Budget(train_tokens=512, seq_len=64, grad_accum=2, eval_records=4, eval_examples=8, prose_tokens=0),
    "default": Budget(train_tokens=57_344, seq_len=2048, grad_accum=1, eval_records=16, eval_examples=200,
                      prompt_loss=True, evals_per_stage=1),
    "long": Budget(train_tokens=524_288, seq_len=2048, grad_accum=1, eval_records=64, eval_examples=200,
                   prompt_loss=True),
    "paper": Budget(train_tokens=20_000_000, seq_len=1024, grad_accum=8, eval_records=256, eval_examples=None),
}


@dataclass
class RunOptions:
    """What `liger run` does; each field's `metadata["help"]` is its `liger run` option's help. The fine-tune's
    settings are the budget's sizes, then the preset's recipe, then `train` (the `TrainConfig` fields given)."""

    model: str = field(default="default", metadata={
        "help": "'default' (embedded SmolLM2-135M-Instruct, Q4_1 GGUF), a Hugging Face id, a local folder or a "
                ".gguf file."})
    out: Path = field(default=Path("runs/default"), metadata={
        "help": "Run folder: model/, train/, eval/, report.md, results.json, recovery.png."})
    preset: str = field(default=DEFAULT_PRESET, metadata={
        "help": "Named recipe (conversion settings, fine-tune, data): paper is the paper's exact Liger-GLA; the "
                "default is the best measured (README: Presets). Options given override its settings.",
        "choices": tuple(PRESETS)})
    liger: LigerConfig | None = field(default=None, metadata={  # None: the preset's conversion settings
        "help": "Conversion settings (on the command line: the LigerConfig options over --preset).", "cli": False})
    budget: str = field(default="default", metadata={
        "help": "tiny (smoke test), default (about 20 min on a 2-core CPU with native bf16, 73 on an AVX2-only "
                "one), long (9× the tokens in rows of 2,048; 1 h 21 min with native bf16) or paper (20 M tokens; "
                "needs a GPU).",
        "choices": tuple(BUDGETS)})
    data: str | None = field(default=None, metadata={  # None: the preset's training data
        "help": "Fine-tuning data (default: the preset's): default (BIG-bench instructions), prose, mix, a local "
                "file or a Hugging Face dataset."})
    tasks: dict[str, int | None] | None = field(default=None, metadata={  # None: the default suite, budget's size
        "help": "default (the suite at the budget's size) or name[=size],… (task names or .jsonl files).",
        "syntax": "tasks"})
    seed: int = field(default=0, metadata={"help": "Seed of the conversion, fine-tune and task sampling."})
    precision: str = field(default="auto", metadata={
        "help": "Precision of the fine-tune and of the task and prose evaluations: auto (bf16 autocast where the "
                "hardware runs it natively), fp32 or bf16.",
        "choices": PRECISIONS})
    prompts: list[str] = field(default_factory=lambda: list(DEFAULT_PROMPTS), metadata={
        "help": "Prompts answered greedily by the base and the Liger model in the report; repeat for several "
                "(default: two fixed questions).", "option": "--prompt", "syntax": "repeat"})
    max_new_tokens: int = field(default=32, metadata={"help": "New tokens per report answer.", "min": 1})
    overwrite: bool = field(default=False, metadata={
        "help": "Start over instead of reusing finished steps in --out: the new run is built beside it and "
                "replaces it once complete."})
    train: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "`TrainConfig` fields over the budget's and the preset's (on the command line: the TrainConfig "
                "options).", "cli": False})

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise LigerConfigError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        if self.liger is None:
            self.liger = LigerConfig(**PRESETS[self.preset].liger)
        if self.data is None:
            self.data = PRESETS[self.preset].data

    def train_config(self) -> TrainConfig:
        budget = BUDGETS[self.budget]
        recipe = {**PRESETS[self.preset].train, **self.train}
        return budget.train_config(self.data, self.seed, self.training_precision(), **recipe)

    def settings(self) -> dict[str, Any]:
        """What the outputs depend on (compared with `run.json` to decide what can be reused)."""
        settings = {
            "model": self.model, "preset": self.preset, "liger": self.liger.to_dict(),
            "budget": asdict(BUDGETS[self.budget]), "training": self.train_config().to_dict(), "data": self.data,
            "tasks": self.task_sizes(), "seed": self.seed,  # the resolved precision is in "training"
        }
        return json.loads(json.dumps(settings))  # as stored in run.json

    def training_precision(self) -> str:
        """The precision of the fine-tune and of the evaluations as resolved on this machine: "bf16" or "fp32"."""
        from .training.trainer import use_bf16  # reads the hardware through torch, which these settings do not need

        return "bf16" if use_bf16(self.precision) else "fp32"

    def task_sizes(self) -> dict[str, int | None]:
        from .data.tasks import DEFAULT_SUITE

        examples = BUDGETS[self.budget].eval_examples
        if self.tasks is not None:
            return dict(self.tasks)
        return {name: examples or size for name, size in DEFAULT_SUITE.items()}
