"""SLURM launchers under a faked SLURM: fake srun / scontrol / sbatch and fake tide-* commands on PATH
record what they were asked to run; the tests check the commands, the per-rank rendezvous environment,
the ablation array mapping and the checkpoint-and-requeue path on USR1."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
SLURM_DIR = REPO / "slurm"
SCRIPTS = sorted(p.name for p in SLURM_DIR.iterdir() if p.suffix in (".sh", ".sbatch"))
VARIANTS = ["pipeline_a_calm", "pipeline_a_tide_cross", "pipeline_a_tide_shared",
            "pipeline_b_kl", "pipeline_b_tide_cross", "pipeline_b_tide_shared"]

# A recorder: appends {"prog", "argv", "env"} to $FAKE_LOG (one JSON object per line).
RECORD = textwrap.dedent("""
    import json, os, sys
    KEYS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_LOCALID",
            "TIDE_ABLATION_VARIANTS", "TIDE_ABLATION_SEEDS")
    def record(prog, argv):
        env = {k: os.environ[k] for k in KEYS if k in os.environ}
        env["cwd"] = os.getcwd()
        with open(os.environ["FAKE_LOG"], "a") as fh:
            fh.write(json.dumps({"prog": prog, "argv": argv, "env": env}) + "\\n")
""")

FAKE_SRUN = RECORD + textwrap.dedent("""
    import signal, subprocess, time
    argv = sys.argv[1:]
    record("srun", argv)
    n_opts = next((i for i, a in enumerate(argv) if not a.startswith("-")), len(argv))
    opts, cmd = argv[:n_opts], argv[n_opts:]   # our srun calls use --flag=value forms only
    given = [a.split("=", 1)[1] for a in opts if a.startswith("--ntasks=")]
    ntasks = int(given[0] if given else os.environ.get("SLURM_NTASKS", "1"))
    per_node = int(os.environ.get("SLURM_NTASKS_PER_NODE", ntasks))
    if os.environ.get("FAKE_SRUN_HANG"):   # a long training step: wait for a forwarded signal
        def on_signal(sig, frame):
            record("srun-signal", [signal.Signals(sig).name])
            sys.exit(0)   # the trainer checkpoints and exits 0
        signal.signal(signal.SIGUSR1, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        open(os.environ["FAKE_SRUN_HANG"], "w").close()
        while True:
            time.sleep(0.05)
    rc = 0
    for i in range(ntasks):
        env = dict(os.environ, SLURM_PROCID=str(i), SLURM_LOCALID=str(i % per_node))
        rc = max(rc, subprocess.call(cmd, env=env))
    sys.exit(rc)
""")

FAKE_SCONTROL = RECORD + textwrap.dedent("""
    record("scontrol", sys.argv[1:])
    if sys.argv[1:3] == ["show", "hostnames"]:
        print("gpu-node-017\\ngpu-node-018")
""")

FAKE_SBATCH = RECORD + textwrap.dedent("""
    record("sbatch", sys.argv[1:])
    print("Submitted batch job 777")
""")

FAKE_TOOL = RECORD + "record(os.path.basename(sys.argv[0]), sys.argv[1:])\n"


@pytest.fixture
def fake_slurm(tmp_path):
    """A checkout-like root (slurm/ + example configs), fake executables on PATH, and a run helper."""
    root = tmp_path / "repo"
    shutil.copytree(SLURM_DIR, root / "slurm")
    (root / "examples").mkdir()
    for v in VARIANTS:
        (root / "examples" / f"{v}.yaml").write_text("# placeholder\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in [("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL), ("sbatch", FAKE_SBATCH),
                       ("tide-train", FAKE_TOOL), ("tide-convert", FAKE_TOOL), ("tide-eval", FAKE_TOOL)]:
        path = bin_dir / name
        path.write_text(f"#!{sys.executable}\n{body}")
        path.chmod(0o755)
    log = tmp_path / "calls.jsonl"
    base_env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(tmp_path), "FAKE_LOG": str(log),
        "TIDE_VENV": "none", "SLURM_SUBMIT_DIR": str(root), "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NODELIST": "gpu-node-[017-018]", "SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS": "16",
        "SLURM_NTASKS_PER_NODE": "8", "SLURM_CPUS_PER_TASK": "12",
    }

    class Fake:
        def __init__(self):
            self.root, self.log = root, log

        def env(self, **extra):
            return {**base_env, **{k: str(v) for k, v in extra.items()}}

        def run(self, script, *args, **env):
            log.write_text("")
            proc = subprocess.run(["bash", str(root / "slurm" / script), *args], cwd=root, env=self.env(**env),
                                  capture_output=True, text=True, timeout=60)
            return proc, self.calls()

        def calls(self, prog=None):
            rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
            return [r for r in rows if prog is None or r["prog"] == prog]

    return Fake()


@pytest.mark.parametrize("script", SCRIPTS)
def test_bash_syntax(script):
    subprocess.run(["bash", "-n", str(SLURM_DIR / script)], check=True)


def test_shellcheck_clean():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (Debian/Ubuntu package: shellcheck); bash -n still ran")
    proc = subprocess.run([shellcheck, "-x", *SCRIPTS], cwd=SLURM_DIR, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _sbatch_directives(script):
    return [ln.split(None, 1)[1] for ln in (SLURM_DIR / script).read_text().splitlines() if ln.startswith("#SBATCH")]


@pytest.mark.parametrize("script", ["distill_pipeline_a.sbatch", "distill_pipeline_b.sbatch", "ablation.sbatch"])
def test_training_jobs_requeue_and_get_a_warning_signal(script):
    directives = _sbatch_directives(script)
    assert "--requeue" in directives and "--signal=B:USR1@120" in directives
    assert "--ntasks-per-node=8" in directives and "--gpus-per-node=8" in directives


def test_pipeline_a_runs_one_rank_per_gpu_with_the_rendezvous_from_slurm(fake_slurm):
    proc, calls = fake_slurm.run("distill_pipeline_a.sbatch", "tide_cross", "optim.train_steps=10")
    assert proc.returncode == 0, proc.stderr
    srun = [c for c in calls if c["prog"] == "srun"]
    assert len(srun) == 1 and "--kill-on-bad-exit=1" in srun[0]["argv"]
    assert [c["argv"] for c in calls if c["prog"] == "scontrol"] == [["show", "hostnames", "gpu-node-[017-018]"]]
    train = [c for c in calls if c["prog"] == "tide-train"]
    assert len(train) == 16
    out_dir = fake_slurm.root / "runs" / "pipeline_a_tide_cross" / "seed42"
    for i, call in enumerate(train):
        assert call["argv"] == ["--config", "examples/pipeline_a_tide_cross.yaml", f"output_dir={out_dir}",
                                "optim.seed=42", "checkpoint.resume=auto", "optim.train_steps=10"]
        env = call["env"]
        assert (env["RANK"], env["LOCAL_RANK"], env["WORLD_SIZE"]) == (str(i), str(i % 8), "16")
        assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("gpu-node-017", str(20000 + 4242 % 20000))
        assert env["cwd"] == str(fake_slurm.root)
    assert out_dir.is_dir()


def test_pipeline_b_variant_seed_and_bad_variant(fake_slurm):
    proc, calls = fake_slurm.run("distill_pipeline_b.sbatch", "kl", SLURM_NTASKS=8, SLURM_JOB_NUM_NODES=1,
                                 TIDE_SEED=7)
    assert proc.returncode == 0, proc.stderr
    train = [c for c in calls if c["prog"] == "tide-train"]
    assert len(train) == 8 and train[0]["argv"][:4] == [
        "--config", "examples/pipeline_b_kl.yaml",
        f"output_dir={fake_slurm.root / 'runs' / 'pipeline_b_kl' / 'seed7'}", "optim.seed=7"]
    proc, calls = fake_slurm.run("distill_pipeline_b.sbatch", "calm")
    assert proc.returncode == 2 and "unknown variant 'calm'" in proc.stderr and not calls
    (fake_slurm.root / "examples" / "pipeline_b_kl.yaml").unlink()
    proc, calls = fake_slurm.run("distill_pipeline_b.sbatch", "kl")
    assert proc.returncode == 2 and "pipeline_b_kl.yaml not found" in proc.stderr and not calls


@pytest.mark.slow
def test_ablation_array_maps_every_index_to_its_own_variant_seed_and_directory(fake_slurm):
    seen = {}
    for index in range(18):
        proc, calls = fake_slurm.run("ablation.sbatch", "optim.train_steps=5", SLURM_ARRAY_TASK_ID=index,
                                     SLURM_NTASKS=2, SLURM_NTASKS_PER_NODE=2)
        assert proc.returncode == 0, proc.stderr
        train = [c for c in calls if c["prog"] == "tide-train"]
        assert [c["env"]["RANK"] for c in train] == ["0", "1"]
        argv = train[0]["argv"]
        seen[index] = (argv[1], argv[2], argv[3])
        assert argv[4:] == ["checkpoint.resume=auto", "optim.train_steps=5"]
    expected = {i: (f"examples/{VARIANTS[i // 3]}.yaml",
                    f"output_dir={fake_slurm.root / 'runs' / 'ablation' / VARIANTS[i // 3] / f'seed{42 + i % 3}'}",
                    f"optim.seed={42 + i % 3}") for i in range(18)}
    assert seen == expected
    proc, _ = fake_slurm.run("ablation.sbatch", SLURM_ARRAY_TASK_ID=18)
    assert proc.returncode == 2 and "outside 0..17" in proc.stderr


def test_submit_ablation_submits_one_array_per_pipeline(fake_slurm):
    proc, calls = fake_slurm.run("submit_ablation.sh", "optim.train_steps=5", TIDE_ABLATION_SEEDS="1 2")
    assert proc.returncode == 0, proc.stderr
    sb = [c for c in calls if c["prog"] == "sbatch"]
    assert [c["argv"] for c in sb] == [
        ["--export=ALL", "--nodes=1", "--array=0-5", "--job-name=tide-ablation-a", "slurm/ablation.sbatch",
         "optim.train_steps=5"],
        ["--export=ALL", "--nodes=1", "--array=0-5", "--job-name=tide-ablation-b", "slurm/ablation.sbatch",
         "optim.train_steps=5"]]
    assert sb[0]["env"]["TIDE_ABLATION_VARIANTS"] == " ".join(VARIANTS[:3])
    assert sb[1]["env"]["TIDE_ABLATION_SEEDS"] == "1 2"


def test_ablation_takes_seeds_and_variants_as_flags(fake_slurm):
    one_task = dict(SLURM_NTASKS=1, SLURM_NTASKS_PER_NODE=1)
    proc, calls = fake_slurm.run("ablation.sbatch", "--seeds", "7,8", "optim.train_steps=5", SLURM_ARRAY_TASK_ID=3,
                                 **one_task)
    assert proc.returncode == 0, proc.stderr
    out = fake_slurm.root / "runs" / "ablation" / VARIANTS[1] / "seed8"  # index 3 of 6 variants x 2 seeds
    assert [c["argv"] for c in calls if c["prog"] == "tide-train"] == [
        ["--config", f"examples/{VARIANTS[1]}.yaml", f"output_dir={out}", "optim.seed=8", "checkpoint.resume=auto",
         "optim.train_steps=5"]]
    proc, calls = fake_slurm.run("ablation.sbatch", "--variants", "pipeline_b_kl", "--seeds=3", SLURM_ARRAY_TASK_ID=0,
                                 **one_task)
    assert proc.returncode == 0 and [c["argv"][:4] for c in calls if c["prog"] == "tide-train"] == [
        ["--config", "examples/pipeline_b_kl.yaml",
         f"output_dir={fake_slurm.root / 'runs' / 'ablation' / 'pipeline_b_kl' / 'seed3'}", "optim.seed=3"]]
    proc, calls = fake_slurm.run("ablation.sbatch", "--seeds", "7,8", SLURM_ARRAY_TASK_ID=12, **one_task)
    assert proc.returncode == 2 and "outside 0..11" in proc.stderr and not calls
    proc, calls = fake_slurm.run("ablation.sbatch", "--seeds", "1 x", SLURM_ARRAY_TASK_ID=0, **one_task)
    assert proc.returncode == 2 and "--seeds: expected integers, got 'x'" in proc.stderr and not calls


def test_submit_ablation_takes_seeds_and_pipelines_as_flags(fake_slurm):
    proc, calls = fake_slurm.run("submit_ablation.sh", "--seeds", "1,2,3,4", "--pipelines", "b", "optim.train_steps=5")
    assert proc.returncode == 0, proc.stderr
    sb = [c for c in calls if c["prog"] == "sbatch"]
    assert [c["argv"] for c in sb] == [["--export=ALL", "--nodes=1", "--array=0-11", "--job-name=tide-ablation-b",
                                        "slurm/ablation.sbatch", "optim.train_steps=5"]]
    assert sb[0]["env"]["TIDE_ABLATION_SEEDS"] == "1 2 3 4"
    proc, calls = fake_slurm.run("submit_ablation.sh", "--seeds", "1,two")
    assert proc.returncode == 2 and "--seeds: expected integers, got 'two'" in proc.stderr and not calls


def test_convert_and_eval_jobs(fake_slurm):
    proc, calls = fake_slurm.run("convert.sbatch", "hf-to-mcore", "--hf-dir", "hf", "--mcore-dir", "mc",
                                 SLURM_NTASKS=1, SLURM_NTASKS_PER_NODE=1)
    assert proc.returncode == 0, proc.stderr
    assert [c["argv"] for c in calls if c["prog"] == "tide-convert"] == [
        ["hf-to-mcore", "--hf-dir", "hf", "--mcore-dir", "mc"]]
    assert "--ntasks=1" in calls[[c["prog"] for c in calls].index("srun")]["argv"]
    proc, calls = fake_slurm.run("convert.sbatch")
    assert proc.returncode == 2 and "tide-convert's arguments" in proc.stderr

    proc, calls = fake_slurm.run("eval.sbatch", "ckpt/student_hf", "--humaneval-limit", "4", SLURM_NTASKS=1,
                                 SLURM_NTASKS_PER_NODE=1, TIDE_HELDOUT="held/a.py held/docs")
    assert proc.returncode == 0, proc.stderr
    (ev,) = [c for c in calls if c["prog"] == "tide-eval"]
    argv = ev["argv"]
    assert argv[:4] == ["--hf-dir", "ckpt/student_hf", "--tasks", "bpb,throughput,humaneval"]
    assert argv[argv.index("--output") + 1] == str(fake_slurm.root / "runs" / "eval" / "student_hf" / "results.json")
    assert argv[argv.index("--heldout") + 1:argv.index("--heldout") + 3] == ["held/a.py", "held/docs"]
    assert argv[-2:] == ["--humaneval-limit", "4"] and ev["env"]["RANK"] == "0"
    proc, _ = fake_slurm.run("eval.sbatch", "ckpt/student_hf", SLURM_NTASKS=1)
    assert proc.returncode == 2 and "TIDE_HELDOUT" in proc.stderr
    mcore = fake_slurm.root / "ckpt" / "student_mcore"
    mcore.mkdir(parents=True)
    (mcore / "tide_model.json").write_text("{}")
    proc, calls = fake_slurm.run("eval.sbatch", str(mcore), SLURM_NTASKS=1, SLURM_NTASKS_PER_NODE=1,
                                 TIDE_EVAL_TASKS="throughput")
    assert proc.returncode == 0, proc.stderr
    assert [c["argv"][:4] for c in calls if c["prog"] == "tide-eval"] == [
        ["--mcore-dir", str(mcore), "--tasks", "throughput"]]


def test_usr1_before_the_time_limit_checkpoints_and_requeues(fake_slurm, tmp_path):
    started = tmp_path / "srun_started"
    fake_slurm.log.write_text("")
    proc = subprocess.Popen(["bash", str(fake_slurm.root / "slurm" / "distill_pipeline_a.sbatch")],
                            cwd=fake_slurm.root, env=fake_slurm.env(FAKE_SRUN_HANG=started),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while not started.exists():
        assert time.time() < deadline and proc.poll() is None, "fake srun never started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@120 delivers to the batch shell
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    calls = fake_slurm.calls()
    assert [c["argv"] for c in calls if c["prog"] == "srun-signal"] == [["SIGUSR1"]]
    assert ["requeue", "4242"] in [c["argv"] for c in calls if c["prog"] == "scontrol"]
    assert "requeueing job 4242" in out


def test_launcher_overrides_name_real_trainer_config_fields(fake_slurm):
    """The keys the launchers override must exist in tide-train's config (skipped until it is merged)."""
    import dataclasses
    import importlib

    try:
        config = importlib.import_module("tide_megatron.config")
    except ImportError:
        pytest.skip("tide_megatron.config (the trainer's config) is not in this checkout yet")
    proc, calls = fake_slurm.run("distill_pipeline_a.sbatch", SLURM_NTASKS=1, SLURM_NTASKS_PER_NODE=1)
    assert proc.returncode == 0, proc.stderr
    (train,) = [c for c in calls if c["prog"] == "tide-train"]
    for override in train["argv"][2:]:
        node = config.TrainConfig
        for part in override.split("=", 1)[0].split("."):
            fields = {f.name: f for f in dataclasses.fields(node)}
            assert part in fields, f"{override}: {part!r} is not a field of {node.__name__}"
            node = fields[part].default_factory if fields[part].default_factory is not dataclasses.MISSING else None


# ------------------------------------------------------------------------------------------------------
# Global batch: nodes x GPUs per node / student TP x micro-batch x accumulation = the config's documented one
# ------------------------------------------------------------------------------------------------------

TRAINING_LAUNCHERS = {"distill_pipeline_a.sbatch": VARIANTS[:3], "distill_pipeline_b.sbatch": VARIANTS[3:],
                      "ablation.sbatch": VARIANTS}


def _directive(script, name):
    (value,) = [d.split("=", 1)[1] for d in _sbatch_directives(script) if d.startswith(f"--{name}=")]
    return int(value)


def _documented_global_batch(variant):
    import re

    text = (REPO / "examples" / f"{variant}.yaml").read_text()
    found = re.findall(r"^# Global batch: (\d+) sequences per optimizer step", text, re.M)
    assert len(found) == 1, f"examples/{variant}.yaml must document its global batch once ('# Global batch: N ...')"
    return int(found[0])


def _global_batch(variant, nodes, gpus_per_node):
    from tide_megatron.config import load_config, paths_unchecked

    with paths_unchecked():
        cfg = load_config(str(REPO / "examples" / f"{variant}.yaml"))
    data_parallel = nodes * gpus_per_node // cfg.student.tp
    return data_parallel * cfg.data.micro_batch_size * cfg.optim.grad_accum


def test_every_training_launcher_is_checked():
    trains = {s for s in SCRIPTS if "tide-train" in (SLURM_DIR / s).read_text() and s.endswith(".sbatch")}
    assert trains == set(TRAINING_LAUNCHERS)


@pytest.mark.parametrize("script", sorted(TRAINING_LAUNCHERS))
def test_launchers_run_the_documented_global_batch(script):
    nodes, gpus = _directive(script, "nodes"), _directive(script, "gpus-per-node")
    for variant in TRAINING_LAUNCHERS[script]:
        assert _global_batch(variant, nodes, gpus) == _documented_global_batch(variant), (script, variant)


def test_submit_ablation_node_counts_run_the_documented_global_batch(fake_slurm):
    proc, calls = fake_slurm.run("submit_ablation.sh")
    assert proc.returncode == 0, proc.stderr
    gpus = _directive("ablation.sbatch", "gpus-per-node")
    checked = []
    for call in (c for c in calls if c["prog"] == "sbatch"):
        (nodes,) = [int(a.split("=", 1)[1]) for a in call["argv"] if a.startswith("--nodes=")]
        for variant in call["env"]["TIDE_ABLATION_VARIANTS"].split():
            assert _global_batch(variant, nodes, gpus) == _documented_global_batch(variant), variant
            checked.append(variant)
    assert sorted(checked) == sorted(VARIANTS)
