"""Every command and Python example of the README, run as printed, in order, from a directory
outside the repository (the configs come from the installed package), with small overrides
appended that keep each run short. $MODEL is a tiny Qwen2.5-VL checkpoint written by transformers
with Qwen's real tokenizer, $DATA the released formats, $RUN the output; the pod configs are run
as a user fills in their paths. Then the judge the README trains is checked against
transformers."""

import json
import os
import re
import shlex
import shutil

import numpy as np
import pytest
import yaml

from tests.benchmark_fixtures import write_downloaded_benchmarks
from tests.conftest import DEMO_SMALL, working_directory
from tests.qwen_checkpoint import write_qwen_checkpoint, write_released_data
from tests.release_clone import write_release_clone
from urt_jax.cli import main as cli_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")

# Overrides that keep a command of each shipped config short. The cold start of the
# real-vocabulary checkpoint learns its replies, so that rejection sampling finds correct ones.
QWEN_SMALL = [
    "model.dtype=float32",
    "model.remat=none",
    "data.batch_size=4",
    "data.max_length=512",
    "data.bucket_lengths=[256,512]",
    "train.max_steps=80",
    "train.grad_accum=1",
    "train.learning_rate=1e-2",
    "train.warmup_ratio=0.0",
    "train.progress=false",
    "rejection.samples_per_prompt=4",
    "rejection.max_new_tokens=24",
    "rejection.temperature=0.0",
    "rejection.batch_size=4",
    "eval.max_new_tokens=24",
    "eval.batch_size=4",
    "grpo.max_steps=1",
    "grpo.prompts_per_step=2",
    "grpo.num_generations=2",
    "grpo.micro_batch_rows=null",
    "grpo.max_new_tokens=8",
    "mesh.fsdp=1",
]
POD_SMALL = [
    "mesh.distributed=false",  # one process here; a slice's hosts find each other
    "data.batch_size=8",
    "data.max_length=256",
    "data.bucket_lengths=[256]",
    "train.max_steps=2",
    "train.grad_accum=1",
    "train.progress=false",
    "rejection.samples_per_prompt=8",
    "rejection.temperature=0.0",
    "rejection.max_new_tokens=24",
    "rejection.batch_size=8",
    "grpo.max_steps=1",
    "grpo.prompts_per_step=4",
    "grpo.num_generations=2",
    "grpo.micro_batch_rows=null",
    "grpo.max_new_tokens=8",
]
SMALL = {
    "configs/demo.yaml": DEMO_SMALL,
    "configs/sft_demo.yaml": [
        "train.max_steps=2",
        "train.progress=false",
        "data.synthetic.n_train=8",
        "data.synthetic.n_heldout=4",
    ],
    "configs/qwen2_5_vl.yaml": QWEN_SMALL,
}
POD_STAGES = ("cold_start", "rejection_sampling", "rs_sft", "grpo")


def readme_blocks() -> list[tuple[str, str, int]]:
    """(language, text, line) of every fenced block of the README."""
    text = open(README, encoding="utf-8").read()
    blocks = []
    for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
        blocks.append((m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1))
    return blocks


def commands(block: str) -> list[str]:
    """The urt-jax command lines of a bash block (continuations joined; a gcloud line gives the
    command it runs on every host)."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        line = line.split(" #")[0].strip()
        inner = re.search(r"&& (urt-jax .*?)\"?$", line)
        if line.startswith("gcloud ") and inner:
            line = inner.group(1)
        if line.startswith("urt-jax "):
            out.append(line)
    return out


def small_overrides(argv: list[str]) -> list[str]:
    config = next((a for a in argv if a.endswith(".yaml") and a.startswith("configs/")), None)
    if config is None:
        return []
    if config.startswith("configs/pod/"):
        return POD_SMALL
    extra = ["train.max_steps=2"] if any(a.endswith("/rs_sft") for a in argv) else []
    return SMALL[config] + extra


def fill_in_pod_configs(work, model: str, data: str) -> None:
    """configs/pod/*7b*.yaml copied into the working directory with the user's paths: the
    checkpoint (here the README's cold-started judge, which answers some prompts right), the data
    and a shared directory for the stages' outputs."""
    os.makedirs(work / "configs" / "pod", exist_ok=True)
    for stage in POD_STAGES:
        name = f"qwen2_5_vl_7b_{stage}.yaml"
        text = open(os.path.join(ROOT, "configs", "pod", name)).read()
        text = text.replace("/mnt/shared/urt", str(work / "shared"))
        text = text.replace("/mnt/models/Qwen2.5-VL-7B-Instruct", model)
        text = text.replace("/mnt/data/ImageGen-CoT-Reward-5K.json", f"{data}/cold_start_8.json")
        text = text.replace("/mnt/data/unifiedreward-think", data)
        text = text.replace("/mnt/data/images", data)
        (work / "configs" / "pod" / name).write_text(text)
        assert "/mnt/" not in text, (name, text)


@pytest.fixture(scope="module")
def readme_run(demo_workdir):
    """Runs every README block in order; returns the working directory."""
    work = demo_workdir
    model = str(work / "models" / "Qwen2.5-VL-7B-Instruct")
    data = str(work / "data" / "unifiedreward-think")
    write_qwen_checkpoint(model)
    write_released_data(data)
    with open(os.path.join(data, "cold_start.json")) as f:  # 8 rows: one per chip of the mesh
        rows = json.load(f)
    with open(os.path.join(data, "cold_start_8.json"), "w") as f:
        json.dump(rows * 2, f)
    bench = work / "paper-benchmarks"  # as the README's download commands leave it
    write_downloaded_benchmarks(str(bench))
    write_release_clone(bench / "UnifiedReward")
    env = {
        "MODEL": model,
        "DATA": data,
        "RUN": str(work / "runs" / "my-judge"),
        "BENCH": str(bench),
    }
    fill_in_pod_configs(work, os.path.join(env["RUN"], "cold_start", "hf"), data)
    old_env = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    namespace: dict = {}
    ran = []
    try:
        with working_directory(work):
            for lang, text, line in readme_blocks():
                if lang == "bash":
                    for command in commands(text):
                        argv = shlex.split(os.path.expandvars(command))[1:]
                        status = cli_main([*argv, *small_overrides(argv)])
                        assert status == 0, f"README line {line}: {command} exited {status}"
                        ran.append(command)
                elif lang == "python":
                    exec(compile(text, f"README.md:{line}", "exec"), namespace)
                    ran.append(f"python block at line {line}")
    finally:
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return work, env, ran, namespace


def test_every_readme_command_runs(readme_run):
    _, _, ran, _ = readme_run
    stages = {c.split()[1] for c in ran if c.startswith("urt-jax")}
    assert {"sft", "sample", "grpo", "eval", "score", "data", "convert"} <= stages, ran
    assert sum(c.startswith("python block") for c in ran) >= 2


def test_own_checkpoint_stages_chain(readme_run):
    """The real-vocabulary path: each stage wrote what the next read, with the checkpoint's
    tokenizer carried to every model it wrote."""
    work, env, _, _ = readme_run
    run = env["RUN"]
    stats = json.load(open(os.path.join(run, "rejection_sampling", "stats.json")))
    assert stats["prompts"] == 4 and stats["samples"] == 16
    assert stats["sft_samples"] >= 4 and stats["grpo_prompts"] >= 1, stats
    grpo_yaml = yaml.safe_load(open(os.path.join(run, "rejection_sampling", "grpo.yaml")))
    assert os.path.isabs(grpo_yaml["datasets"][0]["image_folder"])
    for stage in ("cold_start", "rs_sft", "grpo"):
        hf = os.path.join(run, stage, "hf")
        for name in ("tokenizer.json", "chat_template.json", "preprocessor_config.json"):
            assert os.path.isfile(os.path.join(hf, name)), (stage, name)
        gen = json.load(open(os.path.join(hf, "generation_config.json")))
        assert gen["eos_token_id"] == [151645, 151643]
    completions = [json.loads(x) for x in open(os.path.join(run, "grpo", "completions.jsonl"))]
    assert len(completions) == 4
    evaluation = json.load(open(os.path.join(run, "eval", "eval.json")))
    assert evaluation["items"] == 2 if "items" in evaluation else True
    judged = [json.loads(x) for x in open(os.path.join(run, "judged.jsonl"))]
    assert [j["id"] for j in judged] == ["pair-1", "pair-2"]
    for stage in POD_STAGES:  # the pod configs ran with their paths filled in
        out = work / "shared" / "7b" / stage
        if stage == "rejection_sampling":
            out = work / "shared" / "7b" / "rejection_sampling"
        assert out.is_dir(), out


def test_paper_table_from_the_downloaded_benchmarks(readme_run):
    """The README's paper-table commands: the release's prompts read from the clone, the four
    benchmarks imported from their download folders, judged once each under the release protocol,
    with a figure for every column of the paper's table."""
    _, env, _, _ = readme_run
    run = env["RUN"]
    templates = yaml.safe_load(open(os.path.join(run, "release_templates.yaml")))
    assert templates["image_generation"]["pairwise"].startswith("Rate two pictures of one caption")
    summary = json.load(open(os.path.join(run, "paper", "eval", "eval.json")))
    assert summary["protocol"] == "release"
    bench = summary["benchmarks"]
    sizes = {
        "vl-rewardbench": (6, 0),
        "genai-bench-image": (4, 2),
        "genai-bench-video": (3, 1),
        "videogen-rewardbench": (4, 1),
    }
    assert {b: (m["items"] + m["skipped"], m["ties"]) for b, m in bench.items()} == sizes
    rows = [json.loads(x) for x in open(os.path.join(run, "paper", "eval", "judgements.jsonl"))]
    assert len(rows) == 17 and sum("not_judged" in r for r in rows) == 3  # GenAI-Bench's ties
    assert all(r["order"] == "original" for r in rows if r["benchmark"] == "videogen-rewardbench")
    table = open(os.path.join(run, "paper", "eval", "eval.md")).read()
    assert (
        "| model | VL-RewardBench overall | VL-RewardBench macro | GenAI-Bench image tau" in table
    )


def test_exported_judge_gives_transformers_logits(readme_run):
    """The judge the README trained, loaded in transformers, gives urt-jax's logits on a prompt
    tokenised with Qwen's tokenizer and an image; urt-jax's Processor builds exactly the inputs
    transformers' tokenizer, chat template and PIL image processor build."""
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    import urt_jax

    _, env, _, _ = readme_run
    judge = os.path.join(env["RUN"], "grpo", "hf")
    image = Image.open(os.path.join(env["DATA"], "images", "3.png"))
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": image},
                {"type": "text", "text": "Is this square yellow? Answer in <answer></answer>."},
            ],
        }
    ]
    processor = urt_jax.Processor.from_pretrained(judge)
    ours = processor(messages, return_mm_token_type_ids=True)

    tokenizer = AutoTokenizer.from_pretrained(judge)
    pil = AutoImageProcessor.from_pretrained(judge, backend="pil")
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    pixels = pil(images=[image], return_tensors="np")
    n = int(np.prod(pixels["image_grid_thw"][0])) // 4
    text = text.replace("<|image_pad|>", "<|image_pad|>" * n)
    ids = tokenizer(text, return_tensors="np")["input_ids"]
    np.testing.assert_array_equal(ours["input_ids"], ids)
    assert ids[0, 0] == 151644 and (ids == 151655).sum() == n
    np.testing.assert_array_equal(ours["pixel_values"], pixels["pixel_values"])
    np.testing.assert_array_equal(ours["image_grid_thw"], pixels["image_grid_thw"])

    model = urt_jax.from_pretrained(judge, dtype="float32")
    logits = np.asarray(model(**{k: v for k, v in ours.items() if k != "mm_token_type_ids"}))
    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(judge, attn_implementation="eager")
    with torch.no_grad():
        want = hf(**{k: torch.from_numpy(np.asarray(v)) for k, v in ours.items()}).logits
    assert logits.shape == tuple(want.shape) and logits.shape[-1] == 151936
    assert np.abs(logits - want.float().numpy()).max() <= 1e-4


def test_pod_configs_take_the_checkpoints_tokenizer(readme_run, capsys):
    """Every pod config, with its checkpoint and data paths filled in, vets data with that
    checkpoint's tokenizer (Qwen's ids), not the demo's."""
    work, env, _, _ = readme_run
    for name in sorted(os.listdir(os.path.join(ROOT, "configs", "pod"))):
        argv = [
            "data",
            "check",
            os.path.join(env["DATA"], "cold_start.json"),
            "--config",
            os.path.join(ROOT, "configs", "pod", name),
            f"model.hf_dir={env['MODEL']}",
            f"data.data_root={env['DATA']}",
        ]
        assert cli_main(argv) == 0, name
        out = capsys.readouterr().out
        assert "4 record(s) checked, OK" in out, (name, out)
    shutil.rmtree(work / "shared", ignore_errors=True)
